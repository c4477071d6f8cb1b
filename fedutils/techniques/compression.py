"""Communication efficiency: sparsify or quantize what clients send, and count the bytes.

What is compressed is a client's *update* (new weights minus the global weights it started
from), never the weights themselves: zeroing 99% of an update skips most of a step, zeroing 99%
of the weights destroys the model (slide 7's mistake). Compression errors need not be lost:
`ErrorFeedback` carries each client's error over to its next update. `CompressionAggregator`
plugs all of this into `run_fedavg` and reports the bytes sent per round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional

import numpy as np

from fedutils.core.checks import check_float, check_int, check_rng, check_weights, float_dtype
from fedutils.loop.aggregators import Aggregate, Aggregator, server_aggregate

Weights = list  # a list of NumPy arrays, as model.get_weights() returns
SCHEMES = ("dense", "sparse", "quantized")
METHODS = ("top_k", "random_k", "quantize")


# --- sparsification -------------------------------------------------------------------------

def num_kept(size: int, ratio: float) -> int:
    """How many of a tensor's `size` values top-k and random-k keep: max(1, ceil(ratio·size)).

    At least one value per tensor: slide 7's int(size·ratio) is 0 for a tensor of fewer than
    1/ratio values, and `argpartition(...)[-0:]` then keeps all of them. (ratio·size is rounded
    to 9 decimals first, so that 0.07·100 counts as 7, not 8.)
    """
    return max(1, math.ceil(round(ratio * size, 9)))


def top_k_sparsify(update: Weights, ratio: float) -> Weights:
    """Keep, in each tensor, its k = max(1, ceil(ratio·size)) entries of largest magnitude and
    zero the rest. Exactly k entries are kept; among equal magnitudes the lower flat index wins,
    so the result is deterministic."""
    arrays = check_weights("update", update)
    ratio = _check_ratio(ratio)
    out = []
    for a in arrays:
        flat = a.reshape(-1)
        keep = np.argsort(-np.abs(flat), kind="stable")[:num_kept(flat.size, ratio)]
        out.append(_scatter(flat, keep, a.shape))
    return out


def random_k_sparsify(update: Weights, ratio: float, rng: Any = None,
                      unbiased: bool = False) -> Weights:
    """Keep k = max(1, ceil(ratio·size)) entries per tensor chosen uniformly at random (by
    `rng`, a NumPy Generator or an integer seed), zero the rest.

    With `unbiased=True` the kept values are multiplied by size/k, so the sparse update equals
    the dense one in expectation (at the price of more variance).
    """
    arrays = check_weights("update", update)
    ratio = _check_ratio(ratio)
    rng = check_rng(rng)
    out = []
    for a in arrays:
        flat = a.reshape(-1)
        k = num_kept(flat.size, ratio)
        keep = rng.choice(flat.size, size=k, replace=False)
        sparse = _scatter(flat, keep, a.shape)
        out.append((sparse * (flat.size / k)).astype(sparse.dtype) if unbiased else sparse)
    return out


# --- quantization ---------------------------------------------------------------------------

@dataclass
class Quantized:
    """A quantized update: what a client sends instead of floats.

    Tensor i is rebuilt as mins[i] + codes[i]·steps[i]. `codes` are unsigned integers of
    `bits` bits (stored here in the smallest NumPy unsigned type that holds them); `mins` and
    `steps` are one pair per tensor (counted as two float32 values, 8 bytes, in payload_bytes).
    """
    codes: list
    mins: np.ndarray
    steps: np.ndarray
    bits: int
    shapes: list
    dtypes: list


def quantize(weights: Weights, bits: int, stochastic: bool = False, rng: Any = None
             ) -> Quantized:
    """Uniform `bits`-bit quantization of each tensor between its min and max.

    The 2**bits levels are min, min + step, ..., max with step = (max - min)/(2**bits - 1).
    Deterministic rounding picks the nearest level (error at most step/2); stochastic rounding
    rounds up with probability equal to the distance from the level below, in units of step
    (error below one step, and unbiased: E[dequantize] = the input), as QSGD does. A constant
    tensor (max == min) gets step 0 and is rebuilt exactly.
    """
    arrays = check_weights("weights", weights)
    bits = check_int("bits", bits, minimum=1, maximum=32)
    rng = check_rng(rng) if stochastic else None
    levels = 2 ** bits - 1
    code_dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    codes, mins, steps = [], [], []
    for a in arrays:
        x = np.asarray(a, dtype=np.float64)
        low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        step = (high - low) / levels
        scaled = (x - low) / step if step > 0 else np.zeros_like(x)
        rounded = np.floor(scaled + rng.random(x.shape)) if stochastic else np.rint(scaled)
        codes.append(np.clip(rounded, 0, levels).astype(code_dtype))
        mins.append(low)
        steps.append(step)
    return Quantized(codes, np.array(mins), np.array(steps), bits,
                     [a.shape for a in arrays], [float_dtype(a) for a in arrays])


def dequantize(q: Quantized) -> Weights:
    """Rebuild the tensors of a `Quantized`: min + code·step, in their original float dtype."""
    if not isinstance(q, Quantized):
        raise TypeError(f"q must be a Quantized (from fedutils.compression.quantize), "
                        f"got {type(q).__name__}")
    return [(low + c.astype(np.float64) * step).reshape(shape).astype(dtype)
            for c, low, step, shape, dtype in zip(q.codes, q.mins, q.steps, q.shapes, q.dtypes)]


# --- error feedback -------------------------------------------------------------------------

class ErrorFeedback:
    """Error feedback (Seide et al. 2014; Karimireddy et al. 2019): what compression dropped
    from a client's update is added to that client's next update instead of being lost.

    `compress(client_id, update, compress_fn)` sends compress_fn(update + residual) and keeps
    residual = update + residual - sent. Over any number of rounds, the sum of what was sent
    plus the final residual equals the sum of the raw updates: nothing is lost, only delayed.
    Residuals are kept in float64 so that this bookkeeping holds to rounding error.
    """

    def __init__(self):
        self.residuals: dict[Hashable, list[np.ndarray]] = {}

    def compress(self, client_id: Hashable, update: Weights,
                 compress_fn: Callable[[Weights], Weights]) -> Weights:
        """Compress `update` plus this client's residual with `compress_fn` (a function from a
        list of arrays to a list of arrays of the same shapes, e.g.
        `lambda u: top_k_sparsify(u, 0.01)`), update the residual, return the compressed update
        in the update's dtypes."""
        arrays = check_weights("update", update)
        if not callable(compress_fn):
            raise TypeError(f"compress_fn must be callable, got {type(compress_fn).__name__}")
        corrected = [np.asarray(a, dtype=np.float64) for a in arrays]
        residual = self.residuals.get(client_id)
        if residual is not None:
            check_weights("update", arrays, like=residual)
            corrected = [c + r for c, r in zip(corrected, residual)]
        sent = check_weights("compress_fn(update)", compress_fn(corrected), like=corrected)
        sent = [s.astype(float_dtype(a)) for s, a in zip(sent, arrays)]
        self.residuals[client_id] = [c - s for c, s in zip(corrected, sent)]
        return sent

    def residual(self, client_id: Hashable) -> Optional[Weights]:
        """The error this client still owes (None before its first update)."""
        return self.residuals.get(client_id)

    def reset(self) -> None:
        """Forget every client's residual."""
        self.residuals.clear()


# --- bytes on the wire ----------------------------------------------------------------------

def index_bytes(size: int) -> int:
    """Bytes per index of a sparse tensor of `size` values: the smallest of 1, 2 or 4 bytes
    that can address every position (flat index within the tensor, 0 .. size-1)."""
    size = check_int("size", size, minimum=1)
    return 1 if size <= 2 ** 8 else 2 if size <= 2 ** 16 else 4


def payload_bytes(update: Any, scheme: str = "dense", bits: int = 32,
                  ratio: Optional[float] = None) -> int:
    """Bytes one client sends for `update` (a list of arrays, or a `Quantized`).

    - "dense": every value at `bits` bits (32: float32), ceil(size·bits/8) bytes per tensor.
    - "sparse": per tensor, each sent value costs ceil(bits/8) value bytes plus an index of
      `index_bytes(size)` bytes (1 byte up to 256 values, 2 up to 65,536, else 4). The values
      sent are the tensor's nonzeros or, with `ratio`, the k = max(1, ceil(ratio·size)) that
      top-k or random-k keep.
    - "quantized": per tensor, ceil(size·bits/8) bytes of packed codes plus 8 bytes for its min
      and step (two float32). A `Quantized` is counted this way with its own bits.

    Nothing else (headers, shapes, the round number) is counted: both sides know the model.
    """
    if isinstance(update, Quantized):
        if scheme not in ("dense", "quantized"):
            raise ValueError(f"scheme must be 'quantized' for a Quantized update, got {scheme!r}")
        sizes, bits, scheme = [int(np.prod(s)) for s in update.shapes], update.bits, "quantized"
        arrays = None
    else:
        arrays = check_weights("update", update)
        sizes = [a.size for a in arrays]
        bits = check_int("bits", bits, minimum=1, maximum=32)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if ratio is not None and scheme != "sparse":
        raise ValueError(f"ratio is only used with scheme='sparse', got scheme={scheme!r}")
    if scheme == "dense":
        return sum(math.ceil(n * bits / 8) for n in sizes)
    if scheme == "quantized":
        return sum(math.ceil(n * bits / 8) + 8 for n in sizes)
    ratio = None if ratio is None else _check_ratio(ratio)
    sent = ([num_kept(n, ratio) for n in sizes] if ratio is not None
            else [int(np.count_nonzero(a)) for a in arrays])
    return sum(k * (math.ceil(bits / 8) + index_bytes(max(n, 1))) for k, n in zip(sent, sizes))


# --- the aggregator -------------------------------------------------------------------------

class CompressionAggregator(Aggregator):
    """A `run_fedavg` aggregator in which every client compresses its update before sending.

    `method`: "top_k" or "random_k" (keep a `ratio` of each tensor's entries), or "quantize"
    (`bits` bits per entry: to the nearest level by default; with `stochastic=True` rounded up
    or down at random so that every entry is right on average, as QSGD and TFF's quantizer do,
    drawing from the round's `rng`). With `error_feedback` (default), each client keeps what its
    compression dropped and adds it to its next update: the state of this aggregator is an
    `ErrorFeedback` (one residual per client id), made fresh by `initialize()` at the start of
    every run. The server averages the decompressed updates weighted by example counts, as
    FedAvg does. Measurements per round: `upload_bytes`, what the clients sent by
    `payload_bytes` (k values and indices per tensor for the sparsifiers, packed codes plus min
    and step for quantization), and `dense_upload_bytes`, the same updates as float32.
    """

    def __init__(self, method: str = "top_k", ratio: Optional[float] = None,
                 bits: Optional[int] = None, error_feedback: bool = True,
                 stochastic: bool = False):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not isinstance(stochastic, (bool, np.bool_)):
            raise TypeError(f"stochastic must be True or False, got {stochastic!r}")
        if stochastic and method != "quantize":
            raise ValueError(f"stochastic is for method 'quantize' (stochastic rounding); "
                             f"method {method!r} does not round")
        if method == "quantize":
            if ratio is not None:
                raise ValueError("ratio is for method 'top_k' or 'random_k'; "
                                 "method 'quantize' takes bits")
            self.bits = check_int("bits", bits, minimum=1, maximum=32)
            self.ratio = None
        else:
            if bits is not None:
                raise ValueError(f"bits is for method 'quantize'; method {method!r} takes ratio")
            if ratio is None:
                raise ValueError(f"ratio is required for method {method!r}: the fraction of "
                                 "entries to keep, in (0, 1]")
            self.ratio = _check_ratio(ratio)
            self.bits = None
        self.method = method
        self.error_feedback = bool(error_feedback)
        self.stochastic = bool(stochastic)

    def initialize(self) -> Optional[ErrorFeedback]:
        """A fresh error-feedback memory (None without error feedback)."""
        return ErrorFeedback() if self.error_feedback else None

    def compress(self, update: Weights, rng: Any = None) -> Weights:
        """One client's update as the server receives it (decompressed), without feedback."""
        if self.method == "top_k":
            return top_k_sparsify(update, self.ratio)
        if self.method == "random_k":
            return random_k_sparsify(update, self.ratio, rng)
        return dequantize(quantize(update, self.bits, stochastic=self.stochastic, rng=rng))

    def aggregate(self, updates, num_examples, client_ids, rng, state=None) -> Aggregate:
        """Compress each client's update (with its residual), average weighted by examples."""
        if client_ids is None or len(client_ids) != len(updates):
            raise ValueError(f"client_ids must hold one id per update ({len(updates)}), "
                             f"got {client_ids!r}")
        sent = []
        for cid, update in zip(client_ids, updates):
            fn = lambda u: self.compress(u, rng)  # noqa: E731
            sent.append(state.compress(cid, update, fn) if state is not None else fn(update))
        if self.method == "quantize":
            upload = sum(payload_bytes(u, "quantized", self.bits) for u in updates)
        else:
            upload = sum(payload_bytes(u, "sparse", ratio=self.ratio) for u in updates)
        return Aggregate(server_aggregate(sent, num_examples),
                         {"upload_bytes": int(upload),
                          "dense_upload_bytes": int(sum(payload_bytes(u, "dense")
                                                        for u in updates))},
                         state)

    def __repr__(self) -> str:
        setting = (f"ratio={self.ratio:g}" if self.ratio is not None else
                   f"bits={self.bits}" + (", stochastic=True" if self.stochastic else ""))
        return (f"CompressionAggregator(method={self.method!r}, {setting}, "
                f"error_feedback={self.error_feedback})")


# --- helpers --------------------------------------------------------------------------------

def _check_ratio(ratio: Any) -> float:
    return check_float("ratio", ratio, low=0.0, high=1.0, low_inclusive=False)


def _scatter(flat: np.ndarray, keep: np.ndarray, shape: tuple) -> np.ndarray:
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(shape)



