"""The paper's protocol: the dev sweep, the chosen layer, test accuracy; conflicting tasks; vocabulary projection.

:func:`evaluate` is Hendel, Geva & Globerson's ``run_task_vector`` as a short function of named steps: draw the
dev and test demonstration sets, sweep the layers on dev, choose the best layer, extract ``theta(S)`` on test,
predict with the patched bare query, the full ICL prompt and the bare query alone, and score. :func:`evaluate_task`
and :func:`task_vectors_for` run it (or the extraction alone) on the book's tasks, cached by
:func:`icllib.cache.cached_call`. :func:`conflicting_tasks` is the paper's Section 5, :func:`project_to_vocabulary`
its Section 6.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from icllib._checks import check_bool, check_int, check_pairs
from icllib.cache import cached_call, not_in_key
from icllib.lang_tasks import (Scorer, Task, accuracy, as_scorer, filter_single_token, hits, load_task,
                               sample_demonstrations, sample_dummy_queries)
from icllib.llm import model_parts
from icllib.stats import Interval
from icllib.stats import accuracy as accuracy_interval
from icllib.task_vectors.formats import PromptFormat, _for_task, check_format
from icllib.task_vectors.forward import _extract, _grouped_states, _predict
from icllib.task_vectors.hooks import check_layer, check_layers
from icllib.task_vectors.sweeps import _patched, check_method

__all__ = ["TaskVectorResult", "evaluate", "evaluate_task", "task_vectors_for", "ConflictResult",
           "conflicting_tasks", "project_to_vocabulary"]

Pair = tuple[str, str]


@dataclass
class TaskVectorResult:
    """Accuracies of one task: zero-shot ``baseline``, ``icl`` (``[S, x]``), ``tv`` (``f(x; theta_L(S))``).

    ``dev_curve[l]`` is the dev accuracy of patching at block ``l`` (NaN for blocks not swept), ``best_layer``
    its first maximum (0-based block index), used for ``tv``. ``theta_test`` holds ``theta_L(S)`` of every test
    set (n_test, d); ``predictions`` the decoded test predictions ``{"baseline", "icl", "tv"}`` and ``hits``
    whether each was right (bool arrays; one query per test set, so the draws are independent and
    :meth:`interval` is a Wilson interval).
    """

    baseline: float
    icl: float
    tv: float
    best_layer: int
    dev_curve: np.ndarray
    n_layers: int
    layers: tuple[int, ...]
    fmt: PromptFormat
    n_demos: int
    n_dev: int
    n_test: int
    n_baseline: int
    test_queries: list[Pair] = field(default_factory=list)
    baseline_queries: list[Pair] = field(default_factory=list)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    theta_test: np.ndarray | None = None
    hits: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    def interval(self, which: str, level: float = 0.95) -> Interval:
        """The accuracy of ``"baseline"``, ``"icl"`` or ``"tv"`` with its Wilson interval."""
        if which not in self.hits:
            raise ValueError(f"which must be one of {sorted(self.hits)}, got {which!r}")
        return accuracy_interval(self.hits[which], level)

    @property
    def depth(self) -> float:
        """``(best_layer + 1) / L``: the relative depth of the chosen block (1 = the last block)."""
        return (self.best_layer + 1) / self.n_layers


# ----------------------------------------------------------------------------------------------------------------
# The steps of the protocol (arguments already checked)
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Runner:
    """The model, tokenizer and settings every step of one evaluation shares."""

    model: object
    tokenizer: object
    fmt: PromptFormat
    method: str = "kv"
    batch_size: int = 32

    def theta(self, sets, dummies) -> torch.Tensor:
        """``theta_l(S)`` of every set: (n_sets, L, d)."""
        return _extract(self.model, self.tokenizer, [demos for demos, _ in sets], dummies, self.fmt, self.batch_size)

    def patched(self, queries: Sequence[Pair], theta: torch.Tensor, layers: list[int]) -> torch.Tensor:
        """Greedy ids of the bare queries with ``theta[:, k]`` patched at ``layers[k]``: (n, K)."""
        prompts = [self.fmt.prompt([], x) for x, _ in queries]
        return _patched(self.model, self.tokenizer, prompts, theta, layers, self.fmt, "replace", self.method)

    def predict(self, prompts: Sequence[str]) -> torch.Tensor:
        return _predict(self.model, self.tokenizer, prompts, self.fmt, self.batch_size)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in ids.reshape(-1).tolist()]


def _draw_sets(pairs: list[Pair], n_sets: int, n_demos: int, n_dummies: int, rng: np.random.Generator):
    """``n_sets`` demonstration sets with a query each, and ``n_dummies`` dummy queries per set."""
    sets = sample_demonstrations(pairs, n_sets, n_demos, rng)
    dummies = [[x for x, _ in sample_dummy_queries(pairs, [*demos, query], n_dummies, rng)] for demos, query in sets]
    return sets, dummies


def _dev_curve(run: _Runner, sets, dummies, layers: list[int], scorer: Scorer, n_layers: int, steps) -> np.ndarray:
    """Dev accuracy of ``theta_l(S)`` patched into the bare query, for every swept block (NaN elsewhere)."""
    theta = run.theta(sets, dummies)
    steps.update()
    queries = [query for _, query in sets]
    ids = run.patched(queries, theta[:, layers, :], layers)
    steps.update()
    curve = np.full(n_layers, np.nan)
    for k, layer in enumerate(layers):
        curve[layer] = accuracy(run.decode(ids[:, k]), queries, scorer)
    return curve


def _test_states(run: _Runner, sets, dummies) -> tuple[torch.Tensor, torch.Tensor]:
    """``theta_l(S)`` (n, L, d) and the ICL prediction of every test set, in one grouped pass: the prompts
    ``[S, x'_1], [S, x'_2]`` and ``[S, x]`` share ``S``."""
    groups = [[run.fmt.prompt(demos, dummy) for dummy in set_dummies] + [run.fmt.prompt(demos, query[0])]
              for (demos, query), set_dummies in zip(sets, dummies)]
    states, next_ids = _grouped_states(run.model, run.tokenizer, groups, run.fmt, run.batch_size)
    return states[:, :-1].mean(dim=1), next_ids[:, -1]


def _zero_shot(run: _Runner, queries: Sequence[Pair]) -> torch.Tensor:
    """Greedy ids of the bare queries (small tasks repeat queries: each prompt runs once)."""
    unique = sorted({x for x, _ in queries})
    lookup = dict(zip(unique, run.predict([run.fmt.prompt([], x) for x in unique]).tolist()))
    return torch.tensor([lookup[x] for x, _ in queries])


# ----------------------------------------------------------------------------------------------------------------
# The whole evaluation (the paper's Table / Figure 3 for one task)
# ----------------------------------------------------------------------------------------------------------------
@not_in_key("method", "batch_size")
def evaluate(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    n_demos: int = 5,
    n_dev: int = 50,
    n_test: int = 50,
    n_baseline: int = 100,
    seed: int = 41,
    scorer: Scorer | Task | None = None,
    fmt: PromptFormat | str = "example",
    layers: Sequence[int] | None = None,
    n_dummies: int = 2,
    method: str = "auto",
    batch_size: int = 32,
    progress: bool = True,
) -> TaskVectorResult:
    """Zero-shot, ICL and task-vector accuracy of one task, with the layer chosen on dev sets (paper, Section 3).

    Draws (seeded by ``seed``) ``n_dev`` dev and ``n_test`` test demonstration sets of ``n_demos`` pairs, each with
    a query not in the set and ``n_dummies`` dummy queries for ``theta(S)``; ``n_baseline`` zero-shot queries.
    Dev: ``theta_l(S)`` patched into ``[x]`` at every block in ``layers`` (default all) gives ``dev_curve``;
    ``best_layer`` is its first maximum. Test: ``tv`` patches ``theta_{best_layer}(S)``; ``icl`` runs ``[S, x]``;
    ``baseline`` runs ``[x]``. A prediction is one greedy token, decoded and judged by
    ``scorer(prediction, x, y)`` (default exact match; a ``lang_tasks.Task`` scores by its own rule).
    The paper's counts are the defaults (5 demonstrations, 50 + 50 sets, 100 baseline queries, seed 41).
    """
    pairs, n_demos, n_dummies = _check_task_pairs(pairs, n_demos, n_dummies)
    n_dev, n_test, n_baseline = (check_int(name, value, minimum=1) for name, value in
                                 (("n_dev", n_dev), ("n_test", n_test), ("n_baseline", n_baseline)))
    seed = check_int("seed", seed, minimum=0)
    scorer, n_layers = as_scorer(scorer), model_parts(model).n_layers
    layers = check_layers(layers, n_layers)
    run = _Runner(model, tokenizer, check_format(fmt), check_method(model, method),
                  check_int("batch_size", batch_size, minimum=1))

    rng = np.random.default_rng(seed)
    dev_sets, dev_dummies = _draw_sets(pairs, n_dev, n_demos, n_dummies, rng)
    test_sets, test_dummies = _draw_sets(pairs, n_test, n_demos, n_dummies, rng)
    baseline_queries = [pairs[i] for i in rng.choice(len(pairs), size=n_baseline, replace=n_baseline > len(pairs))]
    with tqdm(total=5, desc="task vectors", disable=not progress, leave=False) as steps:
        dev_curve = _dev_curve(run, dev_sets, dev_dummies, layers, scorer, n_layers, steps)
        best_layer = int(layers[int(np.argmax([dev_curve[l] for l in layers]))])  # first maximum on ties
        theta_test, icl_ids = _test_states(run, test_sets, test_dummies)
        steps.update()
        test_queries = [query for _, query in test_sets]
        tv_ids = run.patched(test_queries, theta_test[:, best_layer, :][:, None, :], [best_layer])[:, 0]
        steps.update()
        baseline_ids = _zero_shot(run, baseline_queries)
        steps.update()
    predictions = {"tv": run.decode(tv_ids), "icl": run.decode(icl_ids), "baseline": run.decode(baseline_ids)}
    scored = {which: hits(words, baseline_queries if which == "baseline" else test_queries, scorer)
              for which, words in predictions.items()}
    return TaskVectorResult(
        baseline=float(scored["baseline"].mean()), icl=float(scored["icl"].mean()), tv=float(scored["tv"].mean()),
        best_layer=best_layer, dev_curve=dev_curve, n_layers=n_layers, layers=tuple(layers), fmt=run.fmt,
        n_demos=n_demos, n_dev=n_dev, n_test=n_test, n_baseline=n_baseline, test_queries=test_queries,
        baseline_queries=baseline_queries, predictions=predictions,
        theta_test=theta_test[:, best_layer, :].float().numpy(), hits=scored,
    )


def _check_task_pairs(pairs, n_demos: int, n_dummies: int, name: str = "pairs") -> tuple[list[Pair], int, int]:
    """Pairs with unique inputs, enough for ``n_demos`` demonstrations, a query and ``n_dummies`` dummies:
    ``(pairs, n_demos, n_dummies)``."""
    pairs = check_pairs(name, pairs)
    n_demos = check_int("n_demos", n_demos, minimum=1)
    n_dummies = check_int("n_dummies", n_dummies, minimum=1)
    if len({x for x, _ in pairs}) != len(pairs):
        raise ValueError(f"{name} must have unique inputs x")
    if n_demos + 1 + n_dummies > len(pairs):
        raise ValueError(
            f"n_demos={n_demos} plus a query and n_dummies={n_dummies} dummy queries need "
            f"{n_demos + 1 + n_dummies} distinct pairs, but {name} holds only {len(pairs)}"
        )
    return pairs, n_demos, n_dummies


# ----------------------------------------------------------------------------------------------------------------
# The book's tasks, cached
# ----------------------------------------------------------------------------------------------------------------
def _as_task(task, name: str) -> Task:
    if isinstance(task, str):
        task = load_task(task)
    if not isinstance(task, Task):
        raise TypeError(f"{name} must be a task name or an icllib.lang_tasks.Task, got {type(task).__name__}")
    return task


def evaluate_task(
    model, tokenizer, task: str | Task, fmt: PromptFormat | str = "example", cache: bool = True, **kwargs,
) -> TaskVectorResult:
    """:func:`evaluate` on one of the book's 18 tasks (a name or an ``icllib.lang_tasks.Task``), cached on disk.

    The task is filtered to single-token answers (``lang_tasks.filter_single_token``), scored by its own rule
    (``Task.score``: exact, prefix or synonym), and the format's ``output_space`` follows the filter's finding
    (:func:`~icllib.task_vectors.formats.format_for_task`). With ``cache=True`` the call goes through :func:`icllib.cache.cached_call`: the key
    is the model (its name, dtype and size), the tokenizer, the filtered task, the format and every other argument
    of :func:`evaluate` (``method``, ``batch_size`` and ``progress`` aside, which do not change the result).
    """
    task = filter_single_token(_as_task(task, "task"), tokenizer)
    fmt = _for_task(task, check_format(fmt))
    if check_bool("cache", cache):
        return cached_call(evaluate, model, tokenizer, task.pairs, scorer=task, fmt=fmt, **kwargs)
    return evaluate(model, tokenizer, task.pairs, scorer=task, fmt=fmt, **kwargs)


def task_vectors_for(
    model,
    tokenizer,
    tasks: Sequence[str | Task],
    n_sets: int = 50,
    n_demos: int = 5,
    layers: Sequence[int] | int | None = None,
    seed: int = 41,
    fmt: PromptFormat | str = "example",
    n_dummies: int = 2,
    cache: bool = True,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """``theta_l(S)`` of ``n_sets`` fresh demonstration sets of every task in ``tasks``, cached on disk.

    For each task in order (a name of the book's 18 tasks or an ``icllib.lang_tasks.Task``), filtered to
    single-token answers like :func:`evaluate_task`, with the format's ``output_space`` following the filter
    (:func:`~icllib.task_vectors.formats.format_for_task`): ``n_sets`` sets of ``n_demos`` pairs and a query
    (``lang_tasks.sample_demonstrations``), ``n_dummies`` dummy queries outside each set, and
    ``theta_l(S) = mean_{x'} h_l([S, x'])[-1]`` (the paper's Eq. 2 extraction, :func:`~icllib.task_vectors.forward.extract_task_vectors`).
    One ``numpy`` generator seeded by ``seed`` draws the sets of all tasks in turn, so a task's sets depend on the
    tasks before it (the same draws as Chapters 7 and 8 made by hand).

    Returns float32 ``(n_tasks, n_sets, K, d)`` for a list of ``layers`` (K = its length; ``None`` = all L blocks)
    or ``(n_tasks, n_sets, d)`` for a single int layer. With ``cache=True`` the result is stored by
    :func:`icllib.cache.cached_call` under the model, the filtered tasks and every argument that changes it.
    """
    if isinstance(tasks, (str, Task)) or not isinstance(tasks, Sequence):
        raise TypeError(f"tasks must be a list of task names or icllib.lang_tasks.Task objects, got {tasks!r}")
    if len(tasks) == 0:
        raise ValueError("tasks must name at least one task, got an empty list")
    loaded = [filter_single_token(_as_task(task, f"tasks[{i}]"), tokenizer) for i, task in enumerate(tasks)]
    n_sets = check_int("n_sets", n_sets, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    for task in loaded:
        _, n_demos, n_dummies = _check_task_pairs(task.pairs, n_demos, n_dummies, name=f"task {task.name!r}")
    single = isinstance(layers, (int, np.integer)) and not isinstance(layers, bool)
    chosen = check_layers(layers, model_parts(model).n_layers)
    args = (model, tokenizer, loaded, n_sets, n_demos, chosen, seed, check_format(fmt), n_dummies, batch_size,
            progress)
    thetas = cached_call(_task_vectors, *args) if check_bool("cache", cache) else _task_vectors(*args)
    return thetas[:, :, 0, :] if single else thetas


@not_in_key("batch_size")
def _task_vectors(model, tokenizer, tasks: list[Task], n_sets: int, n_demos: int, layers: list[int], seed: int,
                  fmt: PromptFormat, n_dummies: int, batch_size: int, progress: bool) -> torch.Tensor:
    """:func:`task_vectors_for` on checked, filtered tasks: (n_tasks, n_sets, len(layers), d)."""
    rng = np.random.default_rng(seed)
    out = []
    for task in tqdm(tasks, desc="task vectors", disable=not progress, leave=False):
        sets, dummies = _draw_sets(list(task.pairs), n_sets, n_demos, n_dummies, rng)
        run = _Runner(model, tokenizer, _for_task(task, fmt), batch_size=batch_size)
        out.append(run.theta(sets, dummies)[:, layers, :].float())
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------------------------
# Conflicting tasks (paper, Section 5)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ConflictResult:
    """Demonstrations of task A, ``theta(S_B)`` patched in at ``layer``: accuracy on A's and B's answers.

    ``a_before``/``b_before``: the unpatched prompt ``[S_A, x]``; ``a_after``/``b_after``: with the patch.
    The paper's finding is ``b_after`` high (the model follows the vector) while ``a_before`` was high. ``hits``
    holds the per-prompt bool arrays behind the four accuracies (one prompt per set: :meth:`interval` is Wilson).
    """

    a_before: float
    b_before: float
    a_after: float
    b_after: float
    layer: int
    n_sets: int
    predictions_before: list[str]
    predictions_after: list[str]
    hits: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    def interval(self, which: str, level: float = 0.95) -> Interval:
        """``"a_before"``, ``"b_before"``, ``"a_after"`` or ``"b_after"`` with its Wilson interval."""
        if which not in self.hits:
            raise ValueError(f"which must be one of {sorted(self.hits)}, got {which!r}")
        return accuracy_interval(self.hits[which], level)


def conflicting_tasks(
    model,
    tokenizer,
    pairs_a: Sequence[Pair],
    pairs_b: Sequence[Pair],
    layer: int,
    n_sets: int = 50,
    n_demos: int = 4,
    seed: int = 41,
    fmt: PromptFormat | str = "example",
    scorer_a: Scorer | Task | None = None,
    scorer_b: Scorer | Task | None = None,
    n_dummies: int = 2,
    progress: bool = False,
) -> ConflictResult:
    """Patch ``theta_layer(S_B)`` of task B into the full ICL prompt ``[S_A, x]`` of task A (the paper used 4 demos).

    Queries ``x`` are inputs shared by both tasks (e.g. single letters for next_letter and to_upper), never in
    either demonstration set; ``theta(S_B)`` uses ``n_dummies`` dummy queries of task B. ``scorer_a`` and
    ``scorer_b`` judge a prediction ``(prediction, x, y)`` against A's and B's answer (default exact match; a
    ``lang_tasks.Task`` scores by its own rule).
    """
    pairs_a, pairs_b = check_pairs("pairs_a", pairs_a), check_pairs("pairs_b", pairs_b)
    n_sets = check_int("n_sets", n_sets, minimum=1)
    n_demos = check_int("n_demos", n_demos, minimum=1)
    n_dummies = check_int("n_dummies", n_dummies, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    layer = check_layer(layer, model_parts(model).n_layers)
    scorer_a, scorer_b = as_scorer(scorer_a, "scorer_a"), as_scorer(scorer_b, "scorer_b")
    answer_a, answer_b = dict(pairs_a), dict(pairs_b)
    if not any(x in answer_b for x, _ in pairs_a):
        raise ValueError("pairs_a and pairs_b share no input x; conflicting tasks need common queries")
    if n_demos + 1 > len(pairs_a) or n_demos + 1 + n_dummies > len(pairs_b):
        raise ValueError(f"n_demos={n_demos} is too large for the tasks ({len(pairs_a)} and {len(pairs_b)} pairs)")
    queries, sets_a, sets_b, dummies = _draw_conflicts(pairs_a, pairs_b, n_sets, n_demos, n_dummies, seed)
    run = _Runner(model, tokenizer, check_format(fmt), check_method(model, "auto"))
    theta_b = _extract(model, tokenizer, sets_b, dummies, run.fmt, run.batch_size, progress)[:, layer, :]
    prompts = [run.fmt.prompt(d, x) for d, x in zip(sets_a, queries)]
    before = run.decode(run.predict(prompts))
    after = run.decode(_patched(model, tokenizer, prompts, theta_b[:, None, :], [layer], run.fmt, "replace",
                                run.method)[:, 0])
    qa = [(x, answer_a[x]) for x in queries]
    qb = [(x, answer_b[x]) for x in queries]
    scored = {"a_before": hits(before, qa, scorer_a), "b_before": hits(before, qb, scorer_b),
              "a_after": hits(after, qa, scorer_a), "b_after": hits(after, qb, scorer_b)}
    return ConflictResult(
        **{which: float(h.mean()) for which, h in scored.items()},
        layer=layer, n_sets=n_sets, predictions_before=before, predictions_after=after, hits=scored,
    )


def _draw_conflicts(pairs_a: list[Pair], pairs_b: list[Pair], n_sets: int, n_demos: int, n_dummies: int, seed: int):
    """For each set: a shared query, A's and B's demonstrations (without it) and B's dummy queries."""
    answer_b = dict(pairs_b)
    shared = [x for x, _ in pairs_a if x in answer_b]
    rng = np.random.default_rng(seed)
    queries, sets_a, sets_b, dummies = [], [], [], []
    for _ in range(n_sets):
        x = shared[int(rng.integers(len(shared)))]
        pool_a = [p for p in pairs_a if p[0] != x]
        pool_b = [p for p in pairs_b if p[0] != x]
        demos_a = [pool_a[i] for i in rng.choice(len(pool_a), size=n_demos, replace=False)]
        demos_b = [pool_b[i] for i in rng.choice(len(pool_b), size=n_demos, replace=False)]
        used = {x, *(d for d, _ in demos_b)}
        rest = [p for p in pairs_b if p[0] not in used]
        dummies.append([rest[i][0] for i in rng.choice(len(rest), size=n_dummies, replace=False)])
        queries.append(x)
        sets_a.append(demos_a)
        sets_b.append(demos_b)
    return queries, sets_a, sets_b, dummies


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary projection (paper, Section 6)
# ----------------------------------------------------------------------------------------------------------------
def project_to_vocabulary(
    model, tokenizer, theta: torch.Tensor, k: int = 10, alphabetic: bool = True
) -> list[tuple[str, float]]:
    """The top-``k`` tokens of ``W_U norm(theta)``: what the vector says when read out as if it were the last layer.

    ``theta`` (d,) goes through the final norm and the unembedding; tokens are decoded and stripped; with
    ``alphabetic`` only alphabetic tokens are kept, de-duplicated case-insensitively (as the paper lists them).
    Returns ``[(token, logit), ...]`` best first.
    """
    k = check_int("k", k, minimum=1)
    parts = model_parts(model)
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise TypeError(f"theta must be a floating-point torch tensor, got {type(theta).__name__}")
    if theta.shape != (parts.hidden_size,):
        raise ValueError(f"theta must have shape ({parts.hidden_size},), got {tuple(theta.shape)}")
    weight = next(parts.unembedding.parameters())
    with torch.no_grad():
        logits = parts.unembedding(parts.final_norm(theta.to(weight.device, weight.dtype)[None, None, :]))[0, 0]
    order = torch.argsort(logits.float(), descending=True).tolist()
    out, seen = [], set()
    for token_id in order:
        text = tokenizer.decode([token_id]).strip()
        if alphabetic and not text.isalpha():
            continue
        if not text or text.lower() in seen:
            continue
        seen.add(text.lower())
        out.append((text, float(logits[token_id])))
        if len(out) == k:
            break
    return out
