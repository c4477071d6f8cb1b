"""The same model and data run through TensorFlow Federated, when it is installed.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.bridges.tff import (TFF_MISSING_NOTE, TFFUnavailableError,  # noqa: F401
                                  build_fed_eval, build_fedavg, build_fedprox, get_weights,
                                  import_tff, run_tff_fedavg, set_weights, tff_available,
                                  tff_federated_evaluate, tff_model_fn)
