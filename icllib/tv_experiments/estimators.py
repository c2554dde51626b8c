"""Task vectors as estimators: the pure tensor functions of Chapter 11 (no model runs here).

The spread of task vectors over demonstration sets, its ``a + b / k`` fit and the bootstrap interval of its rate
(the closed form's ``lambda_hat(S)`` has ``V(k) ~ 1/k``, :func:`ridge_spread`), means over groups of sets,
interpolation between two tasks' vectors, whose answer each query gives and where the answers switch (with a
bootstrap interval over queries), and the mean difference that an additive intervention adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from icllib._checks import as_float_tensor, check_choice, check_float, check_generator, check_int, check_pairs
from icllib.bridge import lambda_hat
from icllib.lang_tasks import Scorer, Task, as_scorer
from icllib.stats import Interval, bootstrap

__all__ = ["set_spread", "InverseKFit", "fit_inverse_k", "spread_slope_interval", "ridge_spread", "group_means",
           "interpolate", "mean_difference", "NEITHER", "ANSWER_A", "ANSWER_B", "AnswerShares", "answer_labels",
           "answer_shares", "shares_of", "Switch", "switch_point", "switch_interval"]

_METRICS = ("sqdist", "cosine")


def set_spread(theta, metric: str = "sqdist") -> torch.Tensor:
    """The spread of task vectors over demonstration sets; ``theta`` is (n_sets, ..., d), sets first.

    ``metric="sqdist"``: the unbiased estimate of ``V = E ||theta(S) - E theta(S)||^2``,
    ``1/(n - 1) sum_i ||theta_i - theta_bar||^2`` (the trace of the covariance over sets, the quantity whose
    ridge analogue falls like ``1/k``). ``metric="cosine"``: ``mean_i (1 - cos(theta_i, theta_bar))``, which ignores
    the vectors' length. Returns a tensor of shape ``theta.shape[1:-1]`` (a scalar for (n_sets, d)).
    """
    theta = as_float_tensor("theta", theta)
    check_choice("metric", metric, _METRICS)
    if theta.ndim < 2:
        raise ValueError(f"theta must be (n_sets, ..., d) with at least 2 dimensions, got shape {tuple(theta.shape)}")
    if theta.shape[0] < 2:
        raise ValueError(f"theta must hold at least 2 sets to have a spread, got {theta.shape[0]}")
    mean = theta.mean(dim=0, keepdim=True)
    if metric == "sqdist":
        return ((theta - mean) ** 2).sum(-1).sum(0) / (theta.shape[0] - 1)
    cos = torch.nn.functional.cosine_similarity(theta, mean.expand_as(theta), dim=-1)
    return (1 - cos).mean(0)


@dataclass(frozen=True)
class InverseKFit:
    """``V(k) ~ a + b / k`` (least squares, ``a, b >= 0``) and the log-log slope of ``V`` against ``k``.

    A pure estimator rate has ``a = 0`` and slope ``-1``; ``a > 0`` is a floor that more demonstrations do not
    remove. ``r2`` is the coefficient of determination of the ``a + b / k`` fit.
    """

    a: float
    b: float
    slope: float
    r2: float

    def __call__(self, k) -> np.ndarray:
        """The fitted curve ``a + b / k``."""
        return self.a + self.b / np.asarray(k, dtype=float)

    @property
    def floor_share(self) -> float:
        """``a / (a + b)``: the share of ``V(1)`` that the fit attributes to the floor."""
        return self.a / (self.a + self.b) if self.a + self.b > 0 else 0.0


def fit_inverse_k(k, spread) -> InverseKFit:
    """Fit ``V(k) = a + b / k`` with ``a, b >= 0`` to measured spreads, and the slope of ``log V`` on ``log k``.

    ``k`` (n,) positive demonstration counts (at least 2 distinct), ``spread`` (n,) positive values.
    """
    k = np.asarray(k, dtype=float)
    v = np.asarray(spread, dtype=float)
    if k.ndim != 1 or v.shape != k.shape:
        raise ValueError(f"k and spread must be 1-d of the same length, got shapes {k.shape} and {v.shape}")
    if len(np.unique(k)) < 2:
        raise ValueError(f"k must hold at least 2 distinct values, got {k.tolist()}")
    if not np.all(np.isfinite(k)) or np.any(k <= 0):
        raise ValueError(f"k must be positive and finite, got {k.tolist()}")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"spread must be positive and finite, got {v.tolist()}")
    design = np.stack([np.ones_like(k), 1 / k], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, v, rcond=None)
    if a < 0:  # the floor cannot be negative: fall back to a pure 1/k law
        a, b = 0.0, float(v @ (1 / k) / ((1 / k) @ (1 / k)))
    elif b < 0:  # no decrease at all: a constant
        a, b = float(v.mean()), 0.0
    residual = v - (a + b / k)
    total = ((v - v.mean()) ** 2).sum()
    r2 = float(1 - (residual ** 2).sum() / total) if total > 0 else 1.0
    slope = float(np.polyfit(np.log(k), np.log(v), 1)[0])
    return InverseKFit(a=float(a), b=float(b), slope=slope, r2=r2)


def spread_slope_interval(
    n_demos: Sequence[int], theta_by_k, dummy_by_k=None, n_resamples: int = 2000, level: float = 0.95, seed: int = 0,
) -> Interval:
    """The log-log slope of the spread ``V(k)`` against ``k``, with a bootstrap interval over demonstration sets.

    ``theta_by_k[i]`` (n_sets_i, d) holds the vectors ``theta(S)`` of the sets with ``k = n_demos[i]``
    demonstrations; the sets of each ``k`` are resampled with replacement, independently, ``n_resamples`` times,
    and the slope of ``log V`` on ``log k`` (:func:`set_spread`, :func:`fit_inverse_k`) is refitted on each
    resample. With ``dummy_by_k[i]`` (n_sets_i,), each set's variance due to its dummy queries, the slope is that of
    the demonstrations' part ``V(k) - mean_S dummy(S)`` (floored at ``1e-6 V(k)``). An estimator with the closed
    form's rate has slope ``-1``. Returns an :class:`icllib.stats.Interval` (``n``: the fewest sets of any ``k``).
    """
    ks = _check_counts("n_demos", n_demos)
    if len(ks) < 2:
        raise ValueError(f"n_demos must hold at least 2 demonstration counts for a slope, got {ks}")
    thetas = _per_k("theta_by_k", theta_by_k, len(ks), ndim=2)
    dummies = None if dummy_by_k is None else _per_k("dummy_by_k", dummy_by_k, len(ks), ndim=1)
    for i, theta in enumerate(thetas):
        if theta.shape[0] < 2 or (dummies is not None and dummies[i].shape != theta.shape[:1]):
            raise ValueError(f"theta_by_k[{i}] must hold >= 2 sets and dummy_by_k[{i}] one value per set, got "
                             f"shapes {tuple(theta.shape)} and {None if dummies is None else tuple(dummies[i].shape)}")
    n_resamples = check_int("n_resamples", n_resamples, minimum=2)
    level = check_float("level", level, minimum=0.0, maximum=1.0, strict=True)
    seed = check_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    point = np.empty(len(ks))
    replicates = np.empty((n_resamples, len(ks)))
    for i, theta in enumerate(thetas):
        n = theta.shape[0]
        counts = rng.multinomial(n, np.full(n, 1 / n), size=n_resamples).astype(float)  # (R, n) draws per set
        point[i], replicates[:, i] = _resampled_spread(theta, None if dummies is None else dummies[i],
                                                       np.ones((1, n)), counts)
    if np.any(point <= 0):
        raise ValueError(f"the spread must be positive at every k to take its logarithm, got {point.tolist()}")
    log_k = np.log(np.asarray(ks, dtype=float))
    slopes = np.polyfit(log_k, np.log(np.maximum(replicates, 1e-12 * point).T), 1)[0]
    low, high = np.quantile(slopes, [(1 - level) / 2, (1 + level) / 2])
    estimate = float(np.polyfit(log_k, np.log(point), 1)[0])
    return Interval(estimate, float(low), float(high), level, min(t.shape[0] for t in thetas), "bootstrap over sets")


def _resampled_spread(theta: torch.Tensor, dummy, ones: np.ndarray, counts: np.ndarray) -> tuple[float, np.ndarray]:
    """:func:`set_spread` (minus the mean dummy part) of the full sample (``ones``) and of each resample, given as
    draw counts per set: ``V = (c . diag G - c^T G c / n) / (n - 1)`` with ``G`` the Gram matrix of the vectors."""
    gram = (theta.double() @ theta.double().T).numpy()
    n = theta.shape[0]
    out = []
    for c in (ones, counts):
        spread = (c @ np.diag(gram) - np.einsum("ri,ij,rj->r", c, gram, c) / n) / (n - 1)
        if dummy is not None:
            spread = np.maximum(spread - c @ dummy.double().numpy() / n, 1e-6 * spread)
        out.append(spread)
    return float(out[0][0]), out[1]


def _per_k(name: str, values, n: int, ndim: int) -> list[torch.Tensor]:
    if isinstance(values, (str, bytes, torch.Tensor, np.ndarray)) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of arrays, one per demonstration count, got "
                        f"{type(values).__name__}")
    if len(values) != n:
        raise ValueError(f"{name} must hold one array per demonstration count ({n}), got {len(values)}")
    return [as_float_tensor(f"{name}[{i}]", v, ndim=ndim) for i, v in enumerate(values)]


def ridge_spread(
    Z_all, lam, tau: float, noise: float, n_demos: Sequence[int], n_sets: int, generator: torch.Generator
) -> torch.Tensor:
    """Monte-Carlo spread ``V(k)`` of the closed-form task vector over demonstration sets of size ``k``.

    For each ``k`` in ``n_demos``: draw ``n_sets`` sets of ``k`` distinct tokens of the dictionary (features
    ``Z_all`` (m, K)), label them ``y_i = lambda^T z_i + noise * eps_i`` (one fixed task ``lam`` (m,)), and compute
    ``lambda_hat(S) = (Z_S Z_S^T + m tau I_m)^{-1} Z_S y`` (Chapter 9, Eq. ch09-factor;
    :func:`icllib.bridge.lambda_hat`).
    Returns :func:`set_spread` of these vectors for every ``k`` (len(n_demos),), float64. For ``k >> m``,
    ``V(k) ~ noise^2 tr(Sigma^{-1}) / k`` with ``Sigma`` the features' second moment.
    """
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2, dtype=torch.float64)
    lam = as_float_tensor("lam", lam, ndim=1, dtype=torch.float64)
    m, n_tokens = Z_all.shape
    if lam.shape[0] != m:
        raise ValueError(f"lam must have length m={m} (the rows of Z_all), got {lam.shape[0]}")
    tau = check_float("tau", tau, minimum=0.0)
    noise = check_float("noise", noise, minimum=0.0)
    n_sets = check_int("n_sets", n_sets, minimum=2)
    generator = check_generator("generator", generator)
    ks = _check_counts("n_demos", n_demos, maximum=n_tokens)
    out = torch.empty(len(ks), dtype=torch.float64)
    for j, k in enumerate(ks):
        thetas = []
        for _ in range(n_sets):
            index = torch.randperm(n_tokens, generator=generator)[:k]
            Z = Z_all[:, index]
            y = lam @ Z + noise * torch.randn(k, generator=generator, dtype=torch.float64)
            thetas.append(lambda_hat(Z, y, tau))
        out[j] = set_spread(torch.stack(thetas))
    return out


def group_means(theta, group_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``theta_bar_j = (1/j) sum_{i in G} theta(S_i)`` over disjoint groups ``G`` of ``j = group_size`` sets.

    ``theta`` is (n_sets, ..., d); the sets are split in order (or after a permutation drawn from ``generator``)
    into ``n_sets // j`` groups, leftovers dropped. Returns (n_sets // j, ..., d).
    """
    theta = as_float_tensor("theta", theta)
    if theta.ndim < 2:
        raise ValueError(f"theta must be (n_sets, ..., d), got shape {tuple(theta.shape)}")
    j = check_int("group_size", group_size, minimum=1, maximum=theta.shape[0])
    if generator is not None:
        theta = theta[torch.randperm(theta.shape[0], generator=check_generator("generator", generator))]
    n_groups = theta.shape[0] // j
    return theta[: n_groups * j].reshape(n_groups, j, *theta.shape[1:]).mean(dim=1)


def interpolate(theta_a, theta_b, alphas) -> torch.Tensor:
    """``theta(alpha) = (1 - alpha) theta_A + alpha theta_B`` for every ``alpha``.

    Returns shape ``(len(alphas), *theta_a.shape)``.

    ``alpha = 0`` is task A's vector, ``alpha = 1`` task B's; values outside [0, 1] extrapolate (allowed).
    """
    theta_a = as_float_tensor("theta_a", theta_a)
    theta_b = as_float_tensor("theta_b", theta_b)
    if theta_a.shape != theta_b.shape:
        raise ValueError(f"theta_a and theta_b must have the same shape, got {tuple(theta_a.shape)} "
                         f"and {tuple(theta_b.shape)}")
    alphas = _check_alphas(alphas)
    a = torch.as_tensor(alphas, dtype=theta_a.dtype).reshape(-1, *([1] * theta_a.ndim))
    return (1 - a) * theta_a + a * theta_b


def mean_difference(theta, bare_states) -> torch.Tensor:
    """The addition vector ``Delta_l = mean_S theta_l(S) - mean_x h_l([x])[-1]``: (..., d).

    ``theta`` (n_sets, ..., d) are task vectors (``task_vectors.extract_task_vectors``), ``bare_states``
    (n_queries, ..., d) the last-position states of bare queries ``[x]`` (``task_vectors.last_position_states``).
    Added to a bare query's state, ``h_l([x])[-1] + Delta_l`` keeps the query's own deviation from the mean bare
    state and moves its mean to the mean task vector: the residual-stream analogue of a function vector.
    """
    theta = as_float_tensor("theta", theta)
    bare_states = as_float_tensor("bare_states", bare_states)
    if theta.ndim < 2 or theta.shape[1:] != bare_states.shape[1:]:
        raise ValueError(f"theta (n_sets, ..., d) and bare_states (n_queries, ..., d) must agree after the first "
                         f"dimension, got {tuple(theta.shape)} and {tuple(bare_states.shape)}")
    return theta.mean(0) - bare_states.to(theta.dtype).mean(0)


@dataclass(frozen=True)
class AnswerShares:
    """Fractions of predictions that are task A's answer, task B's answer, or neither (they sum to 1)."""

    a: float
    b: float
    neither: float


#: Codes of :func:`answer_labels` — the prediction is neither task's answer, task A's or task B's.
NEITHER, ANSWER_A, ANSWER_B = 0, 1, 2


def answer_labels(
    predictions: Sequence[str], pairs_a: Sequence[tuple[str, str]], pairs_b: Sequence[tuple[str, str]],
    scorer_a: Scorer | Task | None = None, scorer_b: Scorer | Task | None = None,
) -> np.ndarray:
    """Classify each prediction for the query ``x_i`` as task A's answer (1), task B's (2) or neither (0): int8 (n,).

    ``pairs_a[i] = (x_i, A's answer)`` and ``pairs_b[i] = (x_i, B's answer)`` (the same inputs); ``scorer_a`` and
    ``scorer_b`` judge ``(prediction, x, y)`` (default exact match; a ``lang_tasks.Task`` scores by its own rule).
    A prediction that both accept would be ambiguous and raises ``ValueError``: choose queries whose two answers
    differ.
    """
    if isinstance(predictions, str):
        raise TypeError("predictions must be a sequence of strings, not a string")
    pairs_a, pairs_b = check_pairs("pairs_a", pairs_a), check_pairs("pairs_b", pairs_b)
    if not len(predictions) == len(pairs_a) == len(pairs_b):
        raise ValueError(f"predictions ({len(predictions)}), pairs_a ({len(pairs_a)}) and pairs_b ({len(pairs_b)}) "
                         "must have the same length")
    if [x for x, _ in pairs_a] != [x for x, _ in pairs_b]:
        raise ValueError("pairs_a and pairs_b must hold the same inputs x, in the same order")
    return _labels(predictions, pairs_a, pairs_b, as_scorer(scorer_a, "scorer_a"), as_scorer(scorer_b, "scorer_b"))


def _labels(predictions, pairs_a, pairs_b, scorer_a: Scorer, scorer_b: Scorer) -> np.ndarray:
    out = np.zeros(len(predictions), dtype=np.int8)
    for i, ((x, y_a), (_, y_b), p) in enumerate(zip(pairs_a, pairs_b, predictions)):
        is_a, is_b = bool(scorer_a(p, x, y_a)), bool(scorer_b(p, x, y_b))
        if is_a and is_b:
            raise ValueError(f"prediction {p!r} for query {x!r} is an answer of both tasks; use queries whose "
                             "answers differ")
        out[i] = ANSWER_A if is_a else ANSWER_B if is_b else NEITHER
    return out


def answer_shares(
    predictions: Sequence[str], pairs_a: Sequence[tuple[str, str]], pairs_b: Sequence[tuple[str, str]],
    scorer_a: Scorer | Task | None = None, scorer_b: Scorer | Task | None = None,
) -> AnswerShares:
    """The fractions of :func:`answer_labels` that are A's answer, B's answer or neither."""
    return shares_of(answer_labels(predictions, pairs_a, pairs_b, scorer_a, scorer_b))


def shares_of(labels) -> AnswerShares:
    """:class:`AnswerShares` of a 1-D array of :func:`answer_labels` codes."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.isin(labels, (NEITHER, ANSWER_A, ANSWER_B)).all():
        raise ValueError(f"labels must be a non-empty 1-D array of the codes 0, 1, 2, got {labels!r}")
    n = labels.size
    n_a, n_b = int((labels == ANSWER_A).sum()), int((labels == ANSWER_B).sum())
    return AnswerShares(a=n_a / n, b=n_b / n, neither=(n - n_a - n_b) / n)


@dataclass(frozen=True)
class Switch:
    """Where the answers switch from task A to task B along ``alpha``.

    ``alpha_star``: the first ``alpha`` where B's share reaches A's (linear interpolation between grid points;
    NaN if it never does). ``width``: the ``alpha`` distance over which the margin ``share_B - share_A`` goes from
    10% to 90% of its way from its value at the first to its value at the last ``alpha`` (small = sharp).
    """

    alpha_star: float
    width: float


def switch_point(alphas, share_a, share_b) -> Switch:
    """The switch point and 10-90% width of the margin ``share_B(alpha) - share_A(alpha)`` (see :class:`Switch`)."""
    alphas = np.asarray(_check_alphas(alphas), dtype=float)
    share_a = np.asarray(share_a, dtype=float)
    share_b = np.asarray(share_b, dtype=float)
    if share_a.shape != alphas.shape or share_b.shape != alphas.shape or len(alphas) < 2:
        raise ValueError(f"alphas, share_a and share_b must be 1-d of one length >= 2, got {alphas.shape}, "
                         f"{share_a.shape}, {share_b.shape}")
    if np.any(np.diff(alphas) <= 0):
        raise ValueError(f"alphas must be strictly increasing, got {alphas.tolist()}")
    margin = share_b - share_a
    alpha_star = _first_crossing(alphas, margin, 0.0)
    span = margin[-1] - margin[0]
    if span <= 0:
        return Switch(alpha_star=alpha_star, width=float("nan"))
    progress = (margin - margin[0]) / span
    width = _first_crossing(alphas, progress, 0.9) - _first_crossing(alphas, progress, 0.1)
    return Switch(alpha_star=alpha_star, width=float(width))


def switch_interval(
    alphas, labels, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[Interval, Interval]:
    """Bootstrap intervals over queries of the switch point and the 10-90% width (:func:`switch_point`).

    ``labels`` (len(alphas), n_queries): the :func:`answer_labels` codes of every query at every ``alpha``. Whole
    queries (columns) are resampled with replacement. A resample in which B's share never reaches A's, or the
    margin never rises, counts as a switch at ``alpha = max(alphas)`` and a width of ``max(alphas) - min(alphas)``:
    no switch within the range, the conservative reading. Returns ``(alpha_star, width)`` as
    :class:`icllib.stats.Interval` (percentile bootstrap, ``n`` = the number of queries).
    """
    grid = np.asarray(_check_alphas(alphas), dtype=float)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != grid.size or labels.shape[1] < 2:
        raise ValueError(f"labels must be (len(alphas)={grid.size}, n_queries >= 2), got shape {labels.shape}")
    if not np.isin(labels, (NEITHER, ANSWER_A, ANSWER_B)).all():
        raise ValueError("labels must hold the codes 0 (neither), 1 (A) and 2 (B) of answer_labels")
    is_a, is_b = (labels == ANSWER_A).astype(float), (labels == ANSWER_B).astype(float)
    fallback = (float(grid[-1]), float(grid[-1] - grid[0]))

    def measure(which: int):
        def statistic(columns: np.ndarray) -> float:
            cols = columns.astype(int)
            found = switch_point(grid, is_a[:, cols].mean(1), is_b[:, cols].mean(1))
            value = (found.alpha_star, found.width)[which]
            return fallback[which] if np.isnan(value) else value
        return statistic

    index = np.arange(labels.shape[1], dtype=float)
    return tuple(bootstrap(index, measure(which), n_resamples=n_resamples, level=level, seed=seed)
                 for which in (0, 1))


def _first_crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """The first ``x`` where ``y`` reaches ``level`` from below (linear interpolation); NaN if never."""
    if y[0] >= level:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= level:
            return float(x[i - 1] + (level - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))
    return float("nan")


def _check_alphas(alphas) -> list[float]:
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, (Sequence, np.ndarray, torch.Tensor)):
        raise TypeError(f"alphas must be a sequence of real numbers, got {type(alphas).__name__}")
    values = [check_float("alphas[i]", float(a) if isinstance(a, (np.floating, torch.Tensor)) else a)
              for a in (alphas.tolist() if isinstance(alphas, (np.ndarray, torch.Tensor)) else alphas)]
    if not values:
        raise ValueError("alphas must hold at least one value")
    return values


def _check_counts(name: str, counts, maximum: int | None = None) -> list[int]:
    if isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence) or len(counts) == 0:
        raise TypeError(f"{name} must be a non-empty sequence of positive integers, got {counts!r}")
    values = [check_int(f"{name}[i]", c, minimum=1, maximum=maximum) for c in counts]
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat, got {values}")
    return values
