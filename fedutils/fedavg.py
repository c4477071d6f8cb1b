"""Federated Averaging: client update, server aggregation, the round loop.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.core.losses import per_example_loss  # noqa: F401
from fedutils.loop.aggregators import (Aggregate, Aggregator, WeightedMean,  # noqa: F401
                                       server_aggregate)
from fedutils.loop.client import (ClientResult, client_update,  # noqa: F401
                                  scaffold_control_update, sgd_step)
from fedutils.loop.evaluation import evaluate_weights, predict  # noqa: F401
from fedutils.loop.fedavg import run_fedavg, sample_clients  # noqa: F401
from fedutils.loop.history import History  # noqa: F401
from fedutils.loop.seeds import Spread, over_seeds  # noqa: F401
