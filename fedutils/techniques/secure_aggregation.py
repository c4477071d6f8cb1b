"""Secure aggregation by pairwise masks (Bonawitz et al. 2017), simulated exactly.

The server learns the sum of the clients' updates and nothing about any single one: each client
adds masks it shares with every other client, which cancel in the sum. Fixed-point integers
modulo 2**32 make the cancellation exact.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from fedutils.core.checks import check_float, check_int, check_weight_list

Weights = list  # a list of NumPy arrays, as model.get_weights() returns

MODULUS = 2 ** 32  # secure aggregation works on integers modulo 2**32


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
