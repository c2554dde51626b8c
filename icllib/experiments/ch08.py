"""Chapter 08, conflicting tasks and what the vector says (Hendel et al., Sections 5 and 6).

- :func:`conflict_study`: for each pair (A, B), B's own evaluation (zero-shot, ICL, task vector and the dev sweep
  that chooses the block L, :func:`icllib.task_vectors.evaluate_task`) and the conflict: B's vector patched at L
  into A's full prompts (:func:`icllib.task_vectors.conflicting_tasks`), with per-prompt hits for intervals.
- :func:`testable_pairs`: on which pairs the paper's claim can be tested at all, decided on intervals.
- :func:`mean_task_vectors`: the mean ``theta_L(S)`` of every task (the vocabulary projection's input);
  :func:`contrast_tokens`, :func:`answer_hits` and :func:`shared_share` read it out through the unembedding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from icllib import lang_tasks
from icllib import task_vectors as tv
from icllib._checks import check_int
from icllib.cache import cached_call
from icllib.llm import model_parts

__all__ = ["ConflictStudy", "conflict_study", "testable_pairs", "conflict_table", "mean_task_vectors",
           "contrast_tokens", "answer_hits", "shared_share"]

Pair = tuple[str, str]


@dataclass
class ConflictStudy:
    """Chapter 08's conflict experiment: ``pairs`` (A, B) in order; ``b_results[B]``: B's own evaluation (its
    ``theta_test`` dropped), whose ``best_layer`` is the block L of the conflict; ``conflicts[A]``: the conflict
    with A's demonstrations and B's vector; ``shared[A]``: how many inputs A and B share (the possible queries)."""

    pairs: list[Pair]
    b_results: dict[str, tv.TaskVectorResult]
    conflicts: dict[str, tv.ConflictResult]
    shared: dict[str, int]


def conflict_study(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    n_dev: int = 50,
    n_conflict: int = 100,
    n_demos: int = 4,
    seed: int = 41,
    fmt: tv.PromptFormat | str = "example",
    progress: bool = False,
) -> ConflictStudy:
    """B's evaluation and the conflict for every pair (A, B) of ``pairs`` (names of the book's tasks).

    B's block L is the first maximum of its dev sweep over ``n_dev`` sets of ``n_demos`` demonstrations (B's test
    and zero-shot accuracies use ``n_dev`` sets and queries too). The conflict then draws ``n_conflict`` prompts of
    A with queries that B accepts, and patches ``theta_L(S_B)`` of as many sets of B (``n_demos`` each). Each task
    scores by its own rule. Defaults: the paper's Section 5 (4 demonstrations, 100 prompts per pair, seed 41).
    """
    if isinstance(pairs, str) or len(pairs) == 0 or any(len(p) != 2 or p[0] == p[1] for p in pairs):
        raise ValueError(f"pairs must be a non-empty list of (A, B) pairs of different task names, got {pairs!r}")
    n_dev = check_int("n_dev", n_dev, minimum=1)
    n_conflict = check_int("n_conflict", n_conflict, minimum=1)
    fmt = tv.check_format(fmt)
    tasks = {name: lang_tasks.filter_single_token(lang_tasks.load_task(name), tokenizer)
             for pair in pairs for name in pair}
    b_results, conflicts, shared = {}, {}, {}
    for a, b in pairs:
        if b not in b_results:
            result = tv.evaluate_task(model, tokenizer, tasks[b], fmt=fmt, n_demos=n_demos, n_dev=n_dev,
                                      n_test=n_dev, n_baseline=n_dev, seed=seed, progress=progress)
            b_results[b] = dataclasses.replace(result, theta_test=None)
        conflicts[a] = cached_call(tv.conflicting_tasks, model, tokenizer, tasks[a].pairs, tasks[b].pairs,
                                   b_results[b].best_layer, n_sets=n_conflict, n_demos=n_demos, seed=seed,
                                   fmt=tv.format_for_task(tasks[a], fmt), scorer_a=tasks[a], scorer_b=tasks[b])
        shared[a] = len(set(tasks[a].inputs) & set(tasks[b].inputs))
    return ConflictStudy([tuple(p) for p in pairs], b_results, conflicts, shared)


def testable_pairs(study: ConflictStudy) -> dict[Pair, dict[str, bool]]:
    """Whether the paper's claim can be tested on each pair, decided on 95% intervals, not on point values.

    ``"A in context"``: without the patch the model gives A's answer more often than B's (A-before interval above
    B-before's); ``"B's vector works"``: patched into B's bare queries, B's vector beats B's zero-shot accuracy
    (TV interval above the baseline's); ``"testable"``: both. Neither uses the prompts' patched predictions,
    which the claim is about.
    """
    if not isinstance(study, ConflictStudy):
        raise TypeError(f"study must be a ConflictStudy, got {type(study).__name__}")
    out = {}
    for a, b in study.pairs:
        c, r = study.conflicts[a], study.b_results[b]
        in_context = c.interval("a_before").above(c.interval("b_before"))
        works = r.interval("tv").above(r.interval("baseline"))
        out[(a, b)] = {"A in context": in_context, "B's vector works": works, "testable": in_context and works}
    return out


def conflict_table(study: ConflictStudy, paper: Mapping[str, Sequence[float]] | None = None) -> pd.DataFrame:
    """One row per pair: block L, the four accuracies with their 95% intervals as text, and (with ``paper``, keyed
    by A) the paper's four numbers beside them."""
    if not isinstance(study, ConflictStudy):
        raise TypeError(f"study must be a ConflictStudy, got {type(study).__name__}")
    columns = {"A before": "a_before", "B before": "b_before", "A after": "a_after", "B after": "b_after"}
    rows = []
    for a, b in study.pairs:
        c = study.conflicts[a]
        row = {"A -> B": f"{a} -> {b}", "block L": c.layer, "prompts": c.n_sets}
        for k, (label, which) in enumerate(columns.items()):
            row[label] = c.interval(which).format(".2f")
            if paper is not None:
                row[f"paper: {label}"] = paper[a][k]
        rows.append(row)
    return pd.DataFrame(rows).set_index("A -> B")


def mean_task_vectors(model, tokenizer, tasks: Sequence[str], layer: int, n_sets: int = 50, n_demos: int = 5,
                      seed: int = 41, fmt: tv.PromptFormat | str = "example", n_dummies: int = 1) -> torch.Tensor:
    """The mean over ``n_sets`` sets of ``theta_layer(S)`` for every task: float32 (n_tasks, d)."""
    thetas = tv.task_vectors_for(model, tokenizer, list(tasks), n_sets=n_sets, n_demos=n_demos, layers=int(layer),
                                 seed=seed, fmt=fmt, n_dummies=n_dummies)
    return thetas.mean(1).float()


def contrast_tokens(model, tokenizer, theta_mean, k: int = 10, pool: int = 300) -> list[list[str]]:
    """Each task's top tokens after removing the average task (Chapter 08, Eq. ch08-contrast).

    ``c_t = log softmax(W_U norm(theta_t)) - mean_s log softmax(W_U norm(theta_s))``; of the ``pool`` tokens of
    largest ``c_t``, the first ``k`` alphabetic ones, stripped and de-duplicated, best first.
    """
    parts = model_parts(model)
    theta_mean = torch.as_tensor(theta_mean)
    if theta_mean.ndim != 2 or theta_mean.shape[1] != parts.hidden_size or not theta_mean.is_floating_point():
        raise ValueError(f"theta_mean must be a float (n_tasks, {parts.hidden_size}) tensor, got "
                         f"{tuple(theta_mean.shape)}")
    k, pool = check_int("k", k, minimum=1), check_int("pool", pool, minimum=1)
    weight = next(parts.unembedding.parameters())
    with torch.no_grad():
        logits = parts.unembedding(parts.final_norm(theta_mean.to(weight.device, weight.dtype)[:, None, :]))[:, 0]
    log_probs = torch.log_softmax(logits.float(), -1)
    contrast = log_probs - log_probs.mean(0)
    out = []
    for row in contrast:
        words = [tokenizer.decode([j]).strip() for j in torch.topk(row, min(pool, len(row))).indices.tolist()]
        out.append(list(dict.fromkeys(w for w in words if w.isalpha()))[:k])
    return out


def answer_hits(top: Mapping[str, Sequence[str]], tasks: Mapping[str, lang_tasks.Task]) -> dict[str, int]:
    """How many of each task's top tokens are answers of that task (case included)."""
    return {name: sum(t in set(tasks[name].outputs) for t in words) for name, words in top.items()}


def shared_share(top: Mapping[str, Sequence[str]]) -> float:
    """The share of top-token slots filled by tokens that are in the top list of at least half of the tasks."""
    if len(top) == 0:
        raise ValueError("top must hold at least one task's tokens")
    counts = pd.Series([t for words in top.values() for t in words]).value_counts()
    common = set(counts[counts >= len(top) / 2].index)
    return float(np.mean([t in common for words in top.values() for t in words]))
