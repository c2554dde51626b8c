"""Task vectors as estimators (Chapter 11): how ``theta(S)`` depends on the demonstrations, and how it can be edited.

In Part III's closed form the task vector is the ridge estimate ``lambda_hat(S) = (Z Z^T + m tau I_m)^{-1} Z y``
(Chapter 9, Eq. ch09-factor), a statistical estimator whose spread over demonstration sets shrinks like ``1/k``
with the number ``k`` of demonstrations. This module asks the same questions of the vector ``theta_l(S)`` that
:mod:`icllib.task_vectors` extracts from a language model:

- **spread over sets** (:func:`set_spread`, :func:`fit_inverse_k`): ``V(k) = E ||theta(S) - E theta(S)||^2`` and its
  fit by ``a + b / k``; :func:`ridge_spread` gives the same curve for ``lambda_hat`` of a Part I dictionary;
- **the demonstration-count sweep** (:func:`demo_count_sweep`): ICL and task-vector accuracy and ``theta_L(S)`` for
  every ``k`` on held-out queries (:func:`split_pairs`);
- **averaging** (:func:`group_means`, :func:`averaged_accuracy`): ``theta_bar_j``, the mean of ``theta`` over ``j``
  sets, patched like a single-set vector;
- **interpolation** (:func:`interpolate`, :func:`answer_shares`, :func:`switch_point`):
  ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B`` and whose answer the patched model gives;
- **replacement against addition** (:func:`mean_difference`, :func:`replace_vs_add`): Hendel et al.'s replacement
  ``h_l[-1] := theta_l(S)`` against the residual-stream analogue of Todd et al.'s function vector,
  ``h_l[-1] += beta * Delta_l`` with ``Delta_l = mean_S theta_l(S) - mean_x h_l([x])[-1]``.

Everything that runs the model goes through the public functions of :mod:`icllib.task_vectors` and
:mod:`icllib.lang_tasks`; the rest are pure tensor functions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from icllib._checks import (as_float_tensor, check_choice, check_float, check_generator, check_int,
                            check_pairs)

__all__ = [
    "set_spread",
    "InverseKFit",
    "fit_inverse_k",
    "ridge_spread",
    "group_means",
    "interpolate",
    "mean_difference",
    "AnswerShares",
    "answer_shares",
    "Switch",
    "switch_point",
    "split_pairs",
    "patch_grid",
    "DemoSweep",
    "demo_count_sweep",
    "averaged_accuracy",
    "ReplaceAdd",
    "replace_vs_add",
]

_METRICS = ("sqdist", "cosine")


# ----------------------------------------------------------------------------------------------------------------
# Pure tensor functions
# ----------------------------------------------------------------------------------------------------------------
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
    from icllib.bridge import lambda_hat

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
    predictions: Sequence[str], queries: Sequence[str], answer_a: Callable[[str, str], bool],
    answer_b: Callable[[str, str], bool],
) -> AnswerShares:
    """Classify each prediction for ``queries[i]`` as A's answer, B's answer or neither.

    ``answer_a(x, prediction)`` says whether ``prediction`` is task A's answer to ``x`` (e.g. ``task.score``
    with arguments swapped); likewise ``answer_b``. A prediction that both accept would be ambiguous and raises
    ``ValueError``: choose queries whose two answers differ.
    """
    if isinstance(predictions, str) or isinstance(queries, str):
        raise TypeError("predictions and queries must be sequences of strings, not a string")
    if len(predictions) != len(queries) or not predictions:
        raise ValueError(f"predictions ({len(predictions)}) and queries ({len(queries)}) must be non-empty "
                         "and of the same length")
    if not (callable(answer_a) and callable(answer_b)):
        raise TypeError("answer_a and answer_b must be callables (x, prediction) -> bool")
    n_a = n_b = 0
    for x, p in zip(queries, predictions):
        is_a, is_b = bool(answer_a(x, p)), bool(answer_b(x, p))
        if is_a and is_b:
            raise ValueError(f"prediction {p!r} for query {x!r} is an answer of both tasks; use queries whose "
                             "answers differ")
        n_a += is_a
        n_b += is_b
    n = len(queries)
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


# ----------------------------------------------------------------------------------------------------------------
# Experiments on a language model (through icllib.task_vectors)
# ----------------------------------------------------------------------------------------------------------------
def split_pairs(
    pairs: Sequence[tuple[str, str]], query_fraction: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Split a task's pairs into a demonstration pool and held-out query pairs, by input.

    An input ``x`` is held out when a seeded hash of ``x`` falls below ``query_fraction``, so two tasks that share
    inputs (``present_past`` and ``present_gerund``) hold out the same ones. Held-out queries never appear in a
    demonstration set or as a dummy query, so a vector averaged over many sets cannot carry a test query's own
    answer. Returns ``(demo_pool, query_pool)``, both in the input's order, both non-empty.
    """
    pairs = check_pairs("pairs", pairs)
    query_fraction = check_float("query_fraction", query_fraction, minimum=0.0, maximum=1.0, strict=True)
    seed = check_int("seed", seed, minimum=0)
    held = [_unit_hash(seed, x) < query_fraction for x, _ in pairs]
    demo_pool = [p for p, h in zip(pairs, held) if not h]
    query_pool = [p for p, h in zip(pairs, held) if h]
    if not demo_pool or not query_pool:
        raise ValueError(f"query_fraction={query_fraction} leaves an empty pool for {len(pairs)} pairs "
                         f"({len(demo_pool)} demonstration, {len(query_pool)} query pairs); change it or the seed")
    return demo_pool, query_pool


def _unit_hash(seed: int, text: str) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``text`` (the same on every machine and Python run)."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def patch_grid(
    model, tokenizer, vectors, queries: Sequence[str], layer: int, fmt="example", mode: str = "replace",
) -> list[list[str]]:
    """Decoded greedy predictions of every bare query ``[x]`` with every vector patched after block ``layer``.

    ``vectors`` (V, d); returns ``out[v][q]``, the prediction for ``queries[q]`` with ``h_layer[-1]`` replaced by
    (``mode="replace"``) or increased by (``mode="add"``) ``vectors[v]``. All V x Q rows go through
    :func:`icllib.task_vectors.patched_predictions` at once.
    """
    from icllib import task_vectors as tv

    vectors = as_float_tensor("vectors", vectors, ndim=2)
    if isinstance(queries, str) or not queries or not all(isinstance(q, str) for q in queries):
        raise TypeError("queries must be a non-empty sequence of strings")
    check_choice("mode", mode, ("replace", "add"))
    n_v, n_q = vectors.shape[0], len(queries)
    prompts = [tv.format_prompt([], x, fmt) for x in queries] * n_v
    theta = vectors.float().repeat_interleave(n_q, dim=0)
    ids = tv.patched_predictions(model, tokenizer, prompts, theta, [layer], fmt, mode=mode)[:, 0]
    words = [tokenizer.decode([int(i)]) for i in ids.tolist()]
    return [words[v * n_q:(v + 1) * n_q] for v in range(n_v)]


@dataclass
class DemoSweep:
    """Results of :func:`demo_count_sweep` for one task, one entry per demonstration count ``k``.

    ``theta[k]`` (n_sets, d) float32: ``theta_L(S)`` at the patched block ``layer``; ``spread_by_layer[k]`` (L,):
    the ``sqdist`` :func:`set_spread` of ``theta_l(S)`` at every block; ``dummy_spread_by_layer[k]`` (L,): the part
    of it that comes from the dummy queries, ``E_S Var(mean_{x'} h_l([S, x'])[-1] | S)`` (estimated within each set,
    unbiased); ``icl[k]`` and ``tv[k]``: accuracy of ``[S, x]`` (one held-out query per set) and of ``[x]`` with
    ``theta_L(S)`` patched in (``n_queries`` held-out queries per set). ``theta_all`` (n_sets, L, d): the vectors
    at every block for ``k = all_layers_at`` (None if not asked for).
    """

    n_demos: list[int]
    layer: int
    theta: dict[int, np.ndarray] = field(default_factory=dict)
    spread_by_layer: dict[int, np.ndarray] = field(default_factory=dict)
    dummy_spread_by_layer: dict[int, np.ndarray] = field(default_factory=dict)
    icl: dict[int, float] = field(default_factory=dict)
    tv: dict[int, float] = field(default_factory=dict)
    all_layers_at: int | None = None
    theta_all: np.ndarray | None = None

    @property
    def spread(self) -> np.ndarray:
        """``V(k)`` at the patched block, in the order of ``n_demos``."""
        return np.array([self.spread_by_layer[k][self.layer] for k in self.n_demos])

    @property
    def dummy_spread(self) -> np.ndarray:
        """The dummies' part of ``V(k)`` at the patched block, in the order of ``n_demos``."""
        return np.array([self.dummy_spread_by_layer[k][self.layer] for k in self.n_demos])


def demo_count_sweep(
    model, tokenizer, demo_pool: Sequence[tuple[str, str]], query_pool: Sequence[tuple[str, str]],
    n_demos: Sequence[int], layer: int, n_sets: int, n_queries: int = 2, seed: int = 0,
    scorer: Callable[[str, str, str], bool] | None = None, fmt="example",
    n_dummies: int = 2, all_layers_at: int | None = None, progress: bool = False,
) -> DemoSweep:
    """ICL and task-vector accuracy, and ``theta_L(S)``, as the number of demonstrations ``k`` grows.

    For each ``k``: ``n_sets`` sets of ``k`` demonstrations from ``demo_pool``, each with ``n_dummies`` dummy
    queries from the rest of the pool; ``theta_l(S) = mean_{x'} h_l([S, x'])[-1]`` (Chapter 5's Eq. ch05-theta),
    from the states of each dummy prompt (:func:`icllib.task_vectors.extract_task_vectors` with one dummy per
    call row, so that the dummies' share of the spread can be measured). Each set gets ``n_queries`` queries
    from ``query_pool``: ``[S, x]`` is run for the first (ICL), and ``theta_layer(S)`` is patched into ``[x]`` for
    all of them (TV). ``scorer(x, y, prediction)`` defaults to exact match. Seeded by ``seed``.
    """
    from icllib import lang_tasks
    from icllib import task_vectors as tv
    from icllib.llm import n_layers

    demo_pool = check_pairs("demo_pool", demo_pool)
    query_pool = check_pairs("query_pool", query_pool)
    n_dummies = check_int("n_dummies", n_dummies, minimum=2)
    ks = _check_counts("n_demos", n_demos, maximum=len(demo_pool) - n_dummies)
    n_sets = check_int("n_sets", n_sets, minimum=2)
    n_queries = check_int("n_queries", n_queries, minimum=1, maximum=len(query_pool))
    seed = check_int("seed", seed, minimum=0)
    layer = check_int("layer", layer, minimum=0, maximum=n_layers(model) - 1)
    if all_layers_at is not None and all_layers_at not in ks:
        raise ValueError(f"all_layers_at must be None or one of n_demos={ks}, got {all_layers_at!r}")
    scorer = scorer or tv.exact_match
    if not callable(scorer):
        raise TypeError(f"scorer must be a callable (x, y, prediction) -> bool, got {type(scorer).__name__}")
    rng = np.random.default_rng(seed)
    out = DemoSweep(n_demos=ks, layer=layer, all_layers_at=all_layers_at)
    for k in tqdm(ks, desc="demonstration counts", disable=not progress, leave=False):
        # k demonstrations and n_dummies dummies, all distinct, from the demonstration pool only
        drawn = [lang_tasks.sample_dummy_queries(demo_pool, [], k + n_dummies, rng) for _ in range(n_sets)]
        sets, dummies = [d[:k] for d in drawn], [[x for x, _ in d[k:]] for d in drawn]
        queries = [[query_pool[i] for i in rng.choice(len(query_pool), size=n_queries, replace=False)]
                   for _ in sets]
        # one row per (set, dummy): h_l([S_i, x'_ij])[-1], (n_sets * n_dummies, L, d), dummy-major
        states = tv.extract_task_vectors(model, tokenizer, [s for _ in range(n_dummies) for s in sets],
                                         [[d[j]] for j in range(n_dummies) for d in dummies], fmt)
        states = states.double().view(n_dummies, n_sets, *states.shape[1:])
        theta = states.mean(0)  # (n_sets, L, d)
        icl_ids = tv.predict(model, tokenizer, [tv.format_prompt(s, q[0][0], fmt) for s, q in zip(sets, queries)],
                             fmt)
        icl = [scorer(q[0][0], q[0][1], tokenizer.decode([int(i)])) for q, i in zip(queries, icl_ids.tolist())]
        flat = [pair for q in queries for pair in q]
        tv_ids = tv.patched_predictions(model, tokenizer, [tv.format_prompt([], x, fmt) for x, _ in flat],
                                        theta[:, layer].float().repeat_interleave(n_queries, 0), [layer], fmt)[:, 0]
        hits = [scorer(x, y, tokenizer.decode([int(i)])) for (x, y), i in zip(flat, tv_ids.tolist())]
        out.theta[k] = theta[:, layer].float().numpy()
        out.spread_by_layer[k] = set_spread(theta).numpy()
        # Var of a mean of n_dummies draws = (within-set variance of one dummy state) / n_dummies
        within = ((states - theta) ** 2).sum(-1).sum(0) / (n_dummies - 1)  # (n_sets, L)
        out.dummy_spread_by_layer[k] = (within.mean(0) / n_dummies).numpy()
        out.icl[k], out.tv[k] = float(np.mean(icl)), float(np.mean(hits))
        if k == all_layers_at:
            out.theta_all = theta.float().numpy()
    return out


def averaged_accuracy(
    model, tokenizer, theta, query_pool: Sequence[tuple[str, str]], layer: int, group_sizes: Sequence[int],
    rows: int = 32, seed: int = 0, scorer: Callable[[str, str, str], bool] | None = None, fmt="example",
) -> dict[int, float]:
    """Task-vector accuracy of ``theta_bar_j`` (:func:`group_means`) for every group size ``j``.

    ``theta`` (n_sets, d) at block ``layer``; for each ``j`` the ``n_sets // j`` disjoint group means are each
    patched into about ``rows / (n_sets // j)`` (at least 2) queries drawn from ``query_pool``, so that every ``j``
    is scored on a similar number of predictions. Returns ``{j: accuracy}``.
    """
    theta = as_float_tensor("theta", theta, ndim=2)
    query_pool = check_pairs("query_pool", query_pool)
    sizes = _check_counts("group_sizes", group_sizes, maximum=theta.shape[0])
    rows = check_int("rows", rows, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    from icllib import task_vectors as tv

    scorer = scorer or tv.exact_match
    if not callable(scorer):
        raise TypeError(f"scorer must be a callable (x, y, prediction) -> bool, got {type(scorer).__name__}")
    rng = np.random.default_rng(seed)
    out = {}
    for j in sizes:
        means = group_means(theta, j)
        n_q = min(len(query_pool), max(2, -(-rows // means.shape[0])))
        queries = [query_pool[i] for i in rng.choice(len(query_pool), size=n_q, replace=False)]
        predictions = patch_grid(model, tokenizer, means, [x for x, _ in queries], layer, fmt)
        out[j] = float(np.mean([scorer(x, y, p) for row in predictions for (x, y), p in zip(queries, row)]))
    return out


@dataclass
class ReplaceAdd:
    """Layer curves of the two interventions on the bare query ``[x]`` (accuracy per block, (L,) each).

    ``replace_set``: ``h_l[-1] := theta_l(S)`` with each query's own set (Hendel et al.); ``replace_mean``:
    ``h_l[-1] := mean_S theta_l(S)``; ``add[beta]``: ``h_l[-1] += beta * Delta_l`` (:func:`mean_difference`).
    ``delta_norm``: ``||Delta_l||``; ``state_norm``: the mean ``||h_l([x])[-1]||`` of the bare queries.
    """

    replace_set: np.ndarray
    replace_mean: np.ndarray
    add: dict[float, np.ndarray]
    delta_norm: np.ndarray
    state_norm: np.ndarray


def replace_vs_add(
    model, tokenizer, theta, bare_states, queries: Sequence[tuple[str, str]], scales: Sequence[float] = (1.0,),
    scorer: Callable[[str, str, str], bool] | None = None, fmt="example",
) -> ReplaceAdd:
    """Patch every block of the bare query by replacement and by addition (see :class:`ReplaceAdd`).

    ``theta`` (n_sets, L, d): task vectors of ``n_sets`` demonstration sets at every block; ``queries`` holds one
    held-out ``(x, y)`` per set (query ``i`` gets set ``i``'s vector for ``replace_set``); ``bare_states``
    (n_x, L, d): ``h_l([x'])[-1]`` of bare prompts of other inputs of the task, for ``Delta_l``.
    """
    from icllib import task_vectors as tv

    theta = as_float_tensor("theta", theta, ndim=3)
    bare_states = as_float_tensor("bare_states", bare_states, ndim=3)
    queries = check_pairs("queries", queries)
    if len(queries) != theta.shape[0]:
        raise ValueError(f"queries must hold one pair per set ({theta.shape[0]}), got {len(queries)}")
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise TypeError(f"scales must be a non-empty sequence of real numbers, got {scales!r}")
    scales = [check_float("scales[i]", s) for s in scales]
    scorer = scorer or tv.exact_match
    if not callable(scorer):
        raise TypeError(f"scorer must be a callable (x, y, prediction) -> bool, got {type(scorer).__name__}")
    delta = mean_difference(theta, bare_states).float()  # (L, d)
    prompts = [tv.format_prompt([], x, fmt) for x, _ in queries]
    n = len(prompts)

    def curve(vectors: torch.Tensor, mode: str) -> np.ndarray:
        ids = tv.patched_predictions(model, tokenizer, prompts, vectors.float(), None, fmt, mode=mode)  # (n, L)
        hits = [[scorer(x, y, tokenizer.decode([int(i)])) for i in row] for (x, y), row in zip(queries, ids.tolist())]
        return np.asarray(hits, dtype=float).mean(0)

    return ReplaceAdd(
        replace_set=curve(theta, "replace"),
        replace_mean=curve(theta.mean(0, keepdim=True).expand(n, -1, -1), "replace"),
        add={s: curve((s * delta)[None].expand(n, -1, -1), "add") for s in scales},
        delta_norm=delta.double().norm(dim=-1).numpy(),
        state_norm=bare_states.double().norm(dim=-1).mean(0).numpy(),
    )
