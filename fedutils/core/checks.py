"""Argument checks shared by every fedutils module.

Each raises TypeError or ValueError with a message that names the argument and what is accepted,
so a learner never meets a shape error deep inside TensorFlow instead.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Optional, Sequence

import numpy as np


def check_int(name: str, value: Any, minimum: Optional[int] = None,
              maximum: Optional[int] = None) -> int:
    """Return `value` as an int, or raise if it is not an integer in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer in {_range(minimum, maximum)}, got {value}")
    return value


def check_float(name: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """Return `value` as a finite float, or raise if it is outside the given interval."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        interval = (("[" if low_inclusive else "(") + ("-inf" if low is None else f"{low:g}")
                    + ", " + ("inf" if high is None else f"{high:g}")
                    + ("]" if high_inclusive else ")"))
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return value


def as_array(name: str, value: Any) -> np.ndarray:
    """`np.asarray(value)`, with NumPy's error for ragged nested lists naming the argument."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be an array (not a ragged nested list): {exc}") from None


def check_labels(name: str, labels: Any) -> np.ndarray:
    """Return labels as a 1-D integer array, or raise for other shapes or non-integer values."""
    arr = as_array(name, labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of integer class labels "
                         f"(shape (n,) or (n, 1)), got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        # Whole-number floats (1.0, 2.0) are labels; 0.5, NaN, inf or 1e300 are not.
        if not (np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr))
                and np.all(np.mod(arr, 1) == 0) and np.abs(arr).max() < 2.0**53):
            raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}"
                             + (f" with values such as {_not_integer(arr)!r}"
                                if np.issubdtype(arr.dtype, np.floating) else ""))
        arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"{name} must hold class labels >= 0, got {arr.min()}")
    return arr


def _not_integer(arr: np.ndarray) -> float:
    """The first value of a float array that is not a whole, finite number of safe size."""
    bad = ~np.isfinite(arr)
    bad[~bad] = (np.mod(arr[~bad], 1) != 0) | (np.abs(arr[~bad]) >= 2.0**53)
    return float(arr[np.argmax(bad)])


def check_weights(name: str, weights: Any, like: Optional[Sequence[np.ndarray]] = None,
                  allow_nan: bool = False) -> list[np.ndarray]:
    """Return a model's weights as a list of float arrays (as `model.get_weights()` gives).

    With `like`, also require the same number of tensors with the same shapes.
    """
    if isinstance(weights, np.ndarray) or not isinstance(weights, (list, tuple)):
        raise TypeError(f"{name} must be a list of NumPy arrays, as model.get_weights() returns, "
                        f"got {type(weights).__name__}")
    if len(weights) == 0:
        raise ValueError(f"{name} must hold at least one tensor, got an empty list")
    out = []
    for i, w in enumerate(weights):
        arr = as_array(f"{name}[{i}]", w)
        if not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"{name}[{i}] must be numeric, got dtype {arr.dtype}")
        if not allow_nan and not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}[{i}] contains NaN or infinite values; "
                             "a diverged client update cannot be aggregated")
        out.append(arr)
    if like is not None:
        if len(out) != len(like):
            raise ValueError(f"{name} must hold {len(like)} tensors like the model, got {len(out)}")
        for i, (a, b) in enumerate(zip(out, like)):
            if a.shape != np.shape(b):
                raise ValueError(f"{name}[{i}] must have shape {np.shape(b)}, got {a.shape}")
    return out


def check_weight_list(name: str, weight_list: Any) -> list[list[np.ndarray]]:
    """Check a list of clients' weights: non-empty, every client shaped like the first."""
    if not isinstance(weight_list, (list, tuple)):
        raise TypeError(f"{name} must be a list with one weight list per client, "
                        f"got {type(weight_list).__name__}")
    if len(weight_list) == 0:
        raise ValueError(f"{name} is empty: at least one client is needed to aggregate "
                         "(did no client take part in this round?)")
    first = check_weights(f"{name}[0]", weight_list[0])
    return [first] + [check_weights(f"{name}[{i}]", w, like=first)
                      for i, w in enumerate(weight_list[1:], start=1)]


def _range(minimum: Optional[int], maximum: Optional[int]) -> str:
    lo = "-inf" if minimum is None else str(minimum)
    hi = "inf" if maximum is None else str(maximum)
    return f"[{lo}, {hi}]"


def check_rng(rng: Any) -> np.random.Generator:
    """A NumPy Generator from None (fresh entropy), a seed (int >= 0) or a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    return np.random.default_rng(check_int("rng", rng, minimum=0))


def float_dtype(a: np.ndarray) -> np.dtype:
    """The array's dtype if it is floating point, else float64 (for results of arithmetic)."""
    return a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float64)
