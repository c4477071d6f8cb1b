"""Differential privacy, its accounting, and secure aggregation.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.techniques.accounting import compute_epsilon, dp_sgd_epsilon  # noqa: F401
from fedutils.techniques.privacy import (DPFedAvgAggregator, add_gaussian_noise,  # noqa: F401
                                         clip_update, keras_version, make_dp_optimizer,
                                         update_norm)
from fedutils.techniques.secure_aggregation import mask_updates, secure_sum  # noqa: F401
