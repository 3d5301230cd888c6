"""Bootstrap confidence intervals over tasks: every pass@1, retention and rank correlation
bitfront reports carries one (scipy's percentile bootstrap; paired where two quantities are
measured on the same tasks)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% bootstrap interval."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: dict) -> Interval:
        return cls(float(data["estimate"]), float(data["low"]), float(data["high"]))

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(statistic: Callable, *samples, seed: int = 0, resamples: int = RESAMPLES,
              vectorized: bool = False) -> Interval:
    """`statistic(*samples)` with the percentile bootstrap interval, resampling the tasks
    (the first axis) of all `samples` together."""
    data = tuple(np.asarray(s, dtype=float) for s in samples)
    estimate = float(statistic(*data))
    if len(data[0]) < 2:
        return Interval(estimate, estimate, estimate)
    with warnings.catch_warnings():  # constant data: a degenerate (zero-width) interval
        warnings.simplefilter("ignore")
        result = stats.bootstrap(data, statistic, paired=True, vectorized=vectorized,
                                 n_resamples=resamples, confidence_level=LEVEL,
                                 method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    low = estimate if np.isnan(low) else float(low)
    high = estimate if np.isnan(high) else float(high)
    return Interval(estimate, min(low, estimate), max(high, estimate))


def mean_interval(values, *, seed: int = 0) -> Interval:
    """The mean of per-task values (e.g. pass@1 of each task) with its interval."""
    return bootstrap(lambda x, axis=-1: np.mean(x, axis=axis), values, seed=seed,
                     vectorized=True)


def ratio_interval(values, baseline, *, seed: int = 0) -> Interval:
    """mean(values) / mean(baseline) over the same tasks (a retention), paired."""
    def ratio(a, b, axis=-1):
        den = np.mean(b, axis=axis)
        return np.where(den > 0, np.mean(a, axis=axis) / np.where(den > 0, den, 1), 0.0)

    return bootstrap(ratio, values, baseline, seed=seed, vectorized=True)
