"""Chapter 05 (ICL as a hypothesis class): the task-vector test on the 18 tasks, its controls, and the per-task view.

:func:`evaluate_tasks` is Hendel et al.'s main experiment (baseline, ICL and task-vector accuracy of every task,
the block chosen on dev sets); :func:`task_controls` runs :func:`icllib.task_vectors.controls.run_controls` on
the same test sets at the chosen blocks. Both go through the on-disk cache task by task (a record run that is cut
off resumes), and return slim results: hits and curves, not the task vectors themselves. The remaining functions
are the chapter's summaries of those results (pure and cheap).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from icllib.lang_tasks import CATEGORIES, filter_single_token, load_task
from icllib.stats import Interval, accuracy, bootstrap, paired_difference
from icllib.task_vectors.controls import ControlResult, controls_for_task
from icllib.task_vectors.protocol import TaskVectorResult, evaluate_task

__all__ = ["slim", "evaluate_tasks", "task_controls", "n_pairs", "pooled", "share_of_icl", "per_task_gaps",
           "category_of"]

#: The category of every task.
category_of: dict[str, str] = {t: c for c, names in CATEGORIES.items() for t in names}


def slim(result: TaskVectorResult, keep_queries: bool = True) -> TaskVectorResult:
    """``result`` without what the figures do not need: the task vectors (n_test x d floats), the decoded
    predictions, and (``keep_queries=False``) the queries; the accuracies, hits and dev curve stay."""
    if not isinstance(result, TaskVectorResult):
        raise TypeError(f"result must be a TaskVectorResult, got {type(result).__name__}")
    drop = {"theta_test": None, "predictions": {}, "baseline_queries": []}
    if not keep_queries:
        drop["test_queries"] = []
    return dataclasses.replace(result, dev_curve=np.asarray(result.dev_curve, dtype=np.float32), **drop)


def _check_tasks(tasks) -> list[str]:
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
        raise TypeError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    return [load_task(t).name for t in tasks]


def evaluate_tasks(model, tokenizer, tasks: Sequence[str], fmt: str = "example", n_demos: int = 5, n_dev: int = 50,
                   n_test: int = 50, n_baseline: int = 100, seed: int = 41,
                   progress: bool = False) -> dict[str, TaskVectorResult]:
    """``task_vectors.evaluate_task`` on every task (each cached on disk), slimmed (:func:`slim`): the paper's main
    experiment at the given counts (the paper's: 5 demonstrations, 50 dev and 50 test sets, 100 zero-shot
    queries, seed 41)."""
    return {name: slim(evaluate_task(model, tokenizer, name, fmt=fmt, n_demos=n_demos, n_dev=n_dev, n_test=n_test,
                                     n_baseline=n_baseline, seed=seed, progress=False))
            for name in tqdm(_check_tasks(tasks), desc="tasks", disable=not progress)}


def task_controls(model, tokenizer, tasks: Sequence[str], fmt: str = "example", n_demos: int = 5, n_dev: int = 50,
                  n_test: int = 50, n_baseline: int = 100, seed: int = 41,
                  progress: bool = False) -> dict[str, ControlResult]:
    """The controls of every task (``controls.run_controls``) on the test sets of :func:`evaluate_tasks` with the
    same arguments, at the block it chose on dev data (each task cached on disk)."""
    out = {}
    for name in tqdm(_check_tasks(tasks), desc="controls", disable=not progress):
        layer = evaluate_task(model, tokenizer, name, fmt=fmt, n_demos=n_demos, n_dev=n_dev, n_test=n_test,
                              n_baseline=n_baseline, seed=seed, progress=False).best_layer
        out[name] = controls_for_task(model, tokenizer, name, layer, fmt=fmt, n_demos=n_demos, n_dev=n_dev,
                                      n_test=n_test, seed=seed)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Summaries (cheap)
# ----------------------------------------------------------------------------------------------------------------
def n_pairs(tokenizer, tasks: Sequence[str]) -> dict[str, int]:
    """How many pairs of each task survive the single-token filter for this tokenizer."""
    return {name: len(filter_single_token(load_task(name), tokenizer)) for name in _check_tasks(tasks)}


def pooled(results: Mapping[str, object], which: str, tasks: Sequence[str] | None = None) -> Interval:
    """The accuracy of ``which`` over the queries of all ``tasks`` (default all) pooled, with its Wilson interval:
    with equal counts per task it is the mean over tasks (a task-stratified sample, so Wilson is conservative)."""
    names = list(results) if tasks is None else list(tasks)
    if not names:
        raise ValueError("tasks must name at least one task")
    return accuracy(np.concatenate([results[t].hits[which] for t in names]))


def share_of_icl(results: Mapping[str, TaskVectorResult], tasks: Sequence[str] | None = None,
                 seed: int = 0) -> Interval:
    """Pooled TV accuracy over pooled ICL accuracy, with a bootstrap interval over test queries (TV and ICL of a
    query resampled together)."""
    names = list(results) if tasks is None else list(tasks)
    tv = np.concatenate([results[t].hits["tv"] for t in names]).astype(float)
    icl = np.concatenate([results[t].hits["icl"] for t in names]).astype(float)

    def ratio(index: np.ndarray) -> float:
        rows = index.astype(int)
        return tv[rows].mean() / max(icl[rows].mean(), 1e-12)

    return bootstrap(np.arange(len(tv)), ratio, seed=seed)


def per_task_gaps(results: Mapping[str, object], a: str = "tv", b: str = "icl", seed: int = 0) -> dict[str, Interval]:
    """Per task, mean(a) - mean(b) on the same test queries with its paired bootstrap interval."""
    return {t: paired_difference(r.hits[a].astype(float), r.hits[b].astype(float), seed=seed)
            for t, r in results.items()}
