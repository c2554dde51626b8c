"""Chapter 11's computations (Back to the LLM), as functions of their configuration.

Each public function is one ``records.result`` of the chapter and returns what its figures and asserts need: per-set
and per-query hits, spreads, answer codes; never the task vectors themselves (they stay in the local cache).

- :func:`chapter5_choices`: Chapter 5's evaluation of each candidate task (the patching block chosen on dev sets,
  its dev curve, and the zero-shot, ICL and task-vector hits of its test sets);
- :func:`demo_count_summaries`: the demonstration-count sweep (:func:`icllib.tv_experiments.demo_count_sweep`),
  with the bootstrap interval of the spread's rate;
- :func:`averaging`: vectors averaged over ``j`` sets, every ``j`` on the same queries;
- :func:`interpolation`: whose answer the bare query gives along ``(1 - alpha) theta_A + alpha theta_B``;
- :func:`replacement_vs_addition`: replacement by ``theta_l(S)`` against addition of ``beta Delta_l`` at every block;
- :func:`pooled_accuracy`: the accuracy of hits pooled over tasks, with the interval that fits how they were drawn.

Every task's inputs are split once into a demonstration pool and held-out queries
(:func:`icllib.tv_experiments.split_pairs`), and every section reads the same sweep of a task (one
:func:`icllib.cache.cached_call` with the same arguments), so the sections share their vectors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from icllib._checks import check_float, check_int
from icllib.cache import cached_call
from icllib.lang_tasks import TASK_NAMES, Task, filter_single_token, load_task
from icllib.llm import n_layers
from icllib.stats import Interval, accuracy, bootstrap
from icllib.task_vectors import evaluate_task, format_for_task, format_prompt, last_position_states
from icllib.task_vectors.formats import PromptFormat, check_format
from icllib.tv_experiments import (Averaged, DemoSweep, ReplaceAdd, averaged_accuracy, demo_count_sweep,
                                   interpolation_labels, replace_vs_add, split_pairs, spread_slope_interval)

__all__ = ["SweepConfig", "TaskChoice", "chapter5_choices", "SweepSummary", "demo_count_summaries", "averaging",
           "Interpolation", "interpolation", "replacement_vs_addition", "pooled_accuracy"]


@dataclass(frozen=True)
class SweepConfig:
    """The demonstration-count sweep shared by every section: counts ``n_demos`` (those the task's pool allows),
    ``n_sets`` sets per count with ``n_dummies`` dummy queries each, ``n_queries`` held-out queries per set, the
    share ``query_fraction`` of inputs held out, the ``seed``, and the count ``all_layers_at`` whose vectors are
    kept at every block (Sections 2 to 4)."""

    n_demos: tuple[int, ...]
    n_sets: int
    n_queries: int
    query_fraction: float = 0.3
    seed: int = 41
    all_layers_at: int = 5
    n_dummies: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.n_demos, (str, bytes)) or not isinstance(self.n_demos, Sequence) or not self.n_demos:
            raise TypeError(f"n_demos must be a non-empty sequence of integers, got {self.n_demos!r}")
        object.__setattr__(self, "n_demos", tuple(check_int("n_demos[i]", k, minimum=1) for k in self.n_demos))
        check_int("n_sets", self.n_sets, minimum=2)
        check_int("n_queries", self.n_queries, minimum=1)
        if not 0.0 < check_float("query_fraction", self.query_fraction) < 1.0:
            raise ValueError(f"query_fraction must lie strictly between 0 and 1, got {self.query_fraction}")
        check_int("seed", self.seed, minimum=0)
        check_int("n_dummies", self.n_dummies, minimum=2)
        if self.all_layers_at not in self.n_demos:
            raise ValueError(f"all_layers_at must be one of n_demos={self.n_demos}, got {self.all_layers_at!r}")


# ----------------------------------------------------------------------------------------------------------------
# Chapter 5's choice of block
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TaskChoice:
    """Chapter 5's evaluation of one task: ``best_layer`` (chosen on dev sets), ``dev_curve`` (L,) and the test
    ``hits`` ``{"baseline", "icl", "tv"}`` (bool arrays, one query per set: Wilson intervals); ``n_pairs`` is the
    number of pairs left after the single-token filter."""

    n_pairs: int
    best_layer: int
    dev_curve: np.ndarray
    hits: dict[str, np.ndarray] = field(default_factory=dict)


def chapter5_choices(
    model, tokenizer, names: Sequence[str], fmt: PromptFormat | str = "example", n_demos: int = 5, n_dev: int = 50,
    n_test: int = 50, n_baseline: int = 100, seed: int = 41,
) -> dict[str, TaskChoice]:
    """:func:`icllib.task_vectors.evaluate_task` for every task (cached, so shared with Chapter 5 when it ran with
    the same arguments), reduced to :class:`TaskChoice`."""
    names = _check_names(names)
    fmt = check_format(fmt)
    out = {}
    for name in names:
        result = evaluate_task(model, tokenizer, name, fmt=fmt, progress=False, n_demos=n_demos, n_dev=n_dev,
                               n_test=n_test, n_baseline=n_baseline, seed=seed)
        out[name] = TaskChoice(n_pairs=len(filter_single_token(load_task(name), tokenizer)),
                               best_layer=result.best_layer, dev_curve=np.asarray(result.dev_curve, np.float32),
                               hits={k: np.asarray(v, bool) for k, v in result.hits.items()})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Section 1: the demonstration-count sweep
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SweepSummary:
    """What Section 1 needs of one task's :class:`icllib.tv_experiments.DemoSweep`.

    ``icl_hits[k]`` (n_sets,), ``tv_hits[k]`` (n_sets, n_queries): per-set and per-query hits; ``spread`` and
    ``dummy_spread`` (len(n_demos),): ``V(k)`` at the patched block and the dummies' part of it; ``slope`` and
    ``slope_demos``: the log-log slope of ``V(k)`` (and of the demonstrations' part) over ``k >= 2``, with
    bootstrap intervals over sets; ``n_pairs``, ``n_demo_pool``, ``n_query_pool``: the task's split.
    """

    n_demos: list[int]
    layer: int
    n_pairs: int
    n_demo_pool: int
    n_query_pool: int
    icl_hits: dict[int, np.ndarray]
    tv_hits: dict[int, np.ndarray]
    spread: np.ndarray
    dummy_spread: np.ndarray
    slope: Interval
    slope_demos: Interval


def demo_count_summaries(
    model, tokenizer, names: Sequence[str], layers: Mapping[str, int], config: SweepConfig,
    fmt: PromptFormat | str = "example", n_resamples: int = 2000,
) -> dict[str, SweepSummary]:
    """The sweep of every task at its block ``layers[name]``, summarised (:class:`SweepSummary`)."""
    names, layers, config, fmt = _check_common(model, names, layers, config, fmt)
    n_resamples = check_int("n_resamples", n_resamples, minimum=2)
    out = {}
    for name in names:
        task, _, demo_pool, query_pool, sweep = _with_sweep(model, tokenizer, name, layers[name], config, fmt)
        ks = [k for k in sweep.n_demos if k >= 2]  # k = 1 is another regime (the closed form's k < m)
        thetas, dummies = [sweep.theta[k] for k in ks], [sweep.dummy_var[k] for k in ks]
        out[name] = SweepSummary(
            n_demos=sweep.n_demos, layer=sweep.layer, n_pairs=len(task.pairs), n_demo_pool=len(demo_pool),
            n_query_pool=len(query_pool), icl_hits=sweep.icl_hits, tv_hits=sweep.tv_hits,
            spread=sweep.spread.astype(np.float32), dummy_spread=sweep.dummy_spread.astype(np.float32),
            slope=spread_slope_interval(ks, thetas, n_resamples=n_resamples, seed=config.seed),
            slope_demos=spread_slope_interval(ks, thetas, dummies, n_resamples=n_resamples, seed=config.seed))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Sections 2 to 4
# ----------------------------------------------------------------------------------------------------------------
def averaging(
    model, tokenizer, names: Sequence[str], layers: Mapping[str, int], config: SweepConfig,
    fmt: PromptFormat | str = "example", n_demos: Sequence[int] = (2, 5), group_sizes: Sequence[int] = (1, 2, 4, 8),
    n_queries: int = 24,
) -> dict[str, dict[int, Averaged]]:
    """:func:`icllib.tv_experiments.averaged_accuracy` of the sweep's vectors with ``k`` in ``n_demos``
    demonstrations, for every task: ``out[name][k]``."""
    names, layers, config, fmt = _check_common(model, names, layers, config, fmt)
    out = {}
    for name in names:
        task, task_fmt, _, query_pool, sweep = _with_sweep(model, tokenizer, name, layers[name], config, fmt)
        missing = [k for k in n_demos if k not in sweep.theta]
        if missing:
            raise ValueError(f"n_demos {missing} are not in the sweep of {name!r} (it has {sweep.n_demos})")
        out[name] = {k: cached_call(averaged_accuracy, model, tokenizer, torch.from_numpy(sweep.theta[k]), query_pool,
                                    sweep.layer, list(group_sizes), n_queries=n_queries, seed=config.seed,
                                    scorer=task, fmt=task_fmt)
                     for k in n_demos}
    return out


@dataclass
class Interpolation:
    """Section 3's result: the answer codes ``labels`` (len(alphas), n_queries) (1: A's answer, 2: B's, 0:
    neither; :func:`icllib.tv_experiments.shares_of` gives the fractions) of the shared held-out ``queries``, with
    ``theta(alpha)`` patched after block ``layer``."""

    task_a: str
    task_b: str
    layer: int
    alphas: np.ndarray
    queries: list[str]
    labels: np.ndarray


def interpolation(
    model, tokenizer, task_a: str, task_b: str, layer: int, layers: Mapping[str, int], config: SweepConfig,
    alphas: Sequence[float], n_queries: int = 32, fmt: PromptFormat | str = "example",
) -> Interpolation:
    """Mix the two tasks' mean vectors (over the sweep's sets with ``config.all_layers_at`` demonstrations) at block
    ``layer`` and classify the bare query's answers (:func:`icllib.tv_experiments.interpolation_labels`).

    The queries are held-out inputs of both tasks (the split is by input) whose A answer B does not accept, at most
    ``n_queries``; ``layers`` gives each task's own sweep block (the sweeps are read from the cache).
    """
    names, layers, config, fmt = _check_common(model, [task_a, task_b], layers, config, fmt)
    layer = check_int("layer", layer, minimum=0, maximum=n_layers(model) - 1)
    n_queries = check_int("n_queries", n_queries, minimum=2)
    (a, fmt_a, _, held_a), (b, _, _, held_b) = (_prepared(tokenizer, t, fmt, config) for t in names)
    inputs_b = {x for x, _ in held_b}
    queries = [x for x, y in held_a if x in inputs_b and not b.score(y, x)][:n_queries]
    if len(queries) < 2:
        raise ValueError(f"{task_a!r} and {task_b!r} share fewer than 2 held-out inputs with different answers")
    theta_a, theta_b = (torch.from_numpy(_with_sweep(model, tokenizer, t, layers[t], config, fmt)[-1]
                                         .theta_all[:, layer]).mean(0) for t in names)
    labels = cached_call(interpolation_labels, model, tokenizer, theta_a, theta_b, [float(v) for v in alphas],
                         [(x, a.answer(x)) for x in queries], [(x, b.answer(x)) for x in queries], layer,
                         scorer_a=a, scorer_b=b, fmt=fmt_a)
    return Interpolation(task_a, task_b, layer, np.asarray(alphas, dtype=np.float32), queries, labels)


def replacement_vs_addition(
    model, tokenizer, names: Sequence[str], layers: Mapping[str, int], config: SweepConfig,
    scales: Sequence[float] = (1.0, 2.0), n_bare: int = 32, fmt: PromptFormat | str = "example",
) -> dict[str, ReplaceAdd]:
    """:func:`icllib.tv_experiments.replace_vs_add` for every task: the sweep's vectors with
    ``config.all_layers_at`` demonstrations at every block, one held-out query per set, and ``Delta_l`` from the
    bare prompts of the first ``n_bare`` inputs of the demonstration pool (never a test query)."""
    names, layers, config, fmt = _check_common(model, names, layers, config, fmt)
    n_bare = check_int("n_bare", n_bare, minimum=1)
    out = {}
    for name in names:
        task, task_fmt, demo_pool, query_pool, sweep = _with_sweep(model, tokenizer, name, layers[name], config, fmt)
        rng = np.random.default_rng(config.seed)
        picked = rng.choice(len(query_pool), size=config.n_sets, replace=len(query_pool) < config.n_sets)
        bare = last_position_states(model, tokenizer, [format_prompt([], x, task_fmt) for x, _ in demo_pool[:n_bare]],
                                    task_fmt)
        out[name] = cached_call(replace_vs_add, model, tokenizer, torch.from_numpy(sweep.theta_all), bare,
                                [query_pool[i] for i in picked], list(scales), scorer=task, fmt=task_fmt)
    return out


def pooled_accuracy(hits: Sequence, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """The accuracy of hits pooled over tasks, with its 95% interval.

    ``hits[t]`` holds task ``t``'s hits: a 1-D bool array (independent queries, e.g. one query per demonstration
    set: a Wilson interval over all of them) or a 2-D one with a row per demonstration set and a column per query
    of that set (a cluster bootstrap that resamples whole (task, set) rows). With equally many hits per task the
    estimate is the mean over tasks.
    """
    if isinstance(hits, np.ndarray) or not isinstance(hits, Sequence) or not hits:
        raise TypeError(f"hits must be a non-empty sequence of bool arrays, one per task, got {type(hits).__name__}")
    arrays = [np.asarray(h) for h in hits]
    if any(a.dtype != bool for a in arrays) or len({a.ndim for a in arrays}) != 1 or arrays[0].ndim not in (1, 2):
        raise ValueError("hits must be bool arrays, all 1-D (independent queries) or all 2-D (sets x queries)")
    if arrays[0].ndim == 1:
        return accuracy(np.concatenate(arrays))
    groups = np.concatenate([np.repeat(np.arange(a.shape[0]) + 100_000 * t, a.shape[1]) for t, a in enumerate(arrays)])
    values = np.concatenate([a.reshape(-1) for a in arrays]).astype(float)
    return bootstrap(values, groups=groups, n_resamples=n_resamples, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# Shared steps
# ----------------------------------------------------------------------------------------------------------------
def _prepared(tokenizer, name: str, fmt: PromptFormat, config: SweepConfig) -> tuple[Task, PromptFormat, list, list]:
    """The filtered task (its own scorer), its prompt format, and its demonstration and query pools."""
    task = filter_single_token(load_task(name), tokenizer)
    demo_pool, query_pool = split_pairs(task.pairs, config.query_fraction, config.seed)
    return task, format_for_task(task, fmt), demo_pool, query_pool


def _with_sweep(model, tokenizer, name: str, layer: int, config: SweepConfig, fmt: PromptFormat
                ) -> tuple[Task, PromptFormat, list, list, DemoSweep]:
    """:func:`_prepared` and the task's demonstration-count sweep, read through the cache (the same call from every
    section)."""
    task, task_fmt, demo_pool, query_pool = _prepared(tokenizer, name, fmt, config)
    ks = [k for k in config.n_demos if k + config.n_dummies <= len(demo_pool)]
    sweep = cached_call(demo_count_sweep, model, tokenizer, demo_pool, query_pool, ks, layer, config.n_sets,
                        config.n_queries, seed=config.seed, scorer=task, fmt=task_fmt, n_dummies=config.n_dummies,
                        all_layers_at=config.all_layers_at)
    return task, task_fmt, demo_pool, query_pool, sweep


def _check_names(names) -> list[str]:
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or not names:
        raise TypeError(f"names must be a non-empty sequence of task names, got {names!r}")
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task names {unknown}; the tasks are {list(TASK_NAMES)}")
    return list(names)


def _check_common(model, names, layers, config, fmt) -> tuple[list[str], dict[str, int], SweepConfig, PromptFormat]:
    names = _check_names(names)
    if not isinstance(layers, Mapping) or any(n not in layers for n in names):
        raise TypeError(f"layers must map every task name in {names} to its block, got {layers!r}")
    top = n_layers(model) - 1
    layers = {n: check_int(f"layers[{n!r}]", layers[n], minimum=0, maximum=top) for n in names}
    if not isinstance(config, SweepConfig):
        raise TypeError(f"config must be a SweepConfig, got {type(config).__name__}")
    return names, layers, config, check_format(fmt)
