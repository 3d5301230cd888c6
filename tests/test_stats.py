"""Bootstrap intervals on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from bitfront.stats import bootstrap, mean_interval, ratio_interval


def test_mean_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    passed = (rng.random(400) < 0.3).astype(float)
    interval = mean_interval(passed)
    p = passed.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / len(passed))  # Wald interval, accurate at this n
    assert interval.estimate == pytest.approx(p)
    assert interval.low == pytest.approx(p - half, abs=0.01)
    assert interval.high == pytest.approx(p + half, abs=0.01)


def test_degenerate_and_paired_cases():
    zero = mean_interval(np.zeros(50))
    assert (zero.estimate, zero.low, zero.high) == (0.0, 0.0, 0.0)
    same = ratio_interval([0.5, 0.7, 0.2, 0.9], [0.5, 0.7, 0.2, 0.9])
    assert (same.low, same.estimate, same.high) == (1.0, 1.0, 1.0)  # paired: no noise at all
    # A model that loses 10% on every task: the ratio is 0.9 whatever the resample.
    base = np.linspace(0.2, 1.0, 30)
    loss = ratio_interval(0.9 * base, base)
    assert loss.low == pytest.approx(0.9) and loss.high == pytest.approx(0.9)
    assert not loss.contains(1.0)


def test_interval_covers_the_truth_most_of_the_time():
    """95% intervals of a mean: coverage over 200 repetitions is near 95%."""
    rng = np.random.default_rng(1)
    hits = sum(mean_interval(rng.normal(1.0, 1.0, 60), seed=k).contains(1.0)
               for k in range(200))
    assert 0.88 <= hits / 200 <= 0.99


def test_statistic_of_paired_samples():
    from scipy import stats

    x = np.arange(20.0)
    interval = bootstrap(lambda a, b: stats.kendalltau(a, b).statistic, x, x)
    assert interval.low == pytest.approx(1.0) and interval.estimate == pytest.approx(1.0)
