"""Chapter 11's experiments on a language model, through the public functions of :mod:`icllib.task_vectors`.

The demonstration-count sweep (:func:`demo_count_sweep`, on held-out queries from :func:`split_pairs`), the
accuracy of vectors averaged over sets (:func:`averaged_accuracy`, every group size on the same queries), the
answers along an interpolation between two tasks' vectors (:func:`interpolation_labels`, via :func:`patch_grid`)
and replacement against addition at every block (:func:`replace_vs_add`). Each returns per-query hits (or answer
codes), the material of the intervals in :mod:`icllib.stats`. Every scorer has the signature
``(prediction, x, y)``; a ``lang_tasks.Task`` is accepted wherever a scorer is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from icllib._checks import as_float_tensor, check_choice, check_float, check_int, check_pairs
from icllib.lang_tasks import Scorer, Task, as_scorer, hits, sample_dummy_queries
from icllib.llm import n_layers
from icllib.task_vectors import check_format, extract_task_vectors, patched_predictions, predict
from icllib.tv_experiments.estimators import (_check_counts, _labels, group_means, interpolate, mean_difference,
                                              set_spread)

__all__ = ["split_pairs", "patch_grid", "interpolation_labels", "DemoSweep", "demo_count_sweep", "Averaged",
           "averaged_accuracy", "ReplaceAdd", "replace_vs_add"]


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
    vectors = as_float_tensor("vectors", vectors, ndim=2)
    if isinstance(queries, str) or not queries or not all(isinstance(q, str) for q in queries):
        raise TypeError("queries must be a non-empty sequence of strings")
    check_choice("mode", mode, ("replace", "add"))
    return _patch_grid(model, tokenizer, vectors, queries, layer, check_format(fmt), mode)


def _patch_grid(model, tokenizer, vectors: torch.Tensor, queries, layer: int, fmt, mode: str = "replace"):
    n_v, n_q = vectors.shape[0], len(queries)
    prompts = [fmt.prompt([], x) for x in queries] * n_v
    theta = vectors.float().repeat_interleave(n_q, dim=0)
    words = _decode(tokenizer, patched_predictions(model, tokenizer, prompts, theta, [layer], fmt, mode=mode)[:, 0])
    return [words[v * n_q:(v + 1) * n_q] for v in range(n_v)]


def _decode(tokenizer, ids: torch.Tensor) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids.tolist()]


def interpolation_labels(
    model, tokenizer, theta_a, theta_b, alphas, pairs_a: Sequence[tuple[str, str]],
    pairs_b: Sequence[tuple[str, str]], layer: int, scorer_a: Scorer | Task | None = None,
    scorer_b: Scorer | Task | None = None, fmt="example",
) -> np.ndarray:
    """Whose answer the bare query gives with ``theta(alpha)`` (``interpolate``) patched after block ``layer``.

    ``theta_a``, ``theta_b`` (d,): the two tasks' vectors; the queries are the inputs of ``pairs_a`` (with A's
    answers) and ``pairs_b`` (the same inputs, with B's answers). Returns the ``answer_labels`` codes, int8
    (len(alphas), n_queries): 1 for A's answer, 2 for B's, 0 for neither (``shares_of(row)`` gives the fractions).
    """
    thetas = interpolate(as_float_tensor("theta_a", theta_a, ndim=1), as_float_tensor("theta_b", theta_b, ndim=1),
                         alphas)
    pairs_a, pairs_b = check_pairs("pairs_a", pairs_a), check_pairs("pairs_b", pairs_b)
    if [x for x, _ in pairs_a] != [x for x, _ in pairs_b]:
        raise ValueError("pairs_a and pairs_b must hold the same inputs x, in the same order")
    scorer_a, scorer_b = as_scorer(scorer_a, "scorer_a"), as_scorer(scorer_b, "scorer_b")
    grid = patch_grid(model, tokenizer, thetas, [x for x, _ in pairs_a], layer, fmt)
    return np.stack([_labels(row, pairs_a, pairs_b, scorer_a, scorer_b) for row in grid])


@dataclass
class DemoSweep:
    """Results of :func:`demo_count_sweep` for one task, one entry per demonstration count ``k``.

    ``theta[k]`` (n_sets, d) float32: ``theta_L(S)`` at the patched block ``layer``; ``spread_by_layer[k]`` (L,):
    the ``sqdist`` ``set_spread`` of ``theta_l(S)`` at every block; ``dummy_spread_by_layer[k]`` (L,): the part
    of it that comes from the dummy queries, ``E_S Var(mean_{x'} h_l([S, x'])[-1] | S)`` (estimated within each set,
    unbiased), and ``dummy_var[k]`` (n_sets,) its per-set terms at block ``layer``. ``icl_hits[k]`` (n_sets,) bool:
    whether ``[S, x]`` was right on the set's first held-out query; ``tv_hits[k]`` (n_sets, n_queries) bool: whether
    ``[x]`` with ``theta_L(S)`` patched in was right on each of the set's queries; ``icl[k]``, ``tv[k]`` their means.
    ``theta_all`` (n_sets, L, d): the vectors at every block for ``k = all_layers_at`` (None if not asked for).
    """

    n_demos: list[int]
    layer: int
    theta: dict[int, np.ndarray] = field(default_factory=dict)
    spread_by_layer: dict[int, np.ndarray] = field(default_factory=dict)
    dummy_spread_by_layer: dict[int, np.ndarray] = field(default_factory=dict)
    dummy_var: dict[int, np.ndarray] = field(default_factory=dict)
    icl_hits: dict[int, np.ndarray] = field(default_factory=dict)
    tv_hits: dict[int, np.ndarray] = field(default_factory=dict)
    all_layers_at: int | None = None
    theta_all: np.ndarray | None = None

    @property
    def icl(self) -> dict[int, float]:
        """ICL accuracy for every ``k``."""
        return {k: float(h.mean()) for k, h in self.icl_hits.items()}

    @property
    def tv(self) -> dict[int, float]:
        """Task-vector accuracy for every ``k``."""
        return {k: float(h.mean()) for k, h in self.tv_hits.items()}

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
    scorer: Scorer | Task | None = None, fmt="example",
    n_dummies: int = 2, all_layers_at: int | None = None, progress: bool = False,
) -> DemoSweep:
    """ICL and task-vector accuracy, and ``theta_L(S)``, as the number of demonstrations ``k`` grows.

    For each ``k``: ``n_sets`` sets of ``k`` demonstrations from ``demo_pool``, each with ``n_dummies`` dummy
    queries from the rest of the pool; ``theta_l(S) = mean_{x'} h_l([S, x'])[-1]`` (Chapter 5's Eq. ch05-theta),
    from the states of each dummy prompt (:func:`icllib.task_vectors.extract_task_vectors` with one dummy per
    call row, so that the dummies' share of the spread can be measured). Each set gets ``n_queries`` queries
    from ``query_pool``: ``[S, x]`` is run for the first (ICL), and ``theta_layer(S)`` is patched into ``[x]`` for
    all of them (TV). ``scorer(prediction, x, y)`` defaults to exact match (a ``lang_tasks.Task`` scores by its
    own rule). Seeded by ``seed``.
    """
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
    scorer, fmt = as_scorer(scorer), check_format(fmt)
    rng = np.random.default_rng(seed)
    out = DemoSweep(n_demos=ks, layer=layer, all_layers_at=all_layers_at)
    for k in tqdm(ks, desc="demonstration counts", disable=not progress, leave=False):
        # k demonstrations and n_dummies dummies, all distinct, from the demonstration pool only
        drawn = [sample_dummy_queries(demo_pool, [], k + n_dummies, rng) for _ in range(n_sets)]
        sets, dummies = [d[:k] for d in drawn], [[x for x, _ in d[k:]] for d in drawn]
        queries = [[query_pool[i] for i in rng.choice(len(query_pool), size=n_queries, replace=False)]
                   for _ in sets]
        states = _dummy_states(model, tokenizer, sets, dummies, fmt)  # (n_dummies, n_sets, L, d)
        theta = states.mean(0)  # (n_sets, L, d)
        icl_ids = predict(model, tokenizer, [fmt.prompt(s, q[0][0]) for s, q in zip(sets, queries)], fmt)
        flat = [pair for q in queries for pair in q]
        tv_ids = patched_predictions(model, tokenizer, [fmt.prompt([], x) for x, _ in flat],
                                     theta[:, layer].float().repeat_interleave(n_queries, 0), [layer], fmt)[:, 0]
        out.icl_hits[k] = hits(_decode(tokenizer, icl_ids), [q[0] for q in queries], scorer)
        out.tv_hits[k] = hits(_decode(tokenizer, tv_ids), flat, scorer).reshape(n_sets, n_queries)
        _record_spreads(out, k, states, theta)
    return out


def _dummy_states(model, tokenizer, sets, dummies, fmt) -> torch.Tensor:
    """``h_l([S_i, x'_ij])[-1]`` of every set and dummy, float64 (n_dummies, n_sets, L, d): one call row per
    (set, dummy), dummy-major."""
    n_dummies, n_sets = len(dummies[0]), len(sets)
    states = extract_task_vectors(model, tokenizer, [s for _ in range(n_dummies) for s in sets],
                                  [[d[j]] for j in range(n_dummies) for d in dummies], fmt)
    return states.double().view(n_dummies, n_sets, *states.shape[1:])


def _record_spreads(out: DemoSweep, k: int, states: torch.Tensor, theta: torch.Tensor) -> None:
    """Store ``theta_L(S)``, the spread over sets and the dummies' part of it for demonstration count ``k``."""
    n_dummies = states.shape[0]
    out.theta[k] = theta[:, out.layer].float().numpy()
    out.spread_by_layer[k] = set_spread(theta).numpy()
    # Var of a mean of n_dummies draws = (within-set variance of one dummy state) / n_dummies
    within = ((states - theta) ** 2).sum(-1).sum(0) / (n_dummies - 1)  # (n_sets, L)
    out.dummy_spread_by_layer[k] = (within.mean(0) / n_dummies).numpy()
    out.dummy_var[k] = (within[:, out.layer] / n_dummies).numpy()
    if k == out.all_layers_at:
        out.theta_all = theta.float().numpy()


@dataclass
class Averaged:
    """Results of :func:`averaged_accuracy`: every group size ``j`` scored on the same queries.

    ``queries`` (n_queries ``(x, y)`` pairs, the same for every ``j``); ``hits[j]`` (n_queries,) bool: whether the
    bare query ``queries[q]`` patched with ``theta_bar_j`` number ``group[j][q]`` (a group of ``j`` sets) was right.
    Two group sizes are compared query by query (``stats.paired_difference(hits[a], hits[b], groups=inputs)``).
    """

    group_sizes: list[int]
    queries: list[tuple[str, str]]
    hits: dict[int, np.ndarray] = field(default_factory=dict)
    group: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def accuracy(self) -> dict[int, float]:
        """The accuracy of every group size."""
        return {j: float(h.mean()) for j, h in self.hits.items()}


def averaged_accuracy(
    model, tokenizer, theta, query_pool: Sequence[tuple[str, str]], layer: int, group_sizes: Sequence[int],
    n_queries: int = 24, seed: int = 0, scorer: Scorer | Task | None = None, fmt="example",
) -> Averaged:
    """Task-vector accuracy of ``theta_bar_j`` (``group_means``) for every group size ``j``, on shared queries.

    ``theta`` (n_sets, d) at block ``layer``. ``n_queries`` queries are drawn from ``query_pool`` (without
    replacement while the pool lasts, then the pool again in a new order); for each ``j`` the ``n_sets // j``
    disjoint group means are dealt out in turn, query ``q`` getting mean ``q mod (n_sets // j)``, so every ``j`` is
    scored on the same queries and two group sizes can be compared query by query. Returns :class:`Averaged`.
    """
    theta = as_float_tensor("theta", theta, ndim=2)
    query_pool = check_pairs("query_pool", query_pool)
    sizes = _check_counts("group_sizes", group_sizes, maximum=theta.shape[0])
    n_queries = check_int("n_queries", n_queries, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    scorer, fmt = as_scorer(scorer), check_format(fmt)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(query_pool)) for _ in range(-(-n_queries // len(query_pool)))])
    queries = [query_pool[i] for i in order[:n_queries]]
    out = Averaged(group_sizes=sizes, queries=queries)
    prompts = [fmt.prompt([], x) for x, _ in queries]
    for j in sizes:
        means = group_means(theta, j).float()
        out.group[j] = np.arange(n_queries) % means.shape[0]
        ids = patched_predictions(model, tokenizer, prompts, means[out.group[j]], [layer], fmt)[:, 0]
        out.hits[j] = hits(_decode(tokenizer, ids), queries, scorer)
    return out


@dataclass
class ReplaceAdd:
    """Layer curves of the two interventions on the bare query ``[x]``: per-query hits, (n_queries, L) bool each.

    ``replace_set``: ``h_l[-1] := theta_l(S)`` with each query's own set (Hendel et al.); ``replace_mean``:
    ``h_l[-1] := mean_S theta_l(S)``; ``add[beta]``: ``h_l[-1] += beta * Delta_l`` (``mean_difference``).
    Entry ``[q, l]`` says whether query ``q`` was right with block ``l`` patched; ``.mean(0)`` is the accuracy curve.
    ``delta_norm``: ``||Delta_l||``; ``state_norm``: the mean ``||h_l([x])[-1]||`` of the bare queries.
    """

    replace_set: np.ndarray
    replace_mean: np.ndarray
    add: dict[float, np.ndarray]
    delta_norm: np.ndarray
    state_norm: np.ndarray


def replace_vs_add(
    model, tokenizer, theta, bare_states, queries: Sequence[tuple[str, str]], scales: Sequence[float] = (1.0,),
    scorer: Scorer | Task | None = None, fmt="example",
) -> ReplaceAdd:
    """Patch every block of the bare query by replacement and by addition (see :class:`ReplaceAdd`).

    ``theta`` (n_sets, L, d): task vectors of ``n_sets`` demonstration sets at every block; ``queries`` holds one
    held-out ``(x, y)`` per set (query ``i`` gets set ``i``'s vector for ``replace_set``); ``bare_states``
    (n_x, L, d): ``h_l([x'])[-1]`` of bare prompts of other inputs of the task, for ``Delta_l``.
    """
    theta = as_float_tensor("theta", theta, ndim=3)
    bare_states = as_float_tensor("bare_states", bare_states, ndim=3)
    queries = check_pairs("queries", queries)
    if len(queries) != theta.shape[0]:
        raise ValueError(f"queries must hold one pair per set ({theta.shape[0]}), got {len(queries)}")
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise TypeError(f"scales must be a non-empty sequence of real numbers, got {scales!r}")
    scales = [check_float("scales[i]", s) for s in scales]
    scorer, fmt = as_scorer(scorer), check_format(fmt)
    delta = mean_difference(theta, bare_states).float()  # (L, d)
    prompts = [fmt.prompt([], x) for x, _ in queries]
    n = len(prompts)

    def curve(vectors: torch.Tensor, mode: str) -> np.ndarray:
        ids = patched_predictions(model, tokenizer, prompts, vectors.float(), None, fmt, mode=mode)  # (n, L)
        right = [[scorer(tokenizer.decode([int(i)]), x, y) for i in row] for (x, y), row in zip(queries, ids.tolist())]
        return np.asarray(right, dtype=bool)

    return ReplaceAdd(
        replace_set=curve(theta, "replace"),
        replace_mean=curve(theta.mean(0, keepdim=True).expand(n, -1, -1), "replace"),
        add={s: curve((s * delta)[None].expand(n, -1, -1), "add") for s in scales},
        delta_norm=delta.double().norm(dim=-1).numpy(),
        state_norm=bare_states.double().norm(dim=-1).mean(0).numpy(),
    )
