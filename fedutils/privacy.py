"""Privacy on top of FedAvg: clipping, Gaussian noise, DP-FedAvg, DP-SGD, epsilon, secure sums.

Two differential-privacy (DP) recipes appear in the course:

- DP-FedAvg (McMahan et al. 2018, "Learning differentially private recurrent language models"):
  the server clips each client's update and adds Gaussian noise to their sum, which protects
  each *client* (all of its data at once). `DPFedAvgAggregator` plugs it into
  `fedutils.fedavg.run_fedavg`, and runs on Keras 2 and Keras 3 alike.
- DP-SGD (Abadi et al. 2016) inside one client: tensorflow-privacy's optimizer clips each
  *example's* gradient and adds noise at every step (`make_dp_optimizer`, Keras 2 only).

Either way, the noise only means something once it is turned into a privacy budget:
`compute_epsilon` does that with Google's dp-accounting library. Secure aggregation
(`mask_updates`, `secure_sum`) is the other half of slide 6: the server learns the sum of the
updates and nothing about any single one.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Optional, Union

import numpy as np

from fedutils._validate import (check_float, check_int, check_rng, check_weight_list,
                                check_weights, float_dtype)

Weights = list  # a list of NumPy arrays, as model.get_weights() returns
RngLike = Union[None, int, np.random.Generator]

MODULUS = 2 ** 32  # secure aggregation works on integers modulo 2**32


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
    norm = update_norm(arrays)
    scale = clip_norm / norm if norm > clip_norm else 1.0
    return [(_as_float(a) * scale).astype(float_dtype(a)) for a in arrays]


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


class DPFedAvgAggregator:
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

    After each call: `last_upload_bytes` (what the clients sent: their float updates),
    `last_clipped_fraction` (share of clients whose update was longer than C) and
    `last_noise_stddev` (standard deviation of the noise on each entry of the mean update).
    """

    def __init__(self, clip_norm: float, noise_multiplier: float,
                 expected_clients: Optional[float] = None):
        self.clip_norm = check_float("clip_norm", clip_norm, low=0.0, low_inclusive=False)
        self.noise_multiplier = check_float("noise_multiplier", noise_multiplier, low=0.0)
        self.expected_clients = (None if expected_clients is None else
                                 check_float("expected_clients", expected_clients, low=0.0,
                                             low_inclusive=False))
        self.last_upload_bytes: Optional[int] = None
        self.last_clipped_fraction: Optional[float] = None
        self.last_noise_stddev: Optional[float] = None

    def __call__(self, updates: list[Weights], num_examples: Any = None,
                 client_ids: Any = None, rng: RngLike = None) -> Weights:
        """Clip, sum, add noise, divide by m: the noisy mean of the clients' updates."""
        updates = check_weight_list("updates", updates)
        m = self.expected_clients or len(updates)
        norms = np.array([update_norm(u) for u in updates])
        clipped = [clip_update(u, self.clip_norm) for u in updates]
        total = [np.sum([_as_float(t) for t in layer], axis=0) for layer in zip(*clipped)]
        noisy = add_gaussian_noise(total, self.noise_multiplier * self.clip_norm, check_rng(rng))
        self.last_upload_bytes = int(sum(a.nbytes for u in updates for a in u))
        self.last_clipped_fraction = float(np.mean(norms > self.clip_norm))
        self.last_noise_stddev = self.noise_multiplier * self.clip_norm / m
        return [(t / m).astype(float_dtype(u)) for t, u in zip(noisy, updates[0])]

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


# --- privacy accounting ---------------------------------------------------------------------

def compute_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                    accountant: str = "rdp") -> float:
    """Epsilon of `steps` compositions of the Poisson-subsampled Gaussian mechanism.

    Each step includes each unit (an example in DP-SGD, a client in DP-FedAvg) independently
    with probability `sample_rate` and adds Gaussian noise of `noise_multiplier` times the
    sensitivity. The result, with `delta`, is an (epsilon, delta)-DP guarantee under
    add-or-remove-one adjacency, computed by dp-accounting: "rdp" (Rényi DP, fast, a slightly
    loose upper bound) or "pld" (privacy loss distributions, tighter, slower).
    """
    noise_multiplier = check_float("noise_multiplier", noise_multiplier, low=0.0,
                                   low_inclusive=False)
    sample_rate = check_float("sample_rate", sample_rate, low=0.0, high=1.0, low_inclusive=False)
    steps = check_int("steps", steps, minimum=1)
    delta = check_float("delta", delta, low=0.0, high=1.0, low_inclusive=False,
                        high_inclusive=False)
    if accountant not in ("rdp", "pld"):
        raise ValueError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")
    import dp_accounting

    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)), steps)
    acc = (dp_accounting.rdp.RdpAccountant() if accountant == "rdp"
           else dp_accounting.pld.PLDAccountant())
    # dp-accounting 0.6 logs (through absl) every Renyi order whose series does not converge
    # and that it therefore leaves out; that is its normal operation, not a problem to report.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return float(acc.compose(event).get_epsilon(delta))
    finally:
        absl_logger.setLevel(level)


def dp_sgd_epsilon(num_examples: int, batch_size: int, epochs: int, noise_multiplier: float,
                   delta: float, accountant: str = "rdp", used_microbatching: bool = False
                   ) -> float:
    """Epsilon of one client's DP-SGD: sample rate batch_size/num_examples, and
    epochs·ceil(num_examples/batch_size) steps (the batches a tf.data pipeline runs).

    This is tensorflow-privacy's "epsilon assuming Poisson sampling" from
    `compute_dp_sgd_privacy_statement`, which counts ceil(epochs·num_examples/batch_size) steps
    instead (the same when batch_size divides num_examples). With microbatches of more than one
    example (`used_microbatching=True`) one example can change a clipped microbatch gradient by
    twice the clip norm, so the effective noise multiplier is halved, as tensorflow-privacy does.
    """
    num_examples = check_int("num_examples", num_examples, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1, maximum=num_examples)
    epochs = check_int("epochs", epochs, minimum=1)
    noise_multiplier = check_float("noise_multiplier", noise_multiplier, low=0.0,
                                   low_inclusive=False)
    steps = epochs * math.ceil(num_examples / batch_size)
    if used_microbatching:
        noise_multiplier /= 2
    return compute_epsilon(noise_multiplier, batch_size / num_examples, steps, delta, accountant)


# --- secure aggregation by pairwise masks ---------------------------------------------------

def mask_updates(updates: list[Weights], seed: int, scale: float = 2 ** 16) -> list[Weights]:
    """What each client sends in pairwise-mask secure aggregation (Bonawitz et al. 2017).

    Client i encodes its update as fixed-point integers modulo 2**32 (round(x·scale)); for each
    other client j, the pair shares a random mask (here drawn from
    `np.random.default_rng([seed, i, j])` with i < j, standing in for a key the pair agreed on);
    the lower-numbered client adds it, the higher-numbered one subtracts it. Each masked update
    alone looks uniformly random, yet in the sum over all clients every mask cancels exactly.
    Returns, per client, a list of uint32 arrays shaped like the update.

    Each entry must satisfy |x| < 2**31/scale (32,768 at the default scale 2**16) to be
    representable; scale sets the precision: 1/scale per entry after rounding.
    """
    updates = check_weight_list("updates", updates)
    seed = check_int("seed", seed, minimum=0)
    scale = check_float("scale", scale, low=0.0, low_inclusive=False)
    encoded = [_encode(u, scale, f"updates[{i}]") for i, u in enumerate(updates)]
    for i, j in _pairs(len(updates)):
        for t, mask in enumerate(_pair_masks(seed, i, j, updates[0])):
            encoded[i][t] += mask   # uint32 arithmetic wraps around modulo 2**32
            encoded[j][t] -= mask
    return encoded


def secure_sum(updates: list[Weights], seed: int, dropped: Iterable[int] = (),
               scale: float = 2 ** 16) -> Weights:
    """The sum of the surviving clients' updates, computed from masked updates only.

    Simulates the protocol of `mask_updates` with an honest-but-curious server: every client
    masks its update; the clients listed in `dropped` (indices into `updates`) then never send
    theirs, so the server adds up the survivors' masked updates modulo 2**32. The masks between
    two survivors cancel; the masks a survivor shares with a dropped client do not, so the
    server removes them: in the real protocol it rebuilds each such pair's key from the secret
    shares (Shamir) the survivors hold of the dropped client's key; here it re-derives the mask
    from (seed, i, j). The total is decoded as a two's-complement integer and divided by `scale`.

    Simplified: the full protocol also adds a self-mask to each update (so a late update cannot
    be unmasked) and tolerates drop-outs during recovery. Entries of dropped clients are not
    used. Range: every entry of the sum must satisfy |sum| < 2**31/scale; a ValueError is raised
    otherwise. Rounding costs at most 0.5/scale per client and entry.
    """
    updates = check_weight_list("updates", updates)
    seed = check_int("seed", seed, minimum=0)
    scale = check_float("scale", scale, low=0.0, low_inclusive=False)
    n = len(updates)
    dropped = _check_dropped(dropped, n)
    survivors = [i for i in range(n) if i not in dropped]
    plain = [np.sum(layer, axis=0) for layer in
             zip(*(_encode(updates[i], scale, f"updates[{i}]", as_int=True) for i in survivors))]
    limit = 2 ** 31
    worst = max(float(np.max(np.abs(p), initial=0)) for p in plain)
    if worst >= limit:
        raise ValueError(f"updates: the sum of the surviving updates reaches {worst / scale:g}, "
                         f"outside the representable range |sum| < 2**31/scale = "
                         f"{limit / scale:g}; lower scale or clip the updates")
    masked = mask_updates(updates, seed, scale)
    total = [np.zeros(a.shape, dtype=np.uint32) for a in updates[0]]
    for i in survivors:
        for t, part in enumerate(masked[i]):
            total[t] += part
    for i in survivors:                         # unmask pairs cut off by a drop-out
        for d in dropped:
            pair = (min(i, d), max(i, d))
            for t, mask in enumerate(_pair_masks(seed, *pair, updates[0])):
                if i < d:
                    total[t] -= mask   # i added this mask; its partner never subtracted it
                else:
                    total[t] += mask
    return [_decode(t, scale) for t in total]


# --- helpers --------------------------------------------------------------------------------



def _as_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _pairs(n: int):
    return ((i, j) for i in range(n) for j in range(i + 1, n))


def _pair_masks(seed: int, i: int, j: int, like: Weights) -> list[np.ndarray]:
    gen = np.random.default_rng([seed, i, j])
    return [gen.integers(0, MODULUS, size=np.shape(a), dtype=np.uint32) for a in like]


def _encode(update: Weights, scale: float, name: str, as_int: bool = False) -> list[np.ndarray]:
    """Fixed point: round(x·scale) as int64, or modulo 2**32 as uint32 (two's complement)."""
    ints = [np.round(_as_float(a) * scale) for a in update]
    worst = max(float(np.max(np.abs(q), initial=0)) for q in ints)
    if worst >= 2 ** 31:
        raise ValueError(f"{name} has an entry of {worst / scale:g}, outside the representable "
                         f"range |x| < 2**31/scale = {2 ** 31 / scale:g}; lower scale or clip "
                         "the update")
    ints = [q.astype(np.int64) for q in ints]
    return ints if as_int else [np.mod(q, MODULUS).astype(np.uint32) for q in ints]


def _decode(total: np.ndarray, scale: float) -> np.ndarray:
    signed = total.astype(np.int64)
    signed[signed >= 2 ** 31] -= MODULUS
    return signed / scale


def _check_dropped(dropped: Iterable[int], n: int) -> set[int]:
    if isinstance(dropped, (str, bytes)) or not isinstance(dropped, Iterable):
        raise TypeError(f"dropped must be a list of client indices, got {type(dropped).__name__}")
    out = {check_int("dropped", d, minimum=0, maximum=n - 1) for d in dropped}
    if len(out) == n:
        raise ValueError(f"dropped lists all {n} clients: at least one must survive to be summed")
    return out
