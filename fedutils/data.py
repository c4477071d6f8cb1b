"""The course's data sets (all offline) and per-client data.

A facade: the public names of the course's API, re-exported from fedutils' layers
(docs/architecture.md)."""
from fedutils.core.clientdata import (ClientData, FederatedDigits, as_client_data,  # noqa: F401
                                      federated_digits, make_client_data, make_client_datasets)
from fedutils.core.data import (SHAKESPEARE_VERSION, cache_dir, check_partitions, load, load_breast_cancer,  # noqa: F401
                                load_digits, load_iris_binary, load_shakespeare, train_test_split)
