"""Differential privacy on top of FedAvg: clipping, Gaussian noise, DP-FedAvg, DP-SGD.

Two differential-privacy (DP) recipes appear in the course:

- DP-FedAvg (McMahan et al. 2018, "Learning differentially private recurrent language models"):
  the server clips each client's update and adds Gaussian noise to their sum, which protects
  each *client* (all of its data at once). `DPFedAvgAggregator` plugs it into `run_fedavg`, and
  runs on Keras 2 and Keras 3 alike.
- DP-SGD (Abadi et al. 2016) inside one client: tensorflow-privacy's optimizer clips each
  *example's* gradient and adds noise at every step (`make_dp_optimizer`, Keras 2 only).

The budget the noise buys is computed in `fedutils.techniques.accounting`; secure aggregation,
the other half of slide 6, is `fedutils.techniques.secure_aggregation`.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np

from fedutils.core.checks import check_float, check_int, check_rng, check_weights, float_dtype
from fedutils.loop.aggregators import Aggregate, Aggregator, upload_bytes

Weights = list  # a list of NumPy arrays, as model.get_weights() returns
RngLike = Union[None, int, np.random.Generator]


# --- clipping and noise ---------------------------------------------------------------------

def update_norm(update: Weights) -> float:
    """The global L2 norm of an update: the square root of the sum of squares of every entry of
    every tensor, as if the tensors were one long vector. DP clips this norm."""
    arrays = check_weights("update", update)
    return float(math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))


def clip_update(update: Weights, clip_norm: float) -> Weights:
    """Scale the whole update by min(1, clip_norm / norm) so its global L2 norm is at most
    `clip_norm`; an update already inside the ball is returned unchanged.

    Scaling (rather than clipping each entry) keeps the update's direction; clipping the global
    norm bounds how much any one client can move the model, the sensitivity DP noise is sized to.
    """
    arrays = check_weights("update", update)
    clip_norm = check_float("clip_norm", clip_norm, low=0.0, low_inclusive=False)
    return _clipped(arrays, clip_norm, update_norm(arrays))


def add_gaussian_noise(weights: Weights, stddev: float, rng: RngLike = None) -> Weights:
    """Add independent N(0, stddev²) noise to every entry of every tensor.

    `rng` is a NumPy Generator or an integer seed (the same seed gives the same noise, which
    makes lessons reproducible), or None for a fresh, unpredictable generator. A real deployment
    must use unpredictable noise: whoever knows the seed can subtract the noise again.
    """
    arrays = check_weights("weights", weights)
    stddev = check_float("stddev", stddev, low=0.0)
    rng = check_rng(rng)
    return [(_as_float(a) + rng.normal(0.0, stddev, size=a.shape)).astype(float_dtype(a))
            for a in arrays]


class DPFedAvgAggregator(Aggregator):
    """DP-FedAvg's server step as a `run_fedavg` aggregator (McMahan et al. 2018).

    Each client's update is clipped to global L2 norm `clip_norm` (C); the clipped updates are
    summed, Gaussian noise with standard deviation `noise_multiplier`·C (z·C) is added to the
    sum, and the sum is divided by m: `expected_clients` if given, else the number of clients
    that reported. The noise on the mean update is therefore z·C/m: more clients per round, less
    noise for the same privacy. Every client counts once (unweighted): weighting by example
    counts would let a large client move the model by more than C.

    This is TFF's `tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(z, m, C)` used
    with `tff.learning.algorithms.build_unweighted_fed_avg`; `tff.learning.dp_aggregator` is
    the same with a clip norm that adapts to the updates (Andrew et al. 2021).

    The privacy unit is a client. With each client taking part with probability q per round,
    `compute_epsilon(z, q, rounds, delta)` gives the budget, when `expected_clients` = q·N
    (McMahan et al.'s fixed-denominator estimator); dividing by the actual count instead leaks
    that count and is a common simplification.

    Measurements recorded per round: `upload_bytes` (the clients' float updates),
    `clipped_fraction` (share of clients whose update was longer than C) and `noise_stddev`
    (standard deviation of the noise on each entry of the mean update).
    """

    def __init__(self, clip_norm: float, noise_multiplier: float,
                 expected_clients: Optional[float] = None):
        self.clip_norm = check_float("clip_norm", clip_norm, low=0.0, low_inclusive=False)
        self.noise_multiplier = check_float("noise_multiplier", noise_multiplier, low=0.0)
        self.expected_clients = (None if expected_clients is None else
                                 check_float("expected_clients", expected_clients, low=0.0,
                                             low_inclusive=False))

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        """Clip, sum, add noise, divide by m: the noisy mean of the clients' updates."""
        stacked = [np.stack(layer) for layer in zip(*updates)]
        return self.aggregate_stacked(stacked, num_examples, client_ids, rng, state)

    def aggregate_stacked(self, updates, num_examples, client_ids, rng,
                          state=None) -> Aggregate:
        """`aggregate` on updates stacked per tensor (client axis first): array arithmetic,
        the same numbers and the same draws from `rng`."""
        m = self.expected_clients or len(updates[0])
        flat = [_as_float(u).reshape(len(u), -1) for u in updates]
        norms = np.zeros(len(updates[0]))
        for f in flat:  # tensor by tensor, as update_norm adds them
            norms += np.sum(np.square(f), axis=1)
        norms = np.sqrt(norms)
        scale = np.where(norms > self.clip_norm, self.clip_norm / np.maximum(norms, 1e-300), 1.0)
        total = [np.sum(_as_float((f * scale[:, None]).astype(float_dtype(u))), axis=0)
                 .reshape(u.shape[1:]) for f, u in zip(flat, updates)]
        stddev = self.noise_multiplier * self.clip_norm
        noisy = [t + rng.normal(0.0, stddev, size=t.shape) for t in total]
        delta = [(t / m).astype(float_dtype(u)) for t, u in zip(noisy, updates)]
        return Aggregate(delta, {"upload_bytes": int(sum(u.nbytes for u in updates)),
                                 "clipped_fraction": float(np.mean(norms > self.clip_norm)),
                                 "noise_stddev": stddev / m})

    def __repr__(self) -> str:
        return (f"DPFedAvgAggregator(clip_norm={self.clip_norm:g}, noise_multiplier="
                f"{self.noise_multiplier:g}, expected_clients={self.expected_clients})")


# --- DP-SGD with tensorflow-privacy ---------------------------------------------------------

def make_dp_optimizer(l2_norm_clip: float, noise_multiplier: float,
                      num_microbatches: Optional[int] = None, learning_rate: float = 0.1):
    """tensorflow-privacy's DP-SGD optimizer (`DPKerasSGDOptimizer`), as slide 6 intends.

    Each step splits the batch into `num_microbatches` microbatches (None: one per example),
    clips each microbatch's gradient to L2 norm `l2_norm_clip`, adds Gaussian noise with
    standard deviation `noise_multiplier`·`l2_norm_clip` to their sum and averages.

    Compile the model with a loss whose reduction is NONE, so the optimizer receives one loss
    per example, e.g. `tf.keras.losses.SparseCategoricalCrossentropy(reduction="none")`.
    tensorflow-privacy 0.9.0 reshapes that vector into microbatches: with the default (averaged)
    loss and `num_microbatches=None` it fails ("slice index 0 of dimension 0 out of bounds"),
    and with `num_microbatches=1` it silently clips the whole batch's gradient instead of each
    example's. The batch size must be a multiple of `num_microbatches`.

    Slide 6 passes `base_optimizer=` to it, which 0.9.0 rejects with a TypeError: the optimizer
    *is* an SGD (a subclass of `tf.keras.optimizers.legacy.SGD`) and takes `learning_rate`.
    With microbatches of more than one example, halve the noise multiplier in the epsilon
    computation (`dp_sgd_epsilon(..., used_microbatching=True)`).

    Raises RuntimeError where tensorflow-privacy cannot work: on Keras 3, or without the package.
    """
    l2_norm_clip = check_float("l2_norm_clip", l2_norm_clip, low=0.0, low_inclusive=False)
    noise_multiplier = check_float("noise_multiplier", noise_multiplier, low=0.0)
    if num_microbatches is not None:
        num_microbatches = check_int("num_microbatches", num_microbatches, minimum=1)
    learning_rate = check_float("learning_rate", learning_rate, low=0.0, low_inclusive=False)
    version = keras_version()
    if version.startswith("3"):
        raise RuntimeError(
            f"tensorflow-privacy's DP optimizers need Keras 2 but this environment has Keras "
            f"{version}; use the fedutils DP-FedAvg path instead "
            "(fedutils.privacy.DPFedAvgAggregator with fedutils.fedavg.run_fedavg).")
    try:
        from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import DPKerasSGDOptimizer
    except ImportError as exc:
        raise RuntimeError(
            f"tensorflow-privacy is not installed here ({exc}); use the fedutils DP-FedAvg path "
            "instead (fedutils.privacy.DPFedAvgAggregator with fedutils.fedavg.run_fedavg)."
        ) from None
    return DPKerasSGDOptimizer(l2_norm_clip=l2_norm_clip, noise_multiplier=noise_multiplier,
                               num_microbatches=num_microbatches, learning_rate=learning_rate)


def keras_version() -> str:
    """The version of the Keras that `tf.keras` is (Keras 2.14 with TFF, Keras 3 on Colab)."""
    import tensorflow as tf

    version = getattr(tf.keras, "__version__", None)
    if version is None:
        import keras

        version = keras.__version__
    return str(version)


def _as_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _clipped(arrays: Weights, clip_norm: float, norm: float) -> Weights:
    scale = clip_norm / norm if norm > clip_norm else 1.0
    return [(_as_float(a) * scale).astype(float_dtype(a)) for a in arrays]
