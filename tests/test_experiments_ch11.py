"""Tests of icllib.experiments.ch11 on a tiny random model and the character tokenizer (letter tasks only)."""

from __future__ import annotations

import numpy as np
import pytest
from icllib import llm, records, stats, testing
from icllib import tv_experiments as tx
from icllib.cache import fingerprint
from icllib.experiments import ch11

CONFIG = ch11.SweepConfig(n_demos=(1, 2, 3), n_sets=4, n_queries=2, query_fraction=0.3, seed=3, all_layers_at=3)
TASKS = ["to_upper", "next_letter"]  # single characters: they survive the character tokenizer's filter


@pytest.fixture(scope="module")
def tiny():
    return testing.tiny_random_model("llama", n_layers=3, seed=2)


@pytest.fixture(scope="module")
def tok():
    return testing.CharTokenizer()


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path / "cache"))


def test_chapter5_choices_reduce_evaluate_task(tiny, tok):
    out = ch11.chapter5_choices(tiny, tok, ["to_upper"], n_demos=2, n_dev=3, n_test=4, n_baseline=4, seed=0)
    choice = out["to_upper"]
    assert choice.n_pairs == 26 and 0 <= choice.best_layer < llm.n_layers(tiny)
    assert choice.dev_curve.shape == (llm.n_layers(tiny),)
    assert choice.best_layer == int(np.nanargmax(choice.dev_curve))
    assert choice.hits["tv"].shape == (4,) and choice.hits["baseline"].dtype == bool


def test_sections_share_one_sweep_and_return_hits(tiny, tok):
    layers = {"to_upper": 1, "next_letter": 2}
    sweeps = ch11.demo_count_summaries(tiny, tok, TASKS, layers, CONFIG, n_resamples=50)
    s = sweeps["to_upper"]
    assert s.n_demos == [1, 2, 3] and s.layer == 1 and s.n_demo_pool + s.n_query_pool == s.n_pairs == 26
    assert s.tv_hits[2].shape == (4, 2) and s.icl_hits[3].shape == (4,)
    assert s.spread.shape == (3,) and np.all(s.dummy_spread <= s.spread * 3)
    assert isinstance(s.slope, stats.Interval) and s.slope.low <= s.slope.high
    # the slope's point estimate is the log-log slope of the spreads over k >= 2
    assert s.slope.estimate == pytest.approx(np.polyfit(np.log([2, 3]), np.log(s.spread[1:].astype(float)), 1)[0],
                                             rel=1e-4)
    avg = ch11.averaging(tiny, tok, TASKS, layers, CONFIG, n_demos=(2, 3), group_sizes=(1, 2, 4), n_queries=6)
    assert set(avg["next_letter"]) == {2, 3} and avg["next_letter"][3].hits[4].shape == (6,)
    # both group sizes on the same queries
    assert avg["to_upper"][2].queries == avg["to_upper"][2].queries[:6]
    ra = ch11.replacement_vs_addition(tiny, tok, TASKS, layers, CONFIG, scales=(1.0,), n_bare=5)
    assert ra["to_upper"].replace_set.shape == (CONFIG.n_sets, llm.n_layers(tiny))
    inter = ch11.interpolation(tiny, tok, "to_upper", "next_letter", 1, layers, CONFIG, [0.0, 0.5, 1.0],
                               n_queries=4)
    assert inter.labels.shape == (3, len(inter.queries)) and 2 <= len(inter.queries) <= 4
    assert set(np.unique(inter.labels)) <= {tx.NEITHER, tx.ANSWER_A, tx.ANSWER_B}


def test_results_survive_a_record_round_trip(tiny, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("ICL_RECORDS_DIR", str(tmp_path / "records"))
    layers = {"to_upper": 1}
    value = ch11.demo_count_summaries(tiny, tok, ["to_upper"], layers, CONFIG, n_resamples=20)
    records.write("ch11/test", value, {}, {})
    back = records.read("ch11/test").value["to_upper"]
    assert back.slope == value["to_upper"].slope
    np.testing.assert_array_equal(back.tv_hits[2], value["to_upper"].tv_hits[2])


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m, t: ch11.SweepConfig(n_demos=(1, 2), n_sets=4, n_queries=1, all_layers_at=5), ValueError),
        (lambda m, t: ch11.SweepConfig(n_demos=3, n_sets=4, n_queries=1), TypeError),
        (lambda m, t: ch11.SweepConfig(n_demos=(5,), n_sets=1, n_queries=1), ValueError),
        (lambda m, t: ch11.SweepConfig(n_demos=(5,), n_sets=4, n_queries=1, query_fraction=1.0), ValueError),
        (lambda m, t: ch11.chapter5_choices(m, t, "to_upper"), TypeError),
        (lambda m, t: ch11.chapter5_choices(m, t, ["no_such_task"]), ValueError),
        (lambda m, t: ch11.demo_count_summaries(m, t, ["to_upper"], {}, CONFIG), TypeError),
        (lambda m, t: ch11.demo_count_summaries(m, t, ["to_upper"], {"to_upper": 9}, CONFIG), ValueError),
        (lambda m, t: ch11.demo_count_summaries(m, t, ["to_upper"], {"to_upper": 1}, {"n_sets": 4}), TypeError),
        (lambda m, t: ch11.averaging(m, t, ["to_upper"], {"to_upper": 1}, CONFIG, n_demos=(7,)), ValueError),
        (lambda m, t: ch11.interpolation(m, t, "to_upper", "next_letter", 7, {"to_upper": 1, "next_letter": 1},
                                         CONFIG, [0.0, 1.0]), ValueError),
        (lambda m, t: ch11.replacement_vs_addition(m, t, ["to_upper"], {"to_upper": 1}, CONFIG, n_bare=0),
         ValueError),
    ],
)
def test_bad_inputs(tiny, tok, call, error):
    with pytest.raises(error):
        call(tiny, tok)


def test_sweep_config_is_a_stable_cache_key():
    same = ch11.SweepConfig(n_demos=[1, 2, 3], n_sets=4, n_queries=2, query_fraction=0.3, seed=3, all_layers_at=3)
    assert same.n_demos == (1, 2, 3) and fingerprint(same) == fingerprint(CONFIG)


def test_pooled_accuracy_is_wilson_for_independent_hits_and_a_cluster_bootstrap_for_sets():
    a, b = np.array([True, False, True, True]), np.array([False, False, True, True])
    assert ch11.pooled_accuracy([a, b]) == stats.accuracy(np.concatenate([a, b]))
    sets = [np.array([[True, True], [False, False], [True, False]]), np.array([[True, True], [True, True]])]
    pooled = ch11.pooled_accuracy(sets, n_resamples=200)
    assert pooled.method == "cluster bootstrap" and pooled.n == 5 and pooled.estimate == pytest.approx(0.7)
    with pytest.raises(TypeError):
        ch11.pooled_accuracy(a)
    with pytest.raises(ValueError):
        ch11.pooled_accuracy([a, sets[0]])
    with pytest.raises(ValueError):
        ch11.pooled_accuracy([np.array([1, 0])])
