"""Chapter 06 (where the task vector lives): the dev curves, what the patched query answers block by block, and
the prompt-format ablation.

The dev curves are those of Chapter 05's runs (:func:`icllib.task_vectors.evaluate_task`, read from the on-disk
cache when Chapter 05 ran first); :func:`answer_curves` scores the patched predictions of every block against the
query's and the dummy queries' answers; :func:`format_ablation` reruns the evaluation in every prompt format.
Results are slim: curves and hits, never task vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from icllib.experiments.ch05 import _check_tasks, slim
from icllib.task_vectors.controls import AnswerCurves, answer_curves_for_task
from icllib.task_vectors.formats import check_format
from icllib.task_vectors.protocol import TaskVectorResult, evaluate_task

__all__ = ["dev_curves", "answer_curves", "format_ablation"]


def dev_curves(model, tokenizer, tasks: Sequence[str], fmt: str = "example", n_demos: int = 5, n_dev: int = 50,
               n_test: int = 50, n_baseline: int = 100, seed: int = 41,
               progress: bool = False) -> dict[str, np.ndarray]:
    """The dev accuracy of every block (float32, (L,)) of each task's evaluation with these arguments."""
    return {name: np.asarray(evaluate_task(model, tokenizer, name, fmt=fmt, n_demos=n_demos, n_dev=n_dev,
                                           n_test=n_test, n_baseline=n_baseline, seed=seed,
                                           progress=False).dev_curve, np.float32)
            for name in tqdm(_check_tasks(tasks), desc="dev curves", disable=not progress)}


def answer_curves(model, tokenizer, tasks: Sequence[str], fmt: str = "example", n_demos: int = 5, n_dev: int = 50,
                  n_test: int = 50, seed: int = 41, progress: bool = False) -> dict[str, AnswerCurves]:
    """``controls.answer_curves`` of every task on its test sets: does the query patched at block ``l`` give its
    own answer or a dummy query's?"""
    return {name: answer_curves_for_task(model, tokenizer, name, fmt=fmt, n_demos=n_demos, n_dev=n_dev,
                                         n_test=n_test, seed=seed)
            for name in tqdm(_check_tasks(tasks), desc="answers", disable=not progress)}


def format_ablation(model, tokenizer, tasks: Sequence[str], formats: Sequence[str], n_demos: int = 5,
                    n_dev: int = 50, n_test: int = 50, n_baseline: int = 100, seed: int = 41,
                    progress: bool = False) -> dict[str, dict[str, TaskVectorResult]]:
    """``{format: {task: result}}``: the evaluation of every task in every prompt format (names of
    ``task_vectors.FORMATS``), each cached on disk, slimmed to accuracies, hits and dev curves."""
    if isinstance(formats, str) or not formats:
        raise TypeError(f"formats must be a non-empty list of format names, got {formats!r}")
    for f in formats:
        if not isinstance(f, str):
            raise TypeError(f"formats must hold format names (strings), got {f!r}")
        check_format(f)
    names = _check_tasks(tasks)
    out: dict[str, dict[str, TaskVectorResult]] = {f: {} for f in formats}
    for f in tqdm(formats, desc="formats", disable=not progress):
        for name in names:
            result = evaluate_task(model, tokenizer, name, fmt=f, n_demos=n_demos, n_dev=n_dev, n_test=n_test,
                                   n_baseline=n_baseline, seed=seed, progress=False)
            out[f][name] = slim(result, keep_queries=False)
    return out
