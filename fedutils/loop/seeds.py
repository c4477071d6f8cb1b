"""Repeated runs: one result is an anecdote, the spread over seeds is a finding."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from fedutils.core.checks import check_int


@dataclass
class Spread:
    """Results of the same experiment over several seeds: `values` has one row per seed (a
    number or a curve per seed); mean, std, min and max over seeds."""
    seeds: list
    values: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.values.mean(axis=0)

    @property
    def std(self) -> np.ndarray:
        """Sample standard deviation over seeds (ddof=1; 0 for a single seed)."""
        return self.values.std(axis=0, ddof=1) if len(self.seeds) > 1 else 0 * self.mean

    @property
    def min(self) -> np.ndarray:
        return self.values.min(axis=0)

    @property
    def max(self) -> np.ndarray:
        return self.values.max(axis=0)

    def __format__(self, spec: str) -> str:
        """'0.912 ± 0.004' for a number (format spec applies to both), e.g. f"{s:.3f}"."""
        spec = spec or ".3f"
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        if mean.ndim:
            return f"{len(self.seeds)} seeds of shape {mean.shape}"
        return f"{mean:{spec}} ± {std:{spec}}"

    def __str__(self) -> str:
        return format(self, "")

    def plot(self, ax, x=None, label=None, **kwargs):
        """A curve per seed summarised as the mean line and a min–max band."""
        x = np.arange(1, len(self.mean) + 1) if x is None else x
        line, = ax.plot(x, self.mean, label=label, **kwargs)
        ax.fill_between(x, self.min, self.max, color=line.get_color(), alpha=0.2, linewidth=0)
        return line


def over_seeds(experiment: Callable[[int], Any], seeds: Sequence[int] = (0, 1, 2)) -> Spread:
    """Run `experiment(seed)` for each seed; it returns a number or a curve (same length for
    every seed). Returns the `Spread` over seeds."""
    if not callable(experiment):
        raise TypeError(f"experiment must be a function of the seed, got "
                        f"{type(experiment).__name__}")
    seeds = [check_int("seeds", s, minimum=0) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed, e.g. (0, 1, 2)")
    results = [np.asarray(experiment(s), dtype=np.float64) for s in seeds]
    shapes = {r.shape for r in results}
    if len(shapes) != 1:
        raise ValueError(f"experiment must return results of one shape for every seed, got "
                         f"{sorted(shapes)}")
    return Spread(seeds, np.stack(results))
