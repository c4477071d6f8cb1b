"""Robust aggregation: combine client updates so that a few bad clients cannot steer the model.

The mean lets one client move the model anywhere. The rules here bound that influence:

- `median` and `trimmed_mean` work coordinate by coordinate (Yin et al. 2018);
- `krum` keeps the update(s) closest to their neighbours (Blanchard et al. 2017; Multi-Krum);
- `norm_bounded_mean` clips every update's L2 norm before averaging (Sun et al. 2019).

They agree with Flower 1.39's `aggregate_median`, `aggregate_trimmed_avg` and `aggregate_krum`
except where a docstring says otherwise. Flower aggregates weights and fedutils updates (new minus
global weights); every rule here commutes with subtracting the global weights, so the two agree.
The classes (`Median`, `TrimmedMean`, `Krum`, `NormBounded`) are `run_fedavg` aggregators.
Every rule except the norm-bounded mean ignores example counts: a client could lie about its
count and gain weight that way.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from fedutils.core.checks import check_float, check_int, check_weight_list, float_dtype
from fedutils.loop.aggregators import (Aggregate, Aggregator, WeightedMean, server_aggregate,
                                       upload_bytes)
from fedutils.techniques.privacy import clip_update, update_norm

Weights = list  # a list of NumPy arrays, as model.get_weights() returns


# --- the rules as functions -----------------------------------------------------------------

def median(updates: Sequence[Weights]) -> Weights:
    """The coordinate-wise median of the clients' updates.

    With an even number of clients it is the mean of the two middle values (`np.median`, as in
    Flower), so it need not be any client's value. Example counts are ignored.
    """
    arrays = check_weight_list("updates", updates)
    return [np.median(_stack(layer), axis=0).astype(float_dtype(layer[0]))
            for layer in zip(*arrays)]


def num_trimmed(num_clients: int, beta: float) -> int:
    """How many values `trimmed_mean` removes at each end: floor(beta·n), at most (n-1)//2.

    beta·n is rounded to 9 decimals first, so that beta = 1/49 with 49 clients trims 1. Flower
    (like scipy's trim_mean) uses int(beta·n) = int(0.99999...) = 0 there and trims nothing.
    """
    return min(math.floor(round(beta * num_clients, 9)), (num_clients - 1) // 2)


def trimmed_mean(updates: Sequence[Weights], beta: float) -> Weights:
    """The coordinate-wise trimmed mean: in every coordinate, drop the `num_trimmed(n, beta)`
    largest and as many smallest values, and average the rest. beta in [0, 0.5); beta = 0 is
    the plain (unweighted) mean. Example counts are ignored.

    Differs from Flower's `aggregate_trimmed_avg` only where beta·n falls just below an
    integer through float rounding (see `num_trimmed`).
    """
    arrays = check_weight_list("updates", updates)
    beta = check_float("beta", beta, low=0.0, high=0.5, high_inclusive=False)
    k = num_trimmed(len(arrays), beta)
    return [np.sort(_stack(layer), axis=0)[k:len(arrays) - k].mean(axis=0)
            .astype(float_dtype(layer[0])) for layer in zip(*arrays)]


def krum_scores(updates: Sequence[Weights], num_malicious: int) -> np.ndarray:
    """Krum's score of every client: the sum of squared L2 distances (over all tensors) from
    its update to its n - f - 2 nearest other updates, f = `num_malicious`. Lower is better."""
    arrays = check_weight_list("updates", updates)
    return _scores(_flatten(arrays), _check_malicious(num_malicious, len(arrays)))


def krum(updates: Sequence[Weights], num_malicious: int, num_selected: int = 1) -> Weights:
    """Krum (Blanchard et al. 2017): the update with the lowest `krum_scores`; with
    `num_selected` = m > 1, Multi-Krum: the plain mean of the m lowest-scored updates.

    Needs n > 2f + 2 clients for f = `num_malicious` (Flower does not check and uses
    max(1, n - f - 2) neighbours). Ties go to the lower client index. Example counts are
    ignored; Flower's Multi-Krum (`to_keep` = m > 0) weights the selected updates by their
    example counts, so the two agree only when the selected clients' counts are equal.
    """
    arrays = check_weight_list("updates", updates)
    f = _check_malicious(num_malicious, len(arrays))
    m = check_int("num_selected", num_selected, minimum=1, maximum=len(arrays))
    return _krum(arrays, f, m)[0]


def norm_bounded_mean(updates: Sequence[Weights], max_norm: float,
                      num_examples: Optional[Sequence[float]] = None) -> Weights:
    """Norm bounding (Sun et al. 2019, "Can you really backdoor federated learning?"): scale
    each update by min(1, max_norm / ||update||), its global L2 norm, then take the mean,
    example-weighted when `num_examples` is given (FedAvg's mean), plain otherwise.

    A boosted (scaled-up) malicious update is cut back to the size of an honest one. Counts are
    trusted: a client that reports more examples than it has still gains weight.
    """
    arrays = check_weight_list("updates", updates)
    max_norm = check_float("max_norm", max_norm, low=0.0, low_inclusive=False)
    return server_aggregate(_clip_all(arrays, max_norm)[0], num_examples)


# --- the rules as run_fedavg aggregators ----------------------------------------------------

class Median(Aggregator):
    """`median` as a `run_fedavg` aggregator (ignores example counts; like Flower's FedMedian).
    Measures `upload_bytes`."""

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        return Aggregate(median(updates), {"upload_bytes": upload_bytes(updates)})

    def __repr__(self) -> str:
        return "Median()"


class TrimmedMean(Aggregator):
    """`trimmed_mean(updates, beta)` as a `run_fedavg` aggregator (ignores example counts;
    like Flower's FedTrimmedAvg). Measures `upload_bytes` and `num_trimmed` (per end)."""

    def __init__(self, beta: float):
        self.beta = check_float("beta", beta, low=0.0, high=0.5, high_inclusive=False)

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        return Aggregate(trimmed_mean(updates, self.beta),
                         {"upload_bytes": upload_bytes(updates),
                          "num_trimmed": num_trimmed(len(updates), self.beta)})

    def __repr__(self) -> str:
        return f"TrimmedMean(beta={self.beta:g})"


class Krum(Aggregator):
    """`krum(updates, num_malicious, num_selected)` as a `run_fedavg` aggregator (ignores
    example counts). Measures `upload_bytes` and `krum_selected`, the chosen clients' ids,
    best first. A round with n <= 2·num_malicious + 2 clients raises ValueError."""

    def __init__(self, num_malicious: int, num_selected: int = 1):
        self.num_malicious = check_int("num_malicious", num_malicious, minimum=0)
        self.num_selected = check_int("num_selected", num_selected, minimum=1)

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        arrays = check_weight_list("updates", updates)
        f = _check_malicious(self.num_malicious, len(arrays))
        m = check_int("num_selected", self.num_selected, minimum=1, maximum=len(arrays))
        delta, chosen = _krum(arrays, f, m)
        return Aggregate(delta, {"upload_bytes": upload_bytes(updates),
                                 "krum_selected": [client_ids[i] for i in chosen]})

    def __repr__(self) -> str:
        return f"Krum(num_malicious={self.num_malicious}, num_selected={self.num_selected})"


class NormBounded(Aggregator):
    """Clip every update to global L2 norm `max_norm`, then hand the clipped updates to `inner`
    (default: the example-weighted mean, i.e. `norm_bounded_mean`; e.g. `Median()` to clip
    then take the median). Measures `clipped_fraction` (share of clients whose update was
    longer than `max_norm`) and whatever `inner` measures, `upload_bytes` included."""

    def __init__(self, max_norm: float, inner: Optional[Aggregator] = None):
        self.max_norm = check_float("max_norm", max_norm, low=0.0, low_inclusive=False)
        if inner is not None and not isinstance(inner, Aggregator):
            raise TypeError("inner must be None (the weighted mean) or a fedutils Aggregator, "
                            f"got {type(inner).__name__}")
        self.inner = WeightedMean() if inner is None else inner

    def initialize(self) -> Any:
        return self.inner.initialize()

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        clipped, norms = _clip_all(check_weight_list("updates", updates), self.max_norm)
        out = self.inner.aggregate(clipped, num_examples, client_ids, rng, state)
        measurements = {**out.measurements, "upload_bytes": upload_bytes(updates),
                        "clipped_fraction": float(np.mean(norms > self.max_norm))}
        return Aggregate(out.delta, measurements, out.state)

    def __repr__(self) -> str:
        return f"NormBounded(max_norm={self.max_norm:g}, inner={self.inner!r})"


# --- helpers --------------------------------------------------------------------------------

def _stack(layer: Sequence[np.ndarray]) -> np.ndarray:
    """One tensor of every client, stacked along a new first axis, in float64."""
    return np.stack([np.asarray(t, dtype=np.float64) for t in layer])


def _flatten(arrays: list[Weights]) -> np.ndarray:
    """Each client's update as one float64 row vector (all tensors concatenated)."""
    return np.stack([np.concatenate([np.ravel(t) for t in u]).astype(np.float64)
                     for u in arrays])


def _check_malicious(num_malicious: Any, n: int) -> int:
    """num_malicious f must satisfy Krum's requirement n > 2f + 2, i.e. f <= (n - 3) // 2."""
    f = check_int("num_malicious", num_malicious, minimum=0)
    if n <= 2 * f + 2:
        raise ValueError(f"num_malicious must satisfy n > 2·num_malicious + 2 (Krum's "
                         f"requirement); with n = {n} clients that is num_malicious <= "
                         f"{(n - 3) // 2} (at least 3 clients), got {f}")
    return f


def _scores(flat: np.ndarray, f: int) -> np.ndarray:
    """Krum scores from the flattened updates (one row per client)."""
    n = len(flat)
    dist = np.stack([np.sum((flat - row) ** 2, axis=1) for row in flat])
    # Each sorted row starts with the client's distance to itself (0): skip it, sum the next.
    return np.sort(dist, axis=1)[:, 1:n - f - 1].sum(axis=1)


def _krum(arrays: list[Weights], f: int, m: int) -> tuple[Weights, list[int]]:
    """Multi-Krum's mean of the m best-scored updates, and their indices (best first)."""
    chosen = np.argsort(_scores(_flatten(arrays), f), kind="stable")[:m].tolist()
    delta = [np.mean(_stack([arrays[i][j] for i in chosen]), axis=0)
             .astype(float_dtype(arrays[0][j])) for j in range(len(arrays[0]))]
    return delta, chosen


def _clip_all(arrays: list[Weights], max_norm: float) -> tuple[list[Weights], np.ndarray]:
    """Every update scaled to global L2 norm at most max_norm, and the norms before clipping."""
    norms = np.array([update_norm(u) for u in arrays])
    return [clip_update(u, max_norm) for u in arrays], norms
