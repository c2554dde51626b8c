"""Task vectors as estimators: the pure tensor functions of Chapter 11 (no model runs here).

The spread of task vectors over demonstration sets and its ``a + b / k`` fit (the closed form's ``lambda_hat(S)``
has ``V(k) ~ 1/k``, :func:`ridge_spread`), means over groups of sets, interpolation between two tasks' vectors and
where the answers switch, and the mean difference that an additive intervention adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from icllib._checks import as_float_tensor, check_choice, check_float, check_generator, check_int, check_pairs
from icllib.bridge import lambda_hat
from icllib.lang_tasks import Scorer, Task, as_scorer

__all__ = ["set_spread", "InverseKFit", "fit_inverse_k", "ridge_spread", "group_means", "interpolate",
           "mean_difference", "AnswerShares", "answer_shares", "Switch", "switch_point"]

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


def answer_shares(
    predictions: Sequence[str], pairs_a: Sequence[tuple[str, str]], pairs_b: Sequence[tuple[str, str]],
    scorer_a: Scorer | Task | None = None, scorer_b: Scorer | Task | None = None,
) -> AnswerShares:
    """Classify each prediction for the query ``x_i`` as task A's answer, task B's answer or neither.

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
    return _shares(predictions, pairs_a, pairs_b, as_scorer(scorer_a, "scorer_a"), as_scorer(scorer_b, "scorer_b"))


def _shares(predictions, pairs_a, pairs_b, scorer_a: Scorer, scorer_b: Scorer) -> AnswerShares:
    n_a = n_b = 0
    for (x, y_a), (_, y_b), p in zip(pairs_a, pairs_b, predictions):
        is_a, is_b = bool(scorer_a(p, x, y_a)), bool(scorer_b(p, x, y_b))
        if is_a and is_b:
            raise ValueError(f"prediction {p!r} for query {x!r} is an answer of both tasks; use queries whose "
                             "answers differ")
        n_a += is_a
        n_b += is_b
    n = len(predictions)
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
