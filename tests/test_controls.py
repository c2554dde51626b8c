"""Tests of icllib.task_vectors.controls: the control vectors, the shared test sets, identities of the conditions."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch

from icllib import lang_tasks, testing
from icllib import task_vectors as tv
from icllib.task_vectors import controls

LETTERS = [(c, chr(ord(c) + 1)) for c in string.ascii_lowercase[:-1]]  # next_letter, 25 pairs
SIZES = dict(n_demos=3, n_dev=3, n_test=5, seed=4)


@pytest.fixture(scope="module")
def tok():
    return testing.CharTokenizer()


@pytest.fixture(scope="module")
def model():
    return testing.tiny_random_model("llama", n_layers=3, seed=2)


class Recorder:
    """A scorer that accepts everything and remembers what it was asked (prediction, x, y)."""

    def __init__(self):
        self.calls = []

    def __call__(self, prediction, x, y):
        self.calls.append((prediction, x, y))
        return True


# ----------------------------------------------------------------------------------------------------------------
# The control vectors and demonstrations
# ----------------------------------------------------------------------------------------------------------------
def test_shuffle_labels_is_a_derangement_of_the_labels():
    demos = [(str(i), chr(ord("A") + i)) for i in range(6)]
    for seed in range(20):
        got = controls.shuffle_labels(demos, seed)
        assert [x for x, _ in got] == [x for x, _ in demos]  # inputs stay in place
        assert sorted(y for _, y in got) == sorted(y for _, y in demos)  # the same labels
        assert all(y != y0 for (_, y), (_, y0) in zip(got, demos))  # no input keeps its label
    assert controls.shuffle_labels(demos, 3) == controls.shuffle_labels(demos, np.random.default_rng(3))
    assert controls.shuffle_labels(demos[:2], 0) == [("0", "B"), ("1", "A")]


def test_random_like_keeps_the_norms_and_draws_fresh_directions():
    theta = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)) * torch.tensor([[1.0], [2.0], [5.0], [0.5]])
    got = controls.random_like(theta, 7)
    assert got.dtype == torch.float32 and got.shape == theta.shape
    torch.testing.assert_close(got.norm(dim=1), theta.norm(dim=1))
    assert torch.equal(got, controls.random_like(theta.double(), np.random.default_rng(7)))
    cosine = torch.nn.functional.cosine_similarity(got, theta, dim=1)
    assert cosine.abs().max() < 0.9  # not the same directions (16 dimensions: random cosines are small)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: controls.shuffle_labels([("a", "b")], 0), ValueError, "at least 2"),
        (lambda: controls.shuffle_labels("ab", 0), TypeError, "demos"),
        (lambda: controls.shuffle_labels([("a", "b"), ("c", "d")], -1), ValueError, "generator"),
        (lambda: controls.shuffle_labels([("a", "b"), ("c", "d")], "x"), TypeError, "generator"),
        (lambda: controls.random_like(np.zeros((2, 3)), 0), TypeError, "theta"),
        (lambda: controls.random_like(torch.zeros(3), 0), TypeError, "theta"),
        (lambda: controls.random_like(torch.zeros(2, 3, dtype=torch.long), 0), TypeError, "theta"),
        (lambda: controls.evaluation_test_sets(LETTERS[:4], n_demos=3), ValueError, "pairs"),
        (lambda: controls.evaluation_test_sets(LETTERS, n_test=0), ValueError, "n_test"),
    ],
)
def test_control_inputs_are_checked(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ----------------------------------------------------------------------------------------------------------------
# The controls on the evaluation's test sets
# ----------------------------------------------------------------------------------------------------------------
def test_controls_use_the_evaluations_test_sets_and_its_task_vector(model, tok):
    result = tv.evaluate(model, tok, LETTERS, n_baseline=4, progress=False, **SIZES)
    sets, dummies = controls.evaluation_test_sets(LETTERS, **SIZES)
    assert [query for _, query in sets] == result.test_queries and all(len(d) == 2 for d in dummies)
    expected = dict(zip([x for x, _ in result.test_queries], result.predictions["tv"]))
    same_as_evaluate = lambda prediction, x, y: prediction == expected[x]  # noqa: E731
    got = controls.run_controls(model, tok, LETTERS, result.best_layer, scorer=same_as_evaluate, **SIZES)
    assert got.test_queries == result.test_queries and got.layer == result.best_layer and got.n_test == 5
    assert set(got.hits) == set(controls.CONDITIONS)
    assert got.hits["tv"].all()  # the "tv" condition is evaluate's task vector, prediction for prediction
    assert all(h.dtype == bool and h.shape == (5,) for h in got.hits.values())
    assert got.interval("tv").estimate == got.accuracy("tv") == 1.0
    again = controls.run_controls(model, tok, LETTERS, result.best_layer, method="batched", batch_size=2,
                                  scorer=same_as_evaluate, **SIZES)
    assert all(np.array_equal(again.hits[c], got.hits[c]) for c in controls.CONDITIONS)  # deterministic


def test_real_query_at_the_last_block_is_icl(model, tok):
    """Patching ``h_{L-1}([S, x])[-1]`` after the last block leaves only the final norm: the ICL prediction."""
    recorder = Recorder()
    got = controls.run_controls(model, tok, LETTERS, 2, scorer=recorder, **SIZES)
    assert all(h.all() for h in got.hits.values())
    by_condition = {c: [p for p, _, _ in recorder.calls[5 * k:5 * (k + 1)]] for k, c in enumerate(controls.CONDITIONS)}
    assert by_condition["real_query"] == by_condition["icl"]
    assert [x for _, x, _ in recorder.calls[:5]] == [x for x, _ in got.test_queries]


def test_controls_bad_inputs(model, tok):
    with pytest.raises(ValueError, match="layer"):
        controls.run_controls(model, tok, LETTERS, 3, **SIZES)
    with pytest.raises(ValueError, match="pairs"):  # 3 demonstrations, a query and 4 dummies need 8 pairs
        controls.run_controls(model, tok, LETTERS[:7], 0, **SIZES)
    with pytest.raises(ValueError, match="fmt"):
        controls.run_controls(model, tok, LETTERS, 0, fmt="nope", **SIZES)
    with pytest.raises(TypeError, match="scorer"):
        controls.run_controls(model, tok, LETTERS, 0, scorer="exact", **SIZES)
    result = controls.ControlResult(layer=0, n_test=1, hits={"tv": np.array([True])})
    with pytest.raises(ValueError, match="which"):
        result.interval("icl")


def test_controls_for_task_is_run_controls_on_the_filtered_task_and_cached(tok, monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path))
    model = testing.tiny_random_model("llama", n_layers=2, seed=7)
    first = controls.controls_for_task(model, tok, "to_upper", 1, **SIZES)
    assert list(tmp_path.glob("results/controls.run_controls-*.pkl"))
    task = lang_tasks.filter_single_token(lang_tasks.TASKS["to_upper"], tok)
    direct = controls.run_controls(model, tok, task.pairs, 1, scorer=task, fmt=tv.format_for_task(task), **SIZES)
    assert all(np.array_equal(direct.hits[c], first.hits[c]) for c in controls.CONDITIONS)
    evaluated = tv.evaluate_task(model, tok, "to_upper", n_baseline=2, progress=False, **SIZES)
    assert first.test_queries == evaluated.test_queries
    with pytest.raises(TypeError, match="cache"):
        controls.controls_for_task(model, tok, "to_upper", 1, cache="yes")
    with pytest.raises(TypeError, match="task"):
        controls.controls_for_task(model, tok, 3, 1)


# ----------------------------------------------------------------------------------------------------------------
# What the patched query answers, block by block
# ----------------------------------------------------------------------------------------------------------------
def test_answer_curves_score_the_query_and_the_dummies(model, tok):
    recorder = Recorder()
    got = controls.answer_curves(model, tok, LETTERS, scorer=recorder, **SIZES)
    assert got.query_hits.shape == got.dummy_hits.shape == (5, 3) and got.ambiguous.shape == (5,)
    assert got.query_hits.all() and got.dummy_hits.all() and got.ambiguous.all()
    sets, dummies = controls.evaluation_test_sets(LETTERS, **SIZES)
    answer = dict(LETTERS)
    asked = {(x, y) for _, x, y in recorder.calls}
    assert {query for _, query in sets} <= asked and {(d, answer[d]) for ds in dummies for d in ds} <= asked
    # the query's hits at a block are the "tv" condition of the controls patched at that block
    exact = controls.answer_curves(model, tok, LETTERS, **SIZES)
    for layer in range(3):
        at_layer = controls.run_controls(model, tok, LETTERS, layer, **SIZES)
        assert np.array_equal(exact.query_hits[:, layer], at_layer.hits["tv"])
    rates = exact.rates("dummy")
    assert rates.shape == (3,) and ((0 <= rates) & (rates <= 1)).all()
    with pytest.raises(ValueError, match="which"):
        exact.rates("icl")


def test_answer_curves_leave_out_ambiguous_sets():
    curves = controls.AnswerCurves(query_hits=np.array([[True, False], [False, False]]),
                                   dummy_hits=np.array([[True, True], [False, True]]),
                                   ambiguous=np.array([True, False]))
    assert curves.rates("query").tolist() == [0.0, 0.0] and curves.rates("dummy").tolist() == [0.0, 1.0]


def test_answer_curves_for_task_is_cached(tok, monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path))
    model = testing.tiny_random_model("llama", n_layers=2, seed=7)
    first = controls.answer_curves_for_task(model, tok, "next_letter", **SIZES)
    assert list(tmp_path.glob("results/controls.answer_curves-*.pkl"))
    uncached = controls.answer_curves_for_task(model, tok, "next_letter", cache=False, **SIZES)
    assert np.array_equal(first.dummy_hits, uncached.dummy_hits)
    with pytest.raises(ValueError, match="n_dev"):
        controls.answer_curves_for_task(model, tok, "next_letter", n_dev=0)
    with pytest.raises(ValueError, match="fmt"):
        controls.answer_curves(model, tok, LETTERS, fmt="nope", **SIZES)
