"""A client's data as an explicit type, and the course's standard federated digits setting.

`ClientData` holds one client's examples in the order they are batched, and its batch size. Its
`dataset()` is the `tf.data` pipeline of `{"x", "y"}` batches that lessons iterate and TFF
trains on; fedutils' compiled training reads the arrays directly, which is why the type exists
(iterating a tf.data dataset from Python costs milliseconds per client).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from fedutils.core.checks import check_float, check_int, check_labels
from fedutils.core.data import check_partitions, check_xy, load_digits, train_test_split
from fedutils.core.partition import dirichlet_partition, iid_partition, shard_partition

# A tf.data dataset of unknown length is read batch by batch; past this many bytes in all it is
# refused, as it may be an endless one (`.repeat().filter(...)`, a generator that never stops).
MAX_UNKNOWN_BYTES = 2**26  # 64 MB: the course's largest data set is a few MB


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's examples (`x`, integer labels `y`), batched `batch_size` at a time."""
    x: np.ndarray
    y: np.ndarray
    batch_size: int

    def __post_init__(self):
        """Refuse what no client can train on (make_client_data checks the values too)."""
        check_int("batch_size", self.batch_size, minimum=1)
        if not (isinstance(self.x, np.ndarray) and isinstance(self.y, np.ndarray)):
            raise TypeError("ClientData's x and y must be NumPy arrays, got "
                            f"{type(self.x).__name__} and {type(self.y).__name__}")
        if self.y.ndim != 1 or self.x.ndim < 1 or len(self.x) != len(self.y) or not len(self.y):
            raise ValueError("ClientData needs x of shape (n, features...) and y of shape (n,) "
                             f"with n >= 1, got {self.x.shape} and {self.y.shape}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def batch_sizes(self) -> list[int]:
        """Size of each batch, in order: full batches, then what is left."""
        n, b = len(self.y), self.batch_size
        return [min(b, n - i) for i in range(0, n, b)]

    def batches(self):
        """The (x, y) NumPy batches in order, as `dataset()` yields them."""
        for i in range(0, len(self.y), self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]

    def dataset(self):
        """This client's data as a `tf.data.Dataset` of {"x", "y"} batches (for TFF, Keras)."""
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices({"x": self.x, "y": self.y}).batch(
            self.batch_size)


def make_client_data(x: np.ndarray, y: np.ndarray, partitions: Sequence[Sequence[int]],
                     batch_size: int = 20, seed: int = 0, shuffle: bool = True
                     ) -> list[ClientData]:
    """One `ClientData` per client from a partition (a list of index arrays).

    With `shuffle`, each client's examples are put in a random order once, fixed by `seed`, so
    every epoch and every run sees the same batches in the same order: fedutils and TFF can then
    be compared batch for batch. Partitions must not share an example (a client's data is its
    own); they need not cover every example.
    """
    y = check_labels("y", y)
    check_xy(x, y)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    parts = check_partitions(partitions, len(y))
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ValueError("x contains NaN or infinite features; clean or impute them first")
    y = _int32_labels(y, "y")
    rng = np.random.default_rng(seed)
    clients = []
    for idx in parts:
        order = rng.permutation(idx) if shuffle else idx
        features = x[order].astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x[order]
        clients.append(ClientData(features, y[order], batch_size))
    return clients


def _int32_labels(y: np.ndarray, name: str) -> np.ndarray:
    """Labels as int32 (what TensorFlow's losses take), refusing values int32 would wrap."""
    if y.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{name} holds label {y.max()}, beyond what int32 holds; labels must be "
                         "class indices 0..C-1")
    return y.astype(np.int32)


def make_client_datasets(x: np.ndarray, y: np.ndarray, partitions: Sequence[Sequence[int]],
                         batch_size: int = 20, seed: int = 0, shuffle: bool = True) -> list:
    """One `tf.data.Dataset` per client, yielding `{"x": features, "y": labels}` batches: the
    structure TFF's `input_spec` expects. The same batches as `make_client_data`, whose
    `ClientData` objects `run_fedavg` reads faster."""
    return [c.dataset() for c in make_client_data(x, y, partitions, batch_size, seed, shuffle)]


def as_client_data(clients: Any, name: str = "client_datasets") -> list[ClientData]:
    """A list of `ClientData` from a list of ClientData or of tf.data datasets of {"x", "y"}
    batches (read once, all clients in one pipeline). Infinite datasets are refused."""
    if not isinstance(clients, (list, tuple)):
        raise TypeError(f"{name} must be a list with one dataset per client (fedutils."
                        f"data.make_client_data), got {type(clients).__name__}")
    if not clients:
        raise ValueError(f"{name} is empty: at least one client is needed")
    if all(isinstance(c, ClientData) for c in clients):
        return list(clients)
    for i, c in enumerate(clients):
        if not isinstance(c, ClientData):
            _check_dataset(c, f"{name}[{i}]")
    datasets = [c for c in clients if not isinstance(c, ClientData)]
    read = iter(_read_datasets(datasets, name))
    return [c if isinstance(c, ClientData) else next(read) for c in clients]


def as_datasets(clients: Any, name: str = "client_datasets") -> list:
    """A list of tf.data datasets (for TFF) from a list of ClientData or of datasets."""
    if not isinstance(clients, (list, tuple)) or not clients:
        raise TypeError(f"{name} must be a non-empty list with one dataset per client, got "
                        f"{clients!r:.80}")
    for i, c in enumerate(clients):
        if not isinstance(c, ClientData):
            _check_dataset(c, f"{name}[{i}]")
    return [c.dataset() if isinstance(c, ClientData) else c for c in clients]


def _check_dataset(dataset: Any, name: str) -> None:
    spec = getattr(dataset, "element_spec", None)
    if not isinstance(spec, dict) or "x" not in spec or "y" not in spec:
        raise TypeError(f"{name} must be a fedutils ClientData or a tf.data.Dataset of "
                        "{'x': features, 'y': labels} batches, as fedutils.data."
                        f"make_client_data makes; got {type(dataset).__name__} with "
                        f"element_spec {spec!r}")
    if len(spec["x"].shape) < 2:
        raise ValueError(f"{name} must yield batches (x of shape (batch, features...)), got "
                         f"x of shape {spec['x'].shape}: call .batch(n) on it")


def _read_datasets(datasets: list, name: str) -> list[ClientData]:
    """Every dataset's batches, read by one tf.data pipeline (one iterator per client is many
    times slower), as ClientData."""
    import tensorflow as tf

    sizes = [int(ds.cardinality()) for ds in datasets]
    if tf.data.INFINITE_CARDINALITY in sizes:
        raise ValueError(f"{name} holds a dataset that repeats forever; pass finite datasets "
                         "(drop .repeat(): run_fedavg's local_epochs repeats the data)")
    if min(sizes) < 0:  # a length tf.data cannot tell in advance: read client by client
        per_client = _read_bounded(datasets, name)
    else:
        choice = tf.data.Dataset.from_tensor_slices(
            np.repeat(np.arange(len(datasets), dtype=np.int64), sizes))
        batches = list(tf.data.Dataset.choose_from_datasets(datasets, choice)
                       .as_numpy_iterator())
        ends = np.cumsum(sizes)
        per_client = [batches[end - size:end] for end, size in zip(ends, sizes)]
    return [_from_batches(b, f"{name}[{i}]") for i, b in enumerate(per_client)]


def _read_bounded(datasets: list, name: str) -> list[list]:
    """Read datasets whose length tf.data cannot tell (filter, from_generator) batch by batch,
    refusing them once they pass `MAX_UNKNOWN_BYTES` in all: such a dataset may never end."""
    per_client, total = [], 0
    for i, ds in enumerate(datasets):
        batches = []
        for batch in ds.as_numpy_iterator():
            total += sum(np.asarray(v).nbytes for v in batch.values())
            if total > MAX_UNKNOWN_BYTES:
                raise ValueError(f"{name}[{i}] has no known length and has yielded more than "
                                 f"{MAX_UNKNOWN_BYTES / 2**20:.0f} MB: it may repeat forever; "
                                 "pass finite datasets (drop .repeat(), or .take(n) batches)")
            batches.append(batch)
        per_client.append(batches)
    return per_client


def _from_batches(batches: list, name: str) -> ClientData:
    if not batches:
        raise ValueError(f"{name} is empty: every client needs at least one example")
    sizes = [len(b["y"]) for b in batches]
    if any(s != sizes[0] for s in sizes[:-1]) or sizes[-1] > sizes[0]:
        raise ValueError(f"{name} must have batches of one size (the last may be smaller), "
                         f"got sizes {sizes}")
    if any(np.ndim(b["y"]) > 2 or (np.ndim(b["y"]) == 2 and np.shape(b["y"])[1] != 1)
           for b in batches):
        raise ValueError(f"{name} must have one integer label per example (y of shape (batch,) "
                         f"or (batch, 1)), got y of shape {np.shape(batches[0]['y'])}")
    y = np.concatenate([np.reshape(b["y"], -1) for b in batches])
    try:
        y = check_labels(f"{name}'s labels", y)
    except ValueError as exc:
        raise ValueError(f"{exc}; labels must be integers 0..C-1") from None
    try:
        x = np.concatenate([b["x"] for b in batches])
    except ValueError:
        raise ValueError(f"{name} must have features of one shape per example, got batches of "
                         f"shapes {sorted({np.shape(b['x'])[1:] for b in batches})}") from None
    return ClientData(x, _int32_labels(y, f"{name}'s labels"), sizes[0])


def check_against_model(clients: Sequence[ClientData], model: Any, name: str) -> None:
    """Refuse data the model cannot train on, before any compiled code runs: the feature shape
    must match `model.input_shape`, features must be finite, labels must be integers the model's
    output can take (0/1 for one sigmoid unit, 0..C-1 for a softmax over C classes)."""
    from fedutils.core.losses import num_classes

    expected = tuple(model.input_shape[1:])
    classes = num_classes(model)
    vocabulary = _embedding_size(model)
    for i, c in enumerate(clients):
        where = f"{name}[{i}]" if len(clients) > 1 or name.endswith("s") else name
        if tuple(c.x.shape[1:]) != expected:
            raise ValueError(f"{where} has features of shape {tuple(c.x.shape[1:])} per example "
                             f"but the model takes {expected}")
        if not (np.issubdtype(c.x.dtype, np.floating) or np.issubdtype(c.x.dtype, np.integer)
                or c.x.dtype == np.bool_):
            raise TypeError(f"{where} must have numeric features, got dtype {c.x.dtype}")
        if np.issubdtype(c.x.dtype, np.floating) and not np.all(np.isfinite(c.x)):
            raise ValueError(f"{where} contains NaN or infinite features")
        if vocabulary is not None:
            _check_token_ids(c.x, vocabulary, where)
        low, high = int(c.y.min()), int(c.y.max())
        if low < 0 or high >= classes:
            kind = "0 or 1 (one sigmoid output)" if classes == 2 and model.output_shape[-1] == 1 \
                else f"0..{classes - 1} (a softmax over {classes} classes)"
            raise ValueError(f"{where} has labels from {low} to {high}, but the model's output "
                             f"accepts {kind}")


def _embedding_size(model: Any) -> Optional[int]:
    """The vocabulary size when the model's first layer is an Embedding (inputs are token ids)."""
    import tensorflow as tf

    first = model.layers[0] if model.layers else None
    return int(first.input_dim) if isinstance(first, tf.keras.layers.Embedding) else None


def _check_token_ids(x: np.ndarray, vocabulary: int, where: str) -> None:
    if not np.issubdtype(x.dtype, np.integer):
        if not np.all(np.mod(x, 1) == 0):
            raise ValueError(f"{where} must hold integer token ids for the model's Embedding, "
                             f"got dtype {x.dtype}")
    if x.size and (x.min() < 0 or x.max() >= vocabulary):
        raise ValueError(f"{where} has token ids from {x.min():g} to {x.max():g}, but the model's "
                         f"Embedding takes ids 0..{vocabulary - 1}")


@dataclass
class FederatedDigits:
    """The course's standard federated setting: digits split into train and test, the
    training examples spread over clients."""
    clients: list           # ClientData, one per client
    partitions: list        # index arrays into x_train
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def federated_digits(num_clients: int = 10, partition: str = "iid",
                     alpha: Optional[float] = None, shards_per_client: int = 2,
                     batch_size: int = 20, seed: int = 0, test_fraction: float = 0.25
                     ) -> FederatedDigits:
    """The digits, split once (stratified, seed 0: the same test set everywhere in the course),
    with the training examples spread over `num_clients` clients by `partition`: "iid",
    "dirichlet" (label skew of concentration `alpha`) or "shards" (McMahan et al.'s
    `shards_per_client` label shards). `seed` fixes the split across clients and the batches."""
    partitions = {"iid": lambda y: iid_partition(y, num_clients, seed=seed),
                  "dirichlet": lambda y: dirichlet_partition(y, num_clients, alpha, seed=seed),
                  "shards": lambda y: shard_partition(y, num_clients, shards_per_client,
                                                      seed=seed)}
    if partition not in partitions:
        raise ValueError(f"partition must be one of {sorted(partitions)}, got {partition!r}")
    if partition == "dirichlet" and alpha is None:
        raise ValueError("alpha is required for partition 'dirichlet': the concentration, "
                         "e.g. 0.5 (skewed) or 100 (close to IID)")
    test_fraction = check_float("test_fraction", test_fraction, 0.0, 1.0, low_inclusive=False,
                                high_inclusive=False)
    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_fraction, seed=0)
    parts = partitions[partition](y_train)
    clients = make_client_data(x_train, y_train, parts, batch_size, seed=seed)
    return FederatedDigits(clients, parts, x_train, y_train, x_test, y_test)
