"""Uncertainty for every number the book reports: one interval type and the few ways of computing it.

- :func:`wilson`, :func:`accuracy`: the Wilson score interval of a proportion (independent trials or queries).
- :func:`bootstrap`: the percentile bootstrap of any statistic; with ``groups`` it resamples whole groups (a cluster
  bootstrap), as a task-vector accuracy needs when several queries share one demonstration set.
- :func:`paired_difference`: the bootstrap interval of mean(a) - mean(b) for paired scores (task vector and ICL on
  the same queries).
- :func:`over_seeds`: mean, spread and Student's t interval of a result repeated over training seeds.

Arrays in, plain Python floats out, in an :class:`Interval` (or a :class:`SeedSummary`). Claims are checked on
intervals: ``tv.above(baseline)`` holds when the task vector's lower bound is above the baseline's upper bound. Two
non-overlapping 95% intervals are a conservative test; :func:`paired_difference` is sharper for paired scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats as _scipy_stats

from icllib._checks import check_float, check_int

__all__ = ["Interval", "SeedSummary", "wilson", "accuracy", "bootstrap", "paired_difference", "over_seeds"]


def _check_level(level) -> float:
    level = check_float("level", level, minimum=0.0, strict=True)
    if level >= 1.0:
        raise ValueError(f"level must be < 1 (a coverage such as 0.95), got {level}")
    return level


def _format(value: float, spec: str) -> str:
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a format string such as '.2f', got {spec!r}")
    try:
        return format(value, spec)
    except ValueError as err:
        raise ValueError(f"spec must be a float format such as '.2f' or '.1%', got {spec!r}") from err


class _Formatted:
    """``str(x)`` is ``x.format()`` and ``f"{x:.3f}"`` is ``x.format(".3f")``."""

    def __str__(self) -> str:
        return self.format()

    def __format__(self, spec: str) -> str:
        return self.format(spec) if spec else self.format()


@dataclass(frozen=True)
class Interval(_Formatted):
    """A point estimate with a confidence interval ``[low, high]`` at coverage ``level``.

    ``n`` is the number of independent units behind it (trials, values, groups or seeds) and ``method`` how it was
    computed (``"wilson"``, ``"bootstrap"``, ``"cluster bootstrap"``, ``"paired bootstrap"``, ``"t"``). The estimate
    normally lies inside; a percentile bootstrap of a biased statistic may place it outside.
    ``str(interval)`` is ``"0.78 [0.71, 0.84]"``; ``interval.format(".1%")`` or ``f"{interval:.3f}"`` choose the format.
    """

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n: int | None = None
    method: str = ""

    def __post_init__(self) -> None:
        for name in ("estimate", "low", "high"):
            object.__setattr__(self, name, check_float(name, getattr(self, name)))
        if self.low > self.high:
            raise ValueError(f"low must be <= high, got low={self.low}, high={self.high}")
        object.__setattr__(self, "level", _check_level(self.level))
        if self.n is not None:
            object.__setattr__(self, "n", check_int("n", self.n, minimum=1))
        if not isinstance(self.method, str):
            raise TypeError(f"method must be a string, got {self.method!r}")

    @property
    def width(self) -> float:
        """``high - low``."""
        return self.high - self.low

    def format(self, spec: str = ".2f") -> str:
        """``"estimate [low, high]"`` with each number formatted by ``spec`` (``".2f"``, ``".1%"``, ...)."""
        return f"{_format(self.estimate, spec)} [{_format(self.low, spec)}, {_format(self.high, spec)}]"

    def contains(self, x) -> bool:
        """``low <= x <= high``."""
        x = check_float("x", x)
        return self.low <= x <= self.high

    def above(self, other: Interval | float) -> bool:
        """Whether this interval lies entirely above ``other``: ``low > other.high`` (or ``low > other``)."""
        return self.low > _bounds(other)[1]

    def below(self, other: Interval | float) -> bool:
        """Whether this interval lies entirely below ``other``: ``high < other.low`` (or ``high < other``)."""
        return self.high < _bounds(other)[0]

    def overlaps(self, other: Interval | float) -> bool:
        """Whether the two intervals share a point (for a number: whether this interval contains it)."""
        low, high = _bounds(other)
        return self.low <= high and low <= self.high


def _bounds(other) -> tuple[float, float]:
    if isinstance(other, Interval):
        return other.low, other.high
    value = check_float("other", other)
    return value, value


@dataclass(frozen=True)
class SeedSummary(_Formatted):
    """A result over ``n`` seeds: ``mean``, sample ``std`` (ddof 1), ``min``, ``max`` and the ``interval`` of the
    mean (Student's t). ``str(summary)`` is ``"0.12 ± 0.03 (n=3)"`` (mean ± std); ``format(spec)`` chooses digits."""

    mean: float
    std: float
    min: float
    max: float
    n: int
    interval: Interval

    def format(self, spec: str = ".2f") -> str:
        """``"mean ± std (n=N)"`` with both numbers formatted by ``spec``."""
        return f"{_format(self.mean, spec)} ± {_format(self.std, spec)} (n={self.n})"


def _as_1d(name: str, values, booleans: bool = False) -> np.ndarray:
    """A non-empty 1-D array: booleans as they are, or numbers (bool, int, float) as finite float64."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    kind = "booleans (True for a hit)" if booleans else "real numbers"
    if isinstance(values, (str, bytes)) or not isinstance(values, (np.ndarray, Sequence)):
        raise TypeError(f"{name} must be a 1-D array or sequence of {kind}, got {type(values).__name__}")
    try:
        array = np.asarray(values)
    except ValueError as err:  # a ragged nested sequence
        raise ValueError(f"{name} must be a flat sequence of {kind}") from err
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if array.dtype.kind not in ("b" if booleans else "biuf"):
        raise TypeError(f"{name} must hold {kind}, got dtype {array.dtype}")
    if booleans:
        return array
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def wilson(successes: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval of a proportion p from ``successes`` out of ``n`` independent trials.

    With p̂ = k/n and z the (1 + level)/2 normal quantile, the bounds are
    (p̂ + z²/2n ± z sqrt(p̂(1 - p̂)/n + z²/4n²)) / (1 + z²/n): never outside [0, 1], and not empty at k = 0 or n.
    """
    n = check_int("n", n, minimum=1)
    successes = check_int("successes", successes, minimum=0, maximum=n)
    level = _check_level(level)
    z = float(_scipy_stats.norm.ppf(0.5 + level / 2))
    p, z2 = successes / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, center - half)  # exact 0 and 1 at the ends, not 1 - 1e-16
    high = 1.0 if successes == n else min(1.0, center + half)
    return Interval(p, low, high, level, n, "wilson")


def accuracy(hits, level: float = 0.95) -> Interval:
    """Accuracy of a sequence (or array) of booleans, with its Wilson interval (queries taken as independent;
    use :func:`bootstrap` with ``groups`` when queries share a demonstration set)."""
    hits = _as_1d("hits", hits, booleans=True)
    return wilson(int(hits.sum()), int(hits.size), level)


def _check_resampling(name: str, values: np.ndarray, groups, n_resamples, seed) -> tuple:
    """``(group index of each value or None, number of groups, n_resamples, seed)``; None: each value its own group."""
    n_resamples = check_int("n_resamples", n_resamples, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if groups is None:
        if values.size < 2:
            raise ValueError(f"{name} must hold at least 2 values to resample, got 1")
        return None, values.size, n_resamples, seed
    labels = np.asarray(groups)
    if labels.shape != values.shape:
        raise ValueError(f"groups must hold one label per value ({values.size}), got shape {labels.shape}")
    try:
        _, inverse = np.unique(labels, return_inverse=True)
    except TypeError as err:
        raise TypeError("groups must hold comparable labels (integers or strings)") from err
    n_groups = int(inverse.max()) + 1
    if n_groups < 2:
        raise ValueError("groups must hold at least 2 distinct labels to resample, got 1")
    return inverse.reshape(-1), n_groups, n_resamples, seed


def _bootstrap(values, statistic, inverse, n_groups, n_resamples, level, seed) -> tuple[float, float]:
    """Percentile bounds of ``statistic`` over resamples of ``n_groups`` whole groups drawn with replacement."""
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_resamples, n_groups))
    if inverse is None:
        samples = (values[row] for row in draws)
    else:
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(inverse, minlength=n_groups))[:-1])
        samples = (values[np.concatenate([members[g] for g in row])] for row in draws)
    replicates = np.array([float(statistic(sample)) for sample in samples])
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap(values, statistic: Callable = np.mean, groups=None, n_resamples: int = 2000, level: float = 0.95,
              seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``statistic(values)``.

    Each of ``n_resamples`` resamples draws the values (or, with ``groups``, one label per value, whole groups)
    with replacement; the bounds are the (1 - level)/2 and (1 + level)/2 quantiles of the statistic over them.
    Resampling groups is the cluster bootstrap a task-vector accuracy needs when several queries share one
    demonstration set. ``statistic`` maps a 1-D float array to one number. Deterministic for a given ``seed``.
    """
    values = _as_1d("values", values)
    if not callable(statistic):
        raise TypeError(f"statistic must be a function of a 1-D array, got {statistic!r}")
    level = _check_level(level)
    inverse, n_groups, n_resamples, seed = _check_resampling("values", values, groups, n_resamples, seed)
    estimate = statistic(values)
    if np.ndim(estimate) != 0:
        raise ValueError(f"statistic must return one number, got shape {np.shape(estimate)}")
    try:
        estimate = float(estimate)
    except (TypeError, ValueError) as err:
        raise TypeError(f"statistic must return a real number, got {estimate!r}") from err
    low, high = _bootstrap(values, statistic, inverse, n_groups, n_resamples, level, seed)
    method = "bootstrap" if groups is None else "cluster bootstrap"
    return Interval(estimate, low, high, level, n_groups, method)


def paired_difference(a, b, groups=None, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Bootstrap interval of mean(a) - mean(b) for paired scores (``a[i]`` and ``b[i]`` from the same query).

    Resampling pairs keeps each pair's correlation, so the interval is narrower than two separate intervals
    when the scores are positively correlated. With ``groups`` whole groups of pairs are resampled.
    """
    a, b = _as_1d("a", a), _as_1d("b", b)
    if b.shape != a.shape:
        raise ValueError(f"b must have the shape of a {a.shape} (paired scores), got {b.shape}")
    level = _check_level(level)
    differences = a - b
    inverse, n_groups, n_resamples, seed = _check_resampling("a", differences, groups, n_resamples, seed)
    low, high = _bootstrap(differences, np.mean, inverse, n_groups, n_resamples, level, seed)
    return Interval(float(differences.mean()), low, high, level, n_groups, "paired bootstrap")


def over_seeds(values, level: float = 0.95) -> SeedSummary:
    """Mean, spread and Student's t interval (mean ± t_{n-1} s/sqrt(n)) of one result over ``n >= 2`` seeds."""
    values = _as_1d("values", values)
    if values.size < 2:
        raise ValueError(f"values must hold at least 2 seeds for a spread, got {values.size}")
    level = _check_level(level)
    n, mean, std = int(values.size), float(values.mean()), float(values.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, df=n - 1)) * std / math.sqrt(n)
    interval = Interval(mean, mean - half, mean + half, level, n, "t")
    return SeedSummary(mean, std, float(values.min()), float(values.max()), n, interval)
