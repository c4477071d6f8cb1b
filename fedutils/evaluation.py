"""Federated evaluation with per-client and aggregate metrics.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.loop.evaluation import (FederatedEvaluation, evaluate_weights,  # noqa: F401
                                      federated_evaluate, predict)
