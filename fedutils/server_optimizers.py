"""Server optimizers for FedOpt: SGD with momentum (FedAvgM), Adam, Yogi and Adagrad on the
server, with TFF's formulas and explicit state.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.loop.server_optimizers import (SGD, Adagrad, Adam, ServerOptimizer,
                                             ServerOptimizerState, Yogi, adagrad, adam, sgd,
                                             yogi)

__all__ = ["sgd", "adam", "yogi", "adagrad", "ServerOptimizer", "ServerOptimizerState", "SGD",
           "Adam", "Yogi", "Adagrad"]
