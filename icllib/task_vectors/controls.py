"""Controls for the task-vector test: does the vector carry the task, and how much of the paper's recipe matters.

:func:`run_controls` takes the test sets that :func:`icllib.task_vectors.evaluate` draws with the same arguments
(the dev sets are drawn first and dropped, exactly as there) and the block ``L`` chosen there, and patches the bare
query ``[x]`` at ``L`` with other vectors than the paper's ``theta_L(S)``:

- ``"tv"``: ``theta_L(S)`` from 2 dummy queries, the paper's (the same vector as ``evaluate``'s ``tv``);
- ``"dummies_1"``, ``"dummies_4"``: ``theta_L(S)`` averaged over 1 or 4 dummy queries (the first one, or the two of
  ``"tv"`` and two more), so the three counts are nested;
- ``"real_query"``: ``h_L([S, x])[-1]``, the state of the ICL prompt with the real query instead of dummies;
- ``"shuffled"``: ``theta_L(S~)`` from the demonstrations with their labels permuted so that no input keeps its own
  label (:func:`shuffle_labels`): the format of the task without the mapping;
- ``"random"``: a random direction with the norm of ``theta_L(S)`` (:func:`random_like`);

beside the unpatched ``"baseline"`` (``[x]`` alone, on the same test queries), ``"icl"`` (``[S, x]``) and
``"icl_shuffled"`` (``[S~, x]``). Every condition is scored by the task's rule on the same queries, so two
conditions can be compared query by query (``icllib.stats.paired_difference``).

:func:`answer_curves` asks what the patched query answers at every block: the real query's answer, or the answer of
one of the dummy queries that ``theta_l(S)`` was read from (the book's reading of the late-block collapse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from icllib._checks import check_bool, check_int, check_pairs
from icllib.cache import cached_call, not_in_key
from icllib.lang_tasks import Scorer, Task, as_scorer, filter_single_token, hits, sample_dummy_queries
from icllib.llm import model_parts
from icllib.stats import Interval
from icllib.stats import accuracy as accuracy_interval
from icllib.task_vectors.formats import PromptFormat, _for_task, check_format
from icllib.task_vectors.forward import _grouped_states
from icllib.task_vectors.hooks import check_layer
from icllib.task_vectors.protocol import _as_task, _check_task_pairs, _draw_sets, _Runner, _zero_shot
from icllib.task_vectors.sweeps import _patched, check_method

__all__ = ["CONDITIONS", "PATCHED", "DUMMY_COUNTS", "ControlResult", "shuffle_labels", "random_like",
           "evaluation_test_sets", "run_controls", "controls_for_task", "AnswerCurves", "answer_curves",
           "answer_curves_for_task"]

Pair = tuple[str, str]

#: The dummy-query counts compared (the paper averages over 2).
DUMMY_COUNTS = (1, 2, 4)
#: The patched conditions, in the order they are run.
PATCHED = ("tv", "dummies_1", "dummies_4", "real_query", "shuffled", "random")
#: Every condition of a :class:`ControlResult`.
CONDITIONS = ("baseline", "icl", "icl_shuffled", *PATCHED)
_PAPER_DUMMIES = 2  # the paper's count: the test sets are drawn with it, as evaluate draws them


@dataclass
class ControlResult:
    """Hits of every condition in :data:`CONDITIONS` on the same ``n_test`` test queries, patched at ``layer``.

    ``hits[c]`` is a bool array (one query per test set, so :meth:`interval` is a Wilson interval);
    ``test_queries`` are the ``(x, y)`` of the test sets, the same as ``evaluate``'s with the same arguments.
    """

    layer: int
    n_test: int
    test_queries: list[Pair] = field(default_factory=list)
    hits: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    def accuracy(self, which: str) -> float:
        """The fraction of hits of condition ``which``."""
        return float(self._hits(which).mean())

    def interval(self, which: str, level: float = 0.95) -> Interval:
        """The accuracy of condition ``which`` with its Wilson interval."""
        return accuracy_interval(self._hits(which), level)

    def _hits(self, which: str) -> np.ndarray:
        if which not in self.hits:
            raise ValueError(f"which must be one of {sorted(self.hits)}, got {which!r}")
        return self.hits[which]


# ----------------------------------------------------------------------------------------------------------------
# The control vectors and demonstrations
# ----------------------------------------------------------------------------------------------------------------
def shuffle_labels(demos: Sequence[Pair], generator: np.random.Generator | int) -> list[Pair]:
    """``demos`` with the labels moved one step along a random cycle: input ``x_{o_j}`` gets label ``y_{o_{j+1}}``.

    ``o`` is a random order of the positions, so every input gets another position's label (a derangement; two
    positions that share a label keep a correct-looking pair). Inputs stay in place; needs at least 2 pairs.
    ``generator`` is a ``numpy.random.Generator`` (its state advances) or an int seed.
    """
    demos = check_pairs("demos", demos)
    if len(demos) < 2:
        raise ValueError(f"demos must hold at least 2 pairs to shuffle their labels, got {len(demos)}")
    return _shuffle_labels(demos, _as_rng(generator))


def random_like(theta: torch.Tensor, generator: np.random.Generator | int) -> torch.Tensor:
    """Random vectors with the norms of ``theta``'s rows: row ``i`` is ``||theta_i|| g_i / ||g_i||`` with ``g_i``
    standard normal (a direction uniform on the sphere). ``theta`` is (n, d); the result is float32 (n, d).
    ``generator`` is a ``numpy.random.Generator`` (its state advances) or an int seed."""
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point() or theta.ndim != 2:
        got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise TypeError(f"theta must be a floating-point torch tensor of shape (n, d), got {got}")
    return _random_like(theta, _as_rng(generator))


def _as_rng(generator) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    return np.random.default_rng(check_int("generator", generator, minimum=0))


def _shuffle_labels(demos: list[Pair], rng: np.random.Generator) -> list[Pair]:
    order = rng.permutation(len(demos))
    labels = [y for _, y in demos]
    out = list(demos)
    for j, position in enumerate(order):
        out[position] = (demos[position][0], labels[order[(j + 1) % len(order)]])
    return out


def _random_like(theta: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    directions = torch.from_numpy(rng.standard_normal(tuple(theta.shape))).float()
    directions = directions / directions.norm(dim=1, keepdim=True)
    return directions * theta.float().norm(dim=1, keepdim=True)


# ----------------------------------------------------------------------------------------------------------------
# The test sets of an evaluation
# ----------------------------------------------------------------------------------------------------------------
def evaluation_test_sets(pairs: Sequence[Pair], n_demos: int = 5, n_dev: int = 50, n_test: int = 50,
                         seed: int = 41) -> tuple[list, list[list[str]]]:
    """The test sets ``[(demos, (x, y)), ...]`` and their 2 dummy inputs each that ``evaluate`` draws with the same
    arguments (its generator draws the dev sets first; they are drawn here too and dropped)."""
    return _test_sets(*_check_draws(pairs, n_demos, n_dev, n_test, seed, _PAPER_DUMMIES))


def _check_draws(pairs, n_demos, n_dev, n_test, seed, n_dummies: int) -> tuple:
    """Checked ``(pairs, n_demos, n_dev, n_test, seed)``; the pairs must hold a set, its query and ``n_dummies``."""
    pairs, n_demos, _ = _check_task_pairs(pairs, n_demos, n_dummies)
    n_dev, n_test = check_int("n_dev", n_dev, minimum=1), check_int("n_test", n_test, minimum=1)
    return pairs, n_demos, n_dev, n_test, check_int("seed", seed, minimum=0)


def _setup(model, tokenizer, scorer, fmt, method, batch_size, *draws) -> tuple:
    """``(runner, scorer, checked draws)`` for :func:`run_controls` and :func:`answer_curves`."""
    run = _Runner(model, tokenizer, check_format(fmt), check_method(model, method),
                  check_int("batch_size", batch_size, minimum=1))
    return run, as_scorer(scorer), _check_draws(*draws)


def _test_sets(pairs, n_demos, n_dev, n_test, seed):
    rng = np.random.default_rng(seed)
    _draw_sets(pairs, n_dev, n_demos, _PAPER_DUMMIES, rng)  # the dev sets, as evaluate draws them first
    return _draw_sets(pairs, n_test, n_demos, _PAPER_DUMMIES, rng)


# ----------------------------------------------------------------------------------------------------------------
# The controls
# ----------------------------------------------------------------------------------------------------------------
@not_in_key("method", "batch_size")
def run_controls(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    layer: int,
    n_demos: int = 5,
    n_dev: int = 50,
    n_test: int = 50,
    seed: int = 41,
    scorer: Scorer | Task | None = None,
    fmt: PromptFormat | str = "example",
    method: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
) -> ControlResult:
    """Every condition of :data:`CONDITIONS` on the test sets ``evaluate`` draws with these arguments, at ``layer``.

    ``layer`` is the block chosen on dev data by ``evaluate`` (its ``best_layer``). The extra dummy queries of
    ``"dummies_4"``, the label shuffles and the random directions come from a second generator seeded by
    ``(seed, 1)``, so the shared test sets are exactly ``evaluate``'s. Predictions are one greedy token, judged by
    ``scorer(prediction, x, y)`` (default exact match; a ``lang_tasks.Task`` scores by its own rule).
    """
    layer = check_layer(layer, model_parts(model).n_layers)
    run, scorer, (pairs, n_demos, n_dev, n_test, seed) = _setup(model, tokenizer, scorer, fmt, method, batch_size,
                                                                pairs, n_demos, n_dev, n_test, seed, max(DUMMY_COUNTS))
    sets, dummies = _test_sets(pairs, n_demos, n_dev, n_test, seed)
    extra = np.random.default_rng((seed, 1))
    dummies = [d + [x for x, _ in sample_dummy_queries(pairs, [*demos, query, *d], max(DUMMY_COUNTS) - len(d), extra)]
               for (demos, query), d in zip(sets, dummies)]
    shuffled = [(_shuffle_labels(demos, extra), query) for demos, query in sets]
    with tqdm(total=3, desc="controls", disable=not progress, leave=False) as steps:
        vectors, ids = _control_states(run, sets, shuffled, dummies, layer)
        steps.update()
        vectors["random"] = _random_like(vectors["tv"], extra)
        queries = [query for _, query in sets]
        prompts = [run.fmt.prompt([], x) for x, _ in queries] * len(PATCHED)
        theta = torch.cat([vectors[c] for c in PATCHED])[:, None, :]
        patched = _patched(model, tokenizer, prompts, theta, [layer], run.fmt, "replace", run.method)[:, 0]
        steps.update()
        ids["baseline"] = _zero_shot(run, queries)
        steps.update()
    ids.update(zip(PATCHED, patched.view(len(PATCHED), len(queries))))
    scored = {c: hits(run.decode(ids[c]), queries, scorer) for c in CONDITIONS}
    return ControlResult(layer=layer, n_test=n_test, test_queries=queries, hits=scored)


def _control_states(run: _Runner, sets, shuffled, dummies, layer: int) -> tuple[dict, dict]:
    """The vectors at ``layer`` of the patched conditions but ``"random"``, and the ICL predictions: two grouped
    passes, ``[S, x'_1..x'_4], [S, x]`` and ``[S~, x'_1], [S~, x'_2], [S~, x]`` per set."""
    n_max = max(DUMMY_COUNTS)
    groups = [[run.fmt.prompt(demos, d) for d in set_dummies] + [run.fmt.prompt(demos, query[0])]
              for (demos, query), set_dummies in zip(sets, dummies)]
    states, next_ids = _grouped_states(run.model, run.tokenizer, groups, run.fmt, run.batch_size)
    states = states[:, :, layer]
    vectors = {"tv": states[:, :_PAPER_DUMMIES].mean(dim=1), "dummies_1": states[:, :1].mean(dim=1),
               "dummies_4": states[:, :n_max].mean(dim=1), "real_query": states[:, n_max]}
    groups = [[run.fmt.prompt(demos, d) for d in set_dummies[:_PAPER_DUMMIES]] + [run.fmt.prompt(demos, query[0])]
              for (demos, query), set_dummies in zip(shuffled, dummies)]
    shuffled_states, shuffled_ids = _grouped_states(run.model, run.tokenizer, groups, run.fmt, run.batch_size)
    vectors["shuffled"] = shuffled_states[:, :_PAPER_DUMMIES, layer].mean(dim=1)
    return vectors, {"icl": next_ids[:, n_max], "icl_shuffled": shuffled_ids[:, _PAPER_DUMMIES]}


def controls_for_task(model, tokenizer, task: str | Task, layer: int, fmt: PromptFormat | str = "example",
                      cache: bool = True, **kwargs) -> ControlResult:
    """:func:`run_controls` on one of the book's tasks, filtered and scored as ``evaluate_task`` does it (so its
    test sets are ``evaluate_task``'s with the same arguments), cached on disk with ``cache=True``."""
    return _on_task(run_controls, model, tokenizer, task, fmt, cache, layer, **kwargs)


def _on_task(fn, model, tokenizer, task, fmt, cache, *args, **kwargs):
    """``fn`` on the filtered task, with its scorer and its format (cached with ``cache=True``)."""
    task = filter_single_token(_as_task(task, "task"), tokenizer)
    fmt = _for_task(task, check_format(fmt))
    call = (lambda *a, **k: cached_call(fn, *a, **k)) if check_bool("cache", cache) else fn
    return call(model, tokenizer, task.pairs, *args, scorer=task, fmt=fmt, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# What the patched query answers, block by block
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class AnswerCurves:
    """For every test set (rows) and block (columns), whether the query patched with ``theta_l(S)`` answers

    - ``query_hits``: the real query's answer ``y`` (the task-vector prediction is right);
    - ``dummy_hits``: the answer of one of the dummy queries ``x'`` that ``theta_l(S)`` was read from.

    ``ambiguous[i]`` marks the sets where a dummy's answer would also be right for the query (e.g. two countries on
    one continent): there the two cannot be told apart, and :meth:`rates` leaves them out.
    """

    query_hits: np.ndarray
    dummy_hits: np.ndarray
    ambiguous: np.ndarray

    def rates(self, which: str) -> np.ndarray:
        """The per-block fraction of ``"query"`` or ``"dummy"`` hits over the unambiguous sets: (L,)."""
        if which not in ("query", "dummy"):
            raise ValueError(f"which must be 'query' or 'dummy', got {which!r}")
        table = self.query_hits if which == "query" else self.dummy_hits
        return table[~self.ambiguous].mean(axis=0)


@not_in_key("method", "batch_size")
def answer_curves(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    n_demos: int = 5,
    n_dev: int = 50,
    n_test: int = 50,
    seed: int = 41,
    scorer: Scorer | Task | None = None,
    fmt: PromptFormat | str = "example",
    method: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
) -> AnswerCurves:
    """Patch ``theta_l(S)`` (2 dummy queries, the paper's) into the bare query at every block ``l``, on the test
    sets ``evaluate`` draws with these arguments, and score each prediction against the query's answer and against
    the answers of the two dummy queries (by ``scorer``, default exact match)."""
    run, scorer, (pairs, n_demos, n_dev, n_test, seed) = _setup(model, tokenizer, scorer, fmt, method, batch_size,
                                                                pairs, n_demos, n_dev, n_test, seed, _PAPER_DUMMIES)
    sets, dummies = _test_sets(pairs, n_demos, n_dev, n_test, seed)
    layers = list(range(model_parts(model).n_layers))
    theta = run.theta(sets, dummies)
    queries = [query for _, query in sets]
    words = [run.decode(column) for column in run.patched(queries, theta, layers).T]  # per block
    answer = dict(pairs)
    dummy_pairs = [[(d, answer[d]) for d in set_dummies] for set_dummies in dummies]
    query_hits = np.stack([hits(w, queries, scorer) for w in words], axis=1)
    dummy_hits = np.stack([np.any([hits(w, [p[k] for p in dummy_pairs], scorer) for k in range(_PAPER_DUMMIES)],
                                  axis=0) for w in words], axis=1)
    ambiguous = np.array([any(scorer(y_d, x, y) for _, y_d in set_pairs)
                          for (x, y), set_pairs in zip(queries, dummy_pairs)], dtype=bool)
    return AnswerCurves(query_hits=query_hits, dummy_hits=dummy_hits, ambiguous=ambiguous)


def answer_curves_for_task(model, tokenizer, task: str | Task, fmt: PromptFormat | str = "example",
                           cache: bool = True, **kwargs) -> AnswerCurves:
    """:func:`answer_curves` on one of the book's tasks, filtered and scored as ``evaluate_task`` does it, cached."""
    return _on_task(answer_curves, model, tokenizer, task, fmt, cache, **kwargs)
