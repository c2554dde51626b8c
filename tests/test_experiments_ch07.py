"""Tests of icllib.experiments.ch07: the nearest-centroid rule, the token-embedding control, distances, geometry()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icllib import lang_tasks, testing
from icllib import task_vectors as tv
from icllib.experiments import ch07

TASKS = ["to_upper", "to_lower", "next_letter", "prev_letter"]


@pytest.fixture(scope="module")
def tok():
    return testing.CharTokenizer()


@pytest.fixture(scope="module")
def model():
    return testing.tiny_random_model("llama", n_layers=3, seed=4)


@pytest.fixture()
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_split_quarters():
    labels, quarter = ch07.split_quarters(3, 8)
    assert labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    assert quarter[:8].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and (quarter[8:16] == quarter[:8]).all()
    _, odd = ch07.split_quarters(2, 5)
    assert odd[:5].tolist() == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="n_sets"):
        ch07.split_quarters(3, 3)
    with pytest.raises(ValueError, match="n_tasks"):
        ch07.split_quarters(1, 8)
    with pytest.raises(TypeError, match="n_sets"):
        ch07.split_quarters(3, 8.0)


def test_nearest_centroid_finds_separated_clusters_and_follows_the_cosine():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 5) * 10
    labels = np.repeat(np.arange(3), 6)
    Z = centres[labels] + rng.normal(size=(18, 5))
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    fit = np.tile(np.arange(6) < 3, 3)
    assert (ch07.nearest_centroid(Z, labels, fit, ~fit) == labels[~fit]).all()
    # scaling a row does not change its cosine, so not its prediction
    scaled = Z * rng.uniform(0.5, 2.0, size=(18, 1))
    assert (ch07.nearest_centroid(scaled, labels, fit, ~fit) == labels[~fit]).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"Z": np.zeros((4, 2, 2))}, "Z must be"),
    ({"Z": np.full((4, 2), np.nan)}, "Z must be"),
    ({"labels": np.array([0, 1, 0])}, "labels"),
    ({"labels": np.array([0.0, 1.0, 0.0, 1.0])}, "labels"),
    ({"fit_rows": np.array([1, 1, 0, 0])}, "fit_rows"),
    ({"test_rows": np.array([True, False])}, "test_rows"),
    ({"fit_rows": np.array([True, False, True, False])}, "every task"),
])
def test_nearest_centroid_bad_inputs(kwargs, match):
    args = {"Z": np.eye(4, 2) + 0.1, "labels": np.array([0, 1, 0, 1]), "fit_rows": np.array([True, True, False, False]),
            "test_rows": np.array([False, False, True, True])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ch07.nearest_centroid(**args)


def test_token_embedding_means_is_the_mean_embedding_of_the_tokens(model, tok):
    fmt = tv.check_format("example")
    groups = [["example:a-> b\nexample:c->", "example:e->"], ["example:q->", "example:qq->"]]
    got = ch07.token_embedding_means(model, tok, groups, fmt)
    weight = model.get_input_embeddings().weight.detach().double()
    expected = [np.mean([weight[tok.encode(p)].mean(0).numpy() for p in g], axis=0) for g in groups]
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-6, atol=1e-7)
    with_bos = ch07.token_embedding_means(model, tok, groups, tv.check_format("example+bos"))
    assert not np.allclose(with_bos, got)


def test_token_embedding_means_bad_inputs(model, tok):
    with pytest.raises(ValueError, match="prompt_groups"):
        ch07.token_embedding_means(model, tok, [], "example")
    with pytest.raises(ValueError, match="prompt_groups"):
        ch07.token_embedding_means(model, tok, "example:a->", "example")
    with pytest.raises(ValueError, match="every group"):
        ch07.token_embedding_means(model, tok, [["example:a->"], []], "example")
    with pytest.raises(ValueError, match="fmt"):
        ch07.token_embedding_means(model, tok, [["example:a->"]], "nope")
    with pytest.raises(TypeError, match="input token embeddings"):
        ch07.token_embedding_means(torch.nn.Linear(2, 2), tok, [["example:a->"]], "example")


def test_distance_ratio_is_the_pooled_ratio_with_a_task_bootstrap():
    labels = np.repeat(np.arange(4), 5)
    within = np.linspace(0.1, 0.2, 20)
    between = 3 * within + 0.01 * labels
    ratio = ch07.distance_ratio(within, between, labels, n_resamples=200)
    assert ratio.estimate == pytest.approx(between.mean() / within.mean())
    assert ratio.low <= ratio.estimate <= ratio.high and ratio.method == "cluster bootstrap" and ratio.n == 4
    with pytest.raises(ValueError, match="within_by_set"):
        ch07.distance_ratio(within, between[:-1], labels)
    with pytest.raises(ValueError, match="within_by_set"):
        ch07.distance_ratio(-within, between, labels)


def test_one_thread_pins_and_restores():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ch07.one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_geometry_on_a_tiny_model(model, tok, cache):
    result = ch07.geometry(model, tok, TASKS, n_sets=8, n_demos=2, n_dummies=1, seed=3)
    T, n, L = len(TASKS), 8, 3
    assert result.tasks == TASKS and result.n_layers == L and 0 <= result.layer < L
    assert result.held_out_hits.shape == (L, T * n // 2) and result.predicted.shape == (T * n // 2,)
    assert result.layer == int(np.argmax(result.selection))
    assert (result.held_out_hits[result.layer] == (result.predicted == result.labels[result.held_out])).all()
    assert result.control_hits[ch07.TOKENS].shape == (T * n // 2,) and result.tsne.shape == (T * n, 2)
    assert result.tsne.dtype == np.float32 and set(result.nearest_task) <= set(TASKS)
    assert result.interval().estimate == result.held_out_hits[result.layer].mean()
    assert result.interval(ch07.TOKENS).estimate == result.control_hits[ch07.TOKENS].mean()
    assert sum(result.histogram["within"]) == T * n * (n - 1) // 2
    assert result.ratio().estimate == pytest.approx(result.between_by_set.mean() / result.within_by_set.mean())
    with pytest.raises(ValueError, match="which"):
        result.interval(L)


def test_geometry_control_uses_the_prompts_theta_is_read_from(model, tok, cache):
    """The prompts the control embeds are those task_vectors_for reads theta from (same draws, same order)."""
    tasks = [lang_tasks.filter_single_token(lang_tasks.TASKS[name], tok) for name in TASKS[:2]]
    fmt = tv.check_format("example")
    groups = ch07._prompt_groups(tasks, 4, 2, 2, 5, fmt)
    thetas = tv.task_vectors_for(model, tok, tasks, n_sets=4, n_demos=2, seed=5, n_dummies=2)
    for task, task_groups, theta in zip(tasks, groups, thetas):
        states = tv.last_position_states(model, tok, [p for g in task_groups for p in g],
                                         tv.format_for_task(task, fmt))
        torch.testing.assert_close(states.view(4, 2, *states.shape[1:]).mean(1), theta, atol=1e-5, rtol=1e-5)


def test_geometry_does_not_depend_on_the_thread_count(model, tok, cache, monkeypatch):
    monkeypatch.setenv("ICL_NO_CACHE", "1")
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(ch07.geometry(model, tok, TASKS, n_sets=8, n_demos=2, n_dummies=1, seed=3))
    finally:
        torch.set_num_threads(before)
    one, two = results
    assert np.array_equal(one.tsne, two.tsne) and np.array_equal(one.held_out_hits, two.held_out_hits)
    assert np.array_equal(one.within_by_set, two.within_by_set)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tasks": "to_upper"}, ValueError, "tasks"),
    ({"tasks": ["to_upper"]}, ValueError, "at least two"),
    ({"tasks": ["to_upper", "no_such_task"]}, ValueError, "no_such_task"),
    ({"n_sets": 3}, ValueError, "n_sets"),
    ({"tsne_seed": -1}, ValueError, "tsne_seed"),
    ({"fmt": "nope"}, ValueError, "fmt"),
])
def test_geometry_bad_inputs(model, tok, kwargs, error, match):
    args = {"tasks": TASKS, "n_sets": 8, "n_demos": 2, "n_dummies": 1}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ch07.geometry(model, tok, **args)
