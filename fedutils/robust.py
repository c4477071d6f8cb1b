"""Robust aggregation (lesson 17): median, trimmed mean, Krum and norm bounding.

A thin facade: the code lives in `fedutils.robust`.
"""
from fedutils.techniques.robust import (Krum, Median, NormBounded, TrimmedMean, krum,
                                        krum_scores, median, norm_bounded_mean, num_trimmed,
                                        trimmed_mean)

__all__ = ["median", "trimmed_mean", "num_trimmed", "krum", "krum_scores", "norm_bounded_mean",
           "Median", "TrimmedMean", "Krum", "NormBounded"]
