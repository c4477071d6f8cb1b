"""The course's model and client training as a real Flower federation (lesson 15).

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md); `device_train` and `device_evaluate` are what the app's ClientApp runs
on each node (NumPy only). Current-TensorFlow environment only (Flower needs protobuf >= 5)."""
from fedutils.bridges.flower.launcher import (APP_DIR, FLOWER_VERSION,  # noqa: F401
                                              FederationResult, require_flower,
                                              run_federation)
from fedutils.bridges.flower.app.digits_app.task import (  # noqa: F401
    evaluate as device_evaluate, train as device_train)
from fedutils.bridges.flower.task import (digits_model, federation_data,  # noqa: F401
                                          held_out_split, node_data, simulate)
