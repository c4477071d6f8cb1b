"""How a round's client updates become one server update: the aggregator step of a round.

An aggregator receives the surviving clients' updates (new minus global weights), their example
counts, their ids and the round's random generator, and returns an `Aggregate`: the combined
update and a dict of measurements (bytes uploaded, share clipped, ...) that `run_fedavg` records
in its `History`. Aggregators with memory across rounds (error feedback) keep it in an explicit
state: `initialize()` makes a fresh one at the start of every run, `aggregate(...)` returns the
next one. This is TFF's aggregation-factory contract in miniature.

A plain function `f(updates, num_examples, client_ids, rng) -> weights` (or `-> Aggregate`) is an
aggregator too: `as_aggregator` wraps it, so a lesson can write one in three lines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fedutils.core.checks import check_rng, check_weight_list, float_dtype

Weights = list  # a model's weights: list of NumPy arrays, as model.get_weights() returns


@dataclass
class Aggregate:
    """What an aggregator returns: the combined update, what it measured, its next state."""
    delta: Weights
    measurements: dict = field(default_factory=dict)
    state: Any = None


class Aggregator:
    """Base class of the course's aggregators. Subclasses implement `aggregate`; stateful ones
    also `initialize`. Calling an aggregator directly aggregates once from a fresh state and
    returns only the combined update, which is what a lesson wants to look at."""

    def initialize(self) -> Any:
        """The state at the start of a run (None: this aggregator has no memory)."""
        return None

    def aggregate(self, updates: list[Weights], num_examples: np.ndarray, client_ids: list,
                  rng: np.random.Generator, state: Any = None) -> Aggregate:
        raise NotImplementedError

    def aggregate_stacked(self, updates: list[np.ndarray], num_examples: np.ndarray,
                          client_ids: list, rng: np.random.Generator,
                          state: Any = None) -> Aggregate:
        """`aggregate` for updates stacked per weight tensor, client axis first, as the
        compiled round of `run_fedavg` produces them. This default hands `aggregate` one list
        per client; aggregators that are plain array arithmetic override it."""
        per_client = [[u[i] for u in updates] for i in range(len(client_ids))]
        return self.aggregate(per_client, num_examples, client_ids, rng, state)

    def __call__(self, updates: list[Weights], num_examples: Any = None, client_ids: Any = None,
                 rng: Any = None) -> Weights:
        updates = check_weight_list("updates", updates)
        ids = list(range(len(updates))) if client_ids is None else list(client_ids)
        return check_output(self.aggregate(updates, num_examples, ids, check_rng(rng),
                                           self.initialize()), self).delta


class FunctionAggregator(Aggregator):
    """A plain function used as an aggregator; it may return weights or an `Aggregate`."""

    def __init__(self, function: Callable[..., Any]):
        self.function = function

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        out = self.function(updates, num_examples, client_ids, rng)
        return check_output(out if isinstance(out, Aggregate) else Aggregate(out), self)

    def __repr__(self) -> str:
        return f"FunctionAggregator({getattr(self.function, '__name__', self.function)!r})"


def as_aggregator(aggregator: Any) -> Aggregator:
    """An `Aggregator` from None (the weighted mean), an Aggregator, or a plain function."""
    if aggregator is None:
        return WeightedMean()
    if isinstance(aggregator, Aggregator):
        return aggregator
    if isinstance(aggregator, type):
        raise TypeError(f"aggregator must be an instance, such as {aggregator.__name__}(...), "
                        f"not the class {aggregator.__name__} itself")
    if callable(aggregator):
        return FunctionAggregator(aggregator)
    raise TypeError("aggregator must be None (the weighted mean), a fedutils Aggregator or a "
                    "function f(updates, num_examples, client_ids, rng) returning the combined "
                    f"update, got {type(aggregator).__name__}")


def check_output(out: Any, aggregator: Any) -> Aggregate:
    """What `aggregator.aggregate` returned must be an `Aggregate` whose measurements are a dict
    (its delta is checked against the model by `run_fedavg`)."""
    if not isinstance(out, Aggregate):
        raise TypeError(f"{aggregator!r}.aggregate must return an Aggregate(delta, measurements, "
                        f"state), got {type(out).__name__}")
    if not isinstance(out.measurements, dict):
        raise TypeError(f"{aggregator!r} returned measurements of type "
                        f"{type(out.measurements).__name__}; they must be a dict such as "
                        "{'upload_bytes': 1234}")
    return out


def server_aggregate(client_weights: Sequence[Weights],
                     num_examples: Optional[Sequence[Real]] = None) -> Weights:
    """Average the clients' weights (or updates), tensor by tensor.

    With `num_examples`, each client counts in proportion to its examples: FedAvg's weighted
    mean, sum_k n_k w_k / sum_k n_k. Without it, the plain mean of slide 5, in which a client with
    3 examples counts as much as one with 3,000. Integer inputs give a float mean.
    """
    weights = check_weight_list("client_weights", client_weights)
    return _stacked_mean([np.stack(layer) for layer in zip(*weights)], num_examples)


def _stacked_mean(stacked: list[np.ndarray], num_examples: Optional[Sequence[Real]]) -> Weights:
    """The (weighted) mean over the client axis of updates stacked per tensor."""
    coeffs = _mean_coefficients(num_examples, len(stacked[0]))
    return [np.tensordot(coeffs, s, axes=1).astype(float_dtype(s[0])) for s in stacked]


def _mean_coefficients(num_examples: Optional[Sequence[Real]], num_clients: int) -> np.ndarray:
    """Each client's share of the mean: n_k / sum n, or 1/K without counts."""
    if num_examples is None:
        return np.full(num_clients, 1.0 / num_clients)
    counts = np.asarray(num_examples, dtype=np.float64)
    if counts.shape != (num_clients,):
        raise ValueError(f"num_examples must hold one count per client ({num_clients}), "
                         f"got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or counts.min() < 0 or counts.sum() <= 0:
        raise ValueError("num_examples must be non-negative counts with a positive total, "
                         f"got {counts.tolist()}")
    return counts / counts.sum()


def upload_bytes(updates: list[Weights]) -> int:
    """Bytes the clients sent as dense arrays: what FedAvg uploads without compression."""
    return int(sum(np.asarray(a).nbytes for u in updates for a in u))


class WeightedMean(Aggregator):
    """The FedAvg default: the example-weighted mean of the updates."""

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        return Aggregate(server_aggregate(updates, num_examples),
                         {"upload_bytes": upload_bytes(updates)})

    def aggregate_stacked(self, updates, num_examples, client_ids, rng,
                          state=None) -> Aggregate:
        """The same mean as `aggregate`, one `tensordot` per tensor over the client axis."""
        return Aggregate(_stacked_mean(updates, num_examples),
                         {"upload_bytes": int(sum(u.nbytes for u in updates))})

    def __repr__(self) -> str:
        return "WeightedMean()"
