"""Tests of icllib.experiments.ch08: the conflict study, the testable-pairs rule, the table, the vocabulary read-outs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from icllib import lang_tasks, testing
from icllib import task_vectors as tv
from icllib.experiments import ch08

PAIRS = [("next_letter", "to_upper"), ("prev_letter", "next_letter")]


@pytest.fixture(scope="module")
def tok():
    return testing.CharTokenizer()


@pytest.fixture(scope="module")
def model():
    return testing.tiny_random_model("llama", n_layers=3, seed=6)


@pytest.fixture(scope="module")
def study(model, tok, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ICL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return ch08.conflict_study(model, tok, PAIRS, n_dev=3, n_conflict=5, n_demos=2, seed=1)


def test_conflict_study_runs_both_halves(study, model, tok):
    assert study.pairs == PAIRS and set(study.b_results) == {"to_upper", "next_letter"}
    assert set(study.conflicts) == {"next_letter", "prev_letter"}
    for a, b in PAIRS:
        c, r = study.conflicts[a], study.b_results[b]
        assert c.layer == r.best_layer and c.n_sets == 5 and len(c.hits["b_after"]) == 5
        assert r.theta_test is None and r.n_test == 3 and r.n_demos == 2
    assert study.shared["next_letter"] == 25 and study.shared["prev_letter"] == 24  # a..y and b..z
    # the conflict is the library's, with each task as its own scorer
    tasks = {n: lang_tasks.filter_single_token(lang_tasks.TASKS[n], tok) for n in ("next_letter", "to_upper")}
    direct = tv.conflicting_tasks(model, tok, tasks["next_letter"].pairs, tasks["to_upper"].pairs,
                                  study.b_results["to_upper"].best_layer, n_sets=5, n_demos=2, seed=1,
                                  fmt=tv.format_for_task(tasks["next_letter"]), scorer_a=tasks["next_letter"],
                                  scorer_b=tasks["to_upper"])
    assert direct.predictions_after == study.conflicts["next_letter"].predictions_after


@pytest.mark.parametrize("kwargs, error, match", [
    ({"pairs": "next_letter"}, ValueError, "pairs"),
    ({"pairs": []}, ValueError, "pairs"),
    ({"pairs": [("to_upper", "to_upper")]}, ValueError, "pairs"),
    ({"pairs": [("to_upper",)]}, ValueError, "pairs"),
    ({"n_dev": 0}, ValueError, "n_dev"),
    ({"n_conflict": 0}, ValueError, "n_conflict"),
    ({"fmt": "nope"}, ValueError, "fmt"),
    ({"pairs": [("to_upper", "no_such_task")]}, ValueError, "no_such_task"),
])
def test_conflict_study_bad_inputs(model, tok, kwargs, error, match):
    args = {"pairs": PAIRS, "n_dev": 2, "n_conflict": 2, "n_demos": 2}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ch08.conflict_study(model, tok, **args)


def _with_hits(study, a, b, conflict_hits, b_hits):
    """A copy of ``study`` whose pair (a, b) has the given per-prompt hits."""
    conflicts = dict(study.conflicts)
    conflicts[a] = dataclasses.replace(study.conflicts[a], hits={k: np.array(v) for k, v in conflict_hits.items()})
    results = dict(study.b_results)
    results[b] = dataclasses.replace(study.b_results[b], hits={k: np.array(v) for k, v in b_hits.items()})
    return dataclasses.replace(study, conflicts=conflicts, b_results=results)


def test_testable_pairs_is_decided_on_intervals(study):
    many, few = [True] * 40, [False] * 40
    a, b = PAIRS[0]
    works = {"tv": many, "icl": many, "baseline": few}
    clear = _with_hits(study, a, b, {"a_before": many, "b_before": few, "a_after": few, "b_after": many}, works)
    assert ch08.testable_pairs(clear)[(a, b)] == {"A in context": True, "B's vector works": True, "testable": True}
    # the same point values on 3 prompts: intervals overlap, so the pair is not testable
    small = _with_hits(study, a, b, {"a_before": [True] * 3, "b_before": [False] * 3, "a_after": [False] * 3,
                                     "b_after": [True] * 3}, {k: v[:3] for k, v in works.items()})
    assert ch08.testable_pairs(small)[(a, b)]["testable"] is False
    weak = _with_hits(study, a, b, {"a_before": many, "b_before": few, "a_after": few, "b_after": many},
                      {"tv": many[:20] + few[:20], "icl": many, "baseline": many[:18] + few[:22]})
    assert ch08.testable_pairs(weak)[(a, b)] == {"A in context": True, "B's vector works": False, "testable": False}
    with pytest.raises(TypeError, match="study"):
        ch08.testable_pairs({})


def test_conflict_table(study):
    paper = {"next_letter": (0.9, 0.0, 0.1, 0.8), "prev_letter": (0.5, 0.1, 0.1, 0.7)}
    table = ch08.conflict_table(study, paper)
    assert list(table.index) == ["next_letter -> to_upper", "prev_letter -> next_letter"]
    assert table.loc["prev_letter -> next_letter", "paper: B after"] == 0.7
    c = study.conflicts["next_letter"]
    assert table.loc["next_letter -> to_upper", "A after"] == c.interval("a_after").format(".2f")
    assert "paper: A before" not in ch08.conflict_table(study).columns
    with pytest.raises(TypeError, match="study"):
        ch08.conflict_table(None)


def test_mean_task_vectors_and_contrast_tokens(model, tok, monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path))
    names = ["to_upper", "to_lower", "next_letter"]
    mean = ch08.mean_task_vectors(model, tok, names, 1, n_sets=3, n_demos=2, seed=2)
    full = tv.task_vectors_for(model, tok, names, n_sets=3, n_demos=2, layers=1, seed=2, n_dummies=1)
    assert mean.shape == (3, 32) and mean.dtype == torch.float32
    torch.testing.assert_close(mean, full.mean(1))
    top = ch08.contrast_tokens(model, tok, mean, k=4, pool=50)
    assert len(top) == 3 and all(len(t) <= 4 and all(w.isalpha() for w in t) for t in top)
    assert all(len(set(t)) == len(t) for t in top)
    with pytest.raises(ValueError, match="theta_mean"):
        ch08.contrast_tokens(model, tok, mean[0])
    with pytest.raises(ValueError, match="theta_mean"):
        ch08.contrast_tokens(model, tok, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="k"):
        ch08.contrast_tokens(model, tok, mean, k=0)


def test_answer_hits_and_shared_share(tok):
    tasks = {n: lang_tasks.filter_single_token(lang_tasks.TASKS[n], tok) for n in ("to_upper", "to_lower")}
    top = {"to_upper": ["A", "B", "the"], "to_lower": ["the", "a", "Q"]}
    assert ch08.answer_hits(top, tasks) == {"to_upper": 2, "to_lower": 1}
    assert ch08.shared_share(top) == pytest.approx(1.0)  # with two tasks, one task is half of them
    three = {"x": ["the", "a"], "y": ["the", "b"], "z": ["c", "d"]}
    assert ch08.shared_share(three) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="top"):
        ch08.shared_share({})
