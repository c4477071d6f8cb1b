"""Split a data set across clients: IID, sort-and-shard, and Dirichlet label skew.

A partition is a list of index arrays, one per client: disjoint, covering every example exactly
once, and identical for the same seed. `label_distribution` counts each client's labels and
`label_skew` summarises how far clients are from the global label mix.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from fedutils.core.checks import check_float, check_int, check_labels
from fedutils.core.data import check_partitions

# NumPy's own Dirichlet sampler is kept above this concentration (the course's splits stay the
# same); below it, NumPy 1.25's sampler can loop forever (from about 1e-8) without answering
# Ctrl-C, so the draw is made in log space instead.
_SMALL_ALPHA = 1e-3
# label_distribution's table is num_clients x num_classes counts; a label of 10**9 would ask
# for gigabytes, so the table is refused above this many cells (80 MB of int64).
MAX_TABLE_CELLS = 10**7
MAX_PLOT_CLASSES = 40
# iid_partition also takes a number of examples instead of labels; a mistyped count would
# allocate its permutation (8 bytes an example), so counts above this are refused.
MAX_EXAMPLES = 10**8


def iid_partition(labels: Union[Sequence[int], np.ndarray, int], num_clients: int,
                  seed: int = 0) -> list[np.ndarray]:
    """Shuffle the examples and deal them out in `num_clients` near-equal parts.

    `labels` may be the label array or just the number of examples.
    """
    n = _num_examples(labels)
    num_clients = _check_num_clients(num_clients, n)
    seed = check_int("seed", seed, minimum=0)
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def shard_partition(labels: Any, num_clients: int, shards_per_client: int = 2,
                    seed: int = 0) -> list[np.ndarray]:
    """McMahan et al. (2017)'s pathological non-IID split: sort the examples by label, cut them
    into `num_clients * shards_per_client` equal shards, and give each client that many shards
    at random, so with 2 shards most clients see only one or two classes."""
    y = check_labels("labels", labels)
    num_clients = _check_num_clients(num_clients, len(y))
    shards_per_client = check_int("shards_per_client", shards_per_client, minimum=1,
                                  maximum=len(y) // num_clients)
    seed = check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    # A random tie-break inside each class, then a stable sort by label.
    order = rng.permutation(len(y))
    order = order[np.argsort(y[order], kind="stable")]
    shards = np.array_split(order, num_clients * shards_per_client)
    shard_ids = rng.permutation(len(shards)).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[s] for s in ids])) for ids in shard_ids]


def dirichlet_partition(labels: Any, num_clients: int, alpha: float, seed: int = 0,
                        min_size: int = 1, max_tries: int = 1000) -> list[np.ndarray]:
    """Hsu et al. (2019)'s label skew: for each class, split its examples across clients in
    proportions drawn from Dirichlet(alpha, ..., alpha).

    Small alpha (0.1) gives each client a few dominant classes; large alpha (100) is close to
    IID; as alpha goes to 0 each class ends up on a single client. Draws are repeated (up to
    `max_tries`) until every client holds at least `min_size` examples, as common
    implementations do.
    """
    y = check_labels("labels", labels)
    num_clients = _check_num_clients(num_clients, len(y))
    alpha = check_float("alpha", alpha, low=0.0, low_inclusive=False)
    seed = check_int("seed", seed, minimum=0)
    min_size = check_int("min_size", min_size, minimum=1, maximum=len(y) // num_clients)
    max_tries = check_int("max_tries", max_tries, minimum=1, maximum=10_000)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label in classes:
            idx = rng.permutation(np.flatnonzero(y == label))
            proportions = _dirichlet(rng, alpha, num_clients)
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in result) >= min_size:
            return result
    raise ValueError(f"could not give each of {num_clients} clients at least {min_size} "
                     f"examples with alpha={alpha} in {max_tries} draws; use a larger alpha, "
                     "fewer clients or a smaller min_size")


def _dirichlet(rng: np.random.Generator, alpha: float, size: int) -> np.ndarray:
    """One draw from the symmetric Dirichlet(alpha, ..., alpha) on `size` clients.

    For tiny alpha it normalises Gamma(alpha) variables written as Gamma(alpha + 1) * U^(1/alpha)
    (Marsaglia & Tsang's boosting identity) in log space, which neither underflows nor loops."""
    if alpha >= _SMALL_ALPHA:
        return rng.dirichlet(np.full(size, alpha))
    log_uniform = np.log1p(-rng.random(size))  # log of U in (0, 1]
    log_gamma = np.log(rng.standard_gamma(alpha + 1.0, size)) + log_uniform / alpha
    weights = np.exp(log_gamma - log_gamma.max())
    return weights / weights.sum()


def label_distribution(labels: Any, partitions: Sequence[Sequence[int]],
                       num_classes: Optional[int] = None) -> np.ndarray:
    """Counts of each label on each client: an array of shape (num_clients, num_classes).

    Column c counts label c, so labels must be class indices 0..C-1: a table wider than
    `MAX_TABLE_CELLS` cells in all is refused rather than allocated."""
    y = check_labels("labels", labels)
    parts = check_partitions(partitions, len(y))
    if num_classes is None:
        num_classes = int(y.max()) + 1
        name = f"labels (largest {num_classes - 1})"
    else:
        name = "num_classes"
    num_classes = check_int("num_classes", num_classes, minimum=int(y.max()) + 1)
    if num_classes * len(parts) > MAX_TABLE_CELLS:
        raise ValueError(f"{name} would make a table of {len(parts)} clients x {num_classes} "
                         f"classes, more than {MAX_TABLE_CELLS:,} counts: labels must be class "
                         "indices 0..C-1 (np.unique(labels, return_inverse=True)[1] maps any "
                         "labels to them)")
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])


def label_skew(labels: Any, partitions: Sequence[Sequence[int]]) -> float:
    """Mean total-variation distance between each client's label mix and the global one:
    0 when every client looks like the whole data set, close to 1 when each holds one class."""
    counts = label_distribution(labels, partitions)
    local = counts / counts.sum(axis=1, keepdims=True)
    overall = counts.sum(axis=0) / counts.sum()
    return float(np.mean(0.5 * np.abs(local - overall).sum(axis=1)))


def plot_label_distribution(labels: Any, partitions: Sequence[Sequence[int]], ax=None,
                            title: Optional[str] = None,
                            class_names: Optional[Sequence[str]] = None):
    """Stacked bar chart: one bar per client, coloured by label (at most `MAX_PLOT_CLASSES`
    classes: more colours cannot be told apart). Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    counts = label_distribution(labels, partitions)
    if counts.shape[1] > MAX_PLOT_CLASSES:
        raise ValueError(f"labels go up to {counts.shape[1] - 1}: a stacked bar chart shows at "
                         f"most {MAX_PLOT_CLASSES} classes; use label_distribution for the counts")
    if class_names is not None and len(class_names) < counts.shape[1]:
        raise ValueError(f"class_names must name all {counts.shape[1]} classes (labels 0.."
                         f"{counts.shape[1] - 1}), got {len(class_names)} names")
    if ax is None:
        _, ax = plt.subplots(figsize=(min(12, 2 + 0.35 * len(counts)), 3.2))
    cmap = plt.get_cmap("tab10" if counts.shape[1] <= 10 else "tab20")
    bottom = np.zeros(len(counts))
    clients = np.arange(len(counts))
    names = class_names or [str(c) for c in range(counts.shape[1])]
    for c in range(counts.shape[1]):
        ax.bar(clients, counts[:, c], bottom=bottom, color=cmap(c % cmap.N), label=names[c],
               width=0.85)
        bottom += counts[:, c]
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_title(title or f"Labels per client (skew {label_skew(labels, partitions):.2f})")
    ax.legend(title="label", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    ax.set_xlim(-0.6, len(counts) - 0.4)
    return ax


def _num_examples(labels: Any) -> int:
    if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):
        return check_int("labels (a number of examples)", labels, minimum=1,
                         maximum=MAX_EXAMPLES)
    return len(check_labels("labels", labels))


def _check_num_clients(num_clients: Any, n: int) -> int:
    return check_int("num_clients", num_clients, minimum=1, maximum=n)
