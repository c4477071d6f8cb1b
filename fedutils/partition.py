"""IID, shard and Dirichlet splits of a data set across clients.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.core.partition import (dirichlet_partition, iid_partition,  # noqa: F401
                                     label_distribution, label_skew, plot_label_distribution,
                                     shard_partition)
