"""Tests of icllib.stats: closed forms against published values, coverage by simulation, bad inputs.

Coverage tolerances: a simulation of S intervals estimates a coverage c with standard error sqrt(c(1 - c)/S)
(0.0034 for S = 4000, 0.013 for S = 300); each bound below allows about four standard errors plus the method's known
small-sample bias (the percentile bootstrap covers a little less than its level at n = 30, a cluster bootstrap over
20 groups a little less again).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icllib import stats
from icllib.stats import Interval


# ----------------------------------------------------------------------------------------------------------------
# Interval
# ----------------------------------------------------------------------------------------------------------------
def test_interval_prints_and_formats():
    interval = Interval(0.78123, 0.7071, 0.8449, n=100, method="wilson")
    assert str(interval) == "0.78 [0.71, 0.84]"
    assert interval.format(".3f") == "0.781 [0.707, 0.845]"
    assert f"{interval:.1%}" == "78.1% [70.7%, 84.5%]"
    assert f"{interval}" == str(interval)
    assert math.isclose(interval.width, 0.8449 - 0.7071)
    assert interval.level == 0.95


def test_interval_comparisons():
    low, mid, high = Interval(0.2, 0.1, 0.3), Interval(0.35, 0.25, 0.45), Interval(0.7, 0.6, 0.8)
    assert high.above(low) and high.above(mid) and low.below(high)
    assert not mid.above(low) and not low.below(mid) and mid.overlaps(low) and low.overlaps(mid)
    assert not high.overlaps(low)
    assert high.above(0.5) and not high.above(0.6) and low.below(0.31) and not low.below(0.3)
    assert mid.contains(0.25) and mid.contains(0.45) and not mid.contains(0.46)
    assert mid.overlaps(0.3) and not mid.overlaps(0.5)


def test_interval_holds_python_floats():
    interval = Interval(np.float32(0.5), np.float64(0.25), 1, n=np.int64(8))
    assert all(type(v) is float for v in (interval.estimate, interval.low, interval.high))
    assert type(interval.n) is int


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"estimate": 0.5, "low": 0.6, "high": 0.4}, ValueError, "low"),
        ({"estimate": "a", "low": 0.1, "high": 0.9}, TypeError, "estimate"),
        ({"estimate": 0.5, "low": float("nan"), "high": 0.9}, ValueError, "low"),
        ({"estimate": 0.5, "low": 0.1, "high": 0.9, "level": 1.0}, ValueError, "level"),
        ({"estimate": 0.5, "low": 0.1, "high": 0.9, "n": 0}, ValueError, "n"),
        ({"estimate": 0.5, "low": 0.1, "high": 0.9, "method": 3}, TypeError, "method"),
    ],
)
def test_interval_bad_inputs(kwargs, error, name):
    with pytest.raises(error, match=rf"^{name}\b"):
        Interval(**kwargs)


def test_interval_bad_arguments_of_methods():
    interval = Interval(0.5, 0.4, 0.6)
    with pytest.raises(TypeError, match=r"^other\b"):
        interval.above("0.3")
    with pytest.raises(TypeError, match=r"^x\b"):
        interval.contains(None)
    with pytest.raises(ValueError, match=r"^spec\b"):
        interval.format("q")
    with pytest.raises(TypeError, match=r"^spec\b"):
        interval.format(2)


# ----------------------------------------------------------------------------------------------------------------
# Wilson
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "successes, n, low, high",
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score without continuity correction)
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_matches_published_values(successes, n, low, high):
    interval = stats.wilson(successes, n)
    assert (round(interval.low, 4), round(interval.high, 4)) == (low, high)
    assert interval.estimate == successes / n and interval.n == n and interval.method == "wilson"


def test_wilson_closed_forms_at_the_ends():
    z2 = 1.959963984540054**2
    none, every = stats.wilson(0, 10), stats.wilson(10, 10)
    assert none.low == 0.0 and math.isclose(none.high, z2 / (10 + z2))
    assert every.high == 1.0 and math.isclose(every.low, 1 - z2 / (10 + z2))
    mirrored = stats.wilson(7, 10)
    assert math.isclose(stats.wilson(3, 10).low, 1 - mirrored.high)
    assert stats.wilson(30, 100, level=0.99).width > stats.wilson(30, 100).width > stats.wilson(30, 100, 0.5).width


def test_wilson_coverage_by_simulation():
    """Averaged over p uniform in [0.05, 0.95], n = 40: coverage 0.95 +- 0.015 (4000 intervals, seed 0)."""
    rng = np.random.default_rng(0)
    n = 40
    ps = rng.uniform(0.05, 0.95, size=4000)
    ks = rng.binomial(n, ps)
    table = [stats.wilson(k, n) for k in range(n + 1)]
    coverage = np.mean([table[k].contains(p) for k, p in zip(ks, ps)])
    assert abs(coverage - 0.95) < 0.015, coverage


def test_accuracy_is_wilson_of_the_hits():
    hits = [True, False, True, True]
    assert stats.accuracy(hits) == stats.wilson(3, 4)
    assert stats.accuracy(np.array(hits)) == stats.wilson(3, 4)
    assert stats.accuracy(torch.tensor(hits), level=0.9) == stats.wilson(3, 4, level=0.9)


@pytest.mark.parametrize(
    "args, error, name",
    [
        ((-1, 10), ValueError, "successes"),
        ((11, 10), ValueError, "successes"),
        ((1.5, 10), TypeError, "successes"),
        ((1, 0), ValueError, "n"),
        ((True, 10), TypeError, "successes"),
        ((1, 10, 0.0), ValueError, "level"),
        ((1, 10, 1.0), ValueError, "level"),
        ((1, 10, "0.95"), TypeError, "level"),
    ],
)
def test_wilson_bad_inputs(args, error, name):
    with pytest.raises(error, match=rf"^{name}\b"):
        stats.wilson(*args)


@pytest.mark.parametrize(
    "hits, error",
    [([], ValueError), ([0.5, 1.0], TypeError), ([1, 0], TypeError), ("TF", TypeError), (3, TypeError),
     (np.ones((2, 2), bool), ValueError)],
)
def test_accuracy_bad_inputs(hits, error):
    with pytest.raises(error, match=r"^hits\b"):
        stats.accuracy(hits)


# ----------------------------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------------------------
def test_bootstrap_is_deterministic_and_sensible():
    values = np.random.default_rng(1).normal(0.5, 1.0, size=200)
    interval = stats.bootstrap(values)
    assert interval == stats.bootstrap(values, seed=0) and interval != stats.bootstrap(values, seed=1)
    assert interval.estimate == float(values.mean()) and interval.contains(interval.estimate)
    assert (interval.n, interval.method) == (200, "bootstrap")
    # close to the normal-theory interval of a mean (+-1.96 s / sqrt(n)) for a normal sample of 200
    assert math.isclose(interval.width, 2 * 1.96 * values.std(ddof=1) / math.sqrt(200), rel_tol=0.1)
    median = stats.bootstrap(values, statistic=np.median, level=0.9)
    assert median.estimate == float(np.median(values)) and median.level == 0.9


def test_bootstrap_of_constant_values_has_zero_width():
    interval = stats.bootstrap(np.full(5, 0.25))
    assert (interval.low, interval.high) == (0.25, 0.25)


def test_one_value_per_group_is_the_plain_bootstrap():
    values = np.random.default_rng(2).normal(size=50)
    plain, grouped = stats.bootstrap(values), stats.bootstrap(values, groups=np.arange(50))
    assert (plain.low, plain.high) == (grouped.low, grouped.high) and grouped.method == "cluster bootstrap"


def test_bootstrap_coverage_by_simulation():
    """Mean of 30 normal values: 300 intervals (seeds 1, 0..299), coverage in [0.90, 0.98]."""
    rng = np.random.default_rng(1)
    covered = [stats.bootstrap(rng.normal(1.0, 2.0, size=30), n_resamples=400, seed=i).contains(1.0)
               for i in range(300)]
    assert 0.90 <= np.mean(covered) <= 0.98, np.mean(covered)


def test_cluster_bootstrap_covers_where_the_plain_one_does_not():
    """20 groups of 5 values sharing a group effect (sd 1, noise sd 0.5): resampling groups keeps the coverage
    (>= 0.88 over 200 intervals, seed 2); resampling values as if independent falls far short (<= 0.75)."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(20), 5)
    grouped, plain = [], []
    for i in range(200):
        values = rng.normal(0.0, 1.0, size=20)[groups] + rng.normal(0.0, 0.5, size=100)
        grouped.append(stats.bootstrap(values, groups=groups, n_resamples=400, seed=i).contains(0.0))
        plain.append(stats.bootstrap(values, n_resamples=400, seed=i).contains(0.0))
    assert np.mean(grouped) >= 0.88 and np.mean(plain) <= 0.75, (np.mean(grouped), np.mean(plain))


def test_groups_may_be_strings_of_unequal_size():
    values = np.array([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    interval = stats.bootstrap(values, groups=["a", "a", "b", "b", "b", "c"])
    assert interval.n == 3 and interval.estimate == 0.5 and 0.0 <= interval.low <= interval.high <= 1.0


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"values": [1.0, float("nan")]}, ValueError, "values"),
        ({"values": np.ones((3, 2))}, ValueError, "values"),
        ({"values": ["a", "b"]}, TypeError, "values"),
        ({"values": [1.0]}, ValueError, "values"),
        ({"statistic": "mean"}, TypeError, "statistic"),
        ({"statistic": lambda v: v}, ValueError, "statistic"),
        ({"groups": [0, 1]}, ValueError, "groups"),
        ({"groups": [0, 0, 0]}, ValueError, "groups"),
        ({"n_resamples": 0}, ValueError, "n_resamples"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"level": 95}, ValueError, "level"),
    ],
)
def test_bootstrap_bad_inputs(kwargs, error, name):
    kwargs = {"values": [0.1, 0.5, 0.9], **kwargs}
    with pytest.raises(error, match=rf"^{name}\b"):
        stats.bootstrap(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Paired differences
# ----------------------------------------------------------------------------------------------------------------
def test_paired_difference_is_the_bootstrap_of_the_differences():
    rng = np.random.default_rng(3)
    common = rng.normal(size=80)  # each query's difficulty, shared by both methods
    a, b = common + 0.3 + rng.normal(0, 0.3, 80), common + rng.normal(0, 0.3, 80)
    paired = stats.paired_difference(a, b)
    direct = stats.bootstrap(a - b)
    assert (paired.low, paired.high) == (direct.low, direct.high) and paired.method == "paired bootstrap"
    assert math.isclose(paired.estimate, a.mean() - b.mean()) and paired.above(0.0)
    # pairing removes the shared difficulty: far narrower than the two separate intervals combined
    assert paired.width < 0.5 * (stats.bootstrap(a).width + stats.bootstrap(b).width)
    shifted = stats.paired_difference(b + 0.5, b)
    assert math.isclose(shifted.low, 0.5) and math.isclose(shifted.high, 0.5)


def test_paired_difference_accepts_hits_and_groups():
    a = np.array([True, True, False, True, True, False])
    b = np.array([True, False, False, False, True, False])
    interval = stats.paired_difference(a, b, groups=[0, 0, 1, 1, 2, 2])
    assert interval.n == 3 and math.isclose(interval.estimate, 2 / 6)


def test_paired_difference_bad_inputs():
    with pytest.raises(ValueError, match=r"^b\b"):
        stats.paired_difference([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match=r"^a\b"):
        stats.paired_difference("ab", [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^groups\b"):
        stats.paired_difference([1.0, 2.0], [1.0, 2.0], groups=[0])


# ----------------------------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------------------------
def test_over_seeds_closed_form():
    summary = stats.over_seeds([1.0, 2.0, 3.0])
    assert (summary.mean, summary.std, summary.min, summary.max, summary.n) == (2.0, 1.0, 1.0, 3.0, 3)
    t = 4.302652729911275  # Student's t, 2 degrees of freedom, 0.975 quantile (tables: 4.303)
    assert math.isclose(summary.interval.low, 2 - t / math.sqrt(3))
    assert math.isclose(summary.interval.high, 2 + t / math.sqrt(3))
    assert summary.interval.method == "t" and summary.interval.n == 3
    assert str(summary) == "2.00 ± 1.00 (n=3)" and f"{summary:.1f}" == "2.0 ± 1.0 (n=3)"
    assert type(summary.mean) is float and type(summary.n) is int


def test_over_seeds_coverage_by_simulation():
    """Three seeds of a normal result: the t interval covers the mean 0.95 +- 0.015 of the time (4000 runs, seed 4)."""
    rng = np.random.default_rng(4)
    covered = [stats.over_seeds(rng.normal(0.5, 0.1, size=3)).interval.contains(0.5) for _ in range(4000)]
    assert abs(np.mean(covered) - 0.95) < 0.015, np.mean(covered)


@pytest.mark.parametrize(
    "values, kwargs, error, name",
    [
        ([0.5], {}, ValueError, "values"),
        ([], {}, ValueError, "values"),
        ([0.5, float("inf")], {}, ValueError, "values"),
        (0.5, {}, TypeError, "values"),
        ([0.5, 0.6], {"level": -0.1}, ValueError, "level"),
    ],
)
def test_over_seeds_bad_inputs(values, kwargs, error, name):
    with pytest.raises(error, match=rf"^{name}\b"):
        stats.over_seeds(values, **kwargs)
