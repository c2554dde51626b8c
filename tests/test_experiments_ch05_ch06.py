"""Tests of icllib.experiments.ch05 and ch06 (chapters 5 and 6) on a tiny random model, and of the paper's table."""

from __future__ import annotations

import numpy as np
import pytest

from icllib import lang_tasks, papers, records, stats, testing
from icllib import task_vectors as tv
from icllib.experiments import ch05, ch06
from icllib.task_vectors import controls

TASKS = ["to_upper", "next_letter"]  # single characters: one token each for the character tokenizer
SIZES = dict(n_demos=3, n_dev=3, n_test=4, n_baseline=3, seed=5)


@pytest.fixture(scope="module")
def tok():
    return testing.CharTokenizer()


@pytest.fixture(scope="module")
def model():
    return testing.tiny_random_model("llama", n_layers=3, seed=11)


@pytest.fixture()
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_evaluate_tasks_is_evaluate_task_slimmed(model, tok, cache):
    got = ch05.evaluate_tasks(model, tok, TASKS, **SIZES)
    assert list(got) == TASKS
    for name, result in got.items():
        full = tv.evaluate_task(model, tok, name, **SIZES)  # read back from the cache
        assert result.theta_test is None and result.predictions == {} and result.baseline_queries == []
        assert result.test_queries == full.test_queries and result.best_layer == full.best_layer
        assert all(np.array_equal(result.hits[w], full.hits[w]) for w in ("baseline", "icl", "tv"))
        assert result.dev_curve.dtype == np.float32
        np.testing.assert_allclose(result.dev_curve, full.dev_curve, rtol=1e-6)
    bare = ch05.slim(tv.evaluate_task(model, tok, "to_upper", **SIZES), keep_queries=False)
    assert bare.test_queries == [] and bare.hits["tv"].shape == (4,)


def test_task_controls_run_at_the_chosen_block_on_the_same_queries(model, tok, cache):
    results = ch05.evaluate_tasks(model, tok, TASKS, **SIZES)
    got = ch05.task_controls(model, tok, TASKS, **SIZES)
    for name in TASKS:
        assert got[name].layer == results[name].best_layer
        assert got[name].test_queries == results[name].test_queries
        assert np.array_equal(got[name].hits["icl"], results[name].hits["icl"])
        assert set(got[name].hits) == set(controls.CONDITIONS)


def test_summaries(model, tok, cache):
    results = ch05.evaluate_tasks(model, tok, TASKS, **SIZES)
    pooled = ch05.pooled(results, "tv")
    hits = np.concatenate([results[t].hits["tv"] for t in TASKS])
    assert pooled.estimate == pytest.approx(hits.mean()) and pooled.n == 8 and pooled.method == "wilson"
    assert ch05.pooled(results, "icl", ["to_upper"]).n == 4
    gaps = ch05.per_task_gaps(results)
    for name, gap in gaps.items():
        assert gap.estimate == pytest.approx(results[name].tv - results[name].icl)
        assert gap.method == "paired bootstrap"
    assert ch05.n_pairs(tok, TASKS) == {t: len(lang_tasks.filter_single_token(lang_tasks.TASKS[t], tok))
                                        for t in TASKS}
    assert ch05.category_of["to_upper"] == "algorithmic" and len(ch05.category_of) == 18


def test_share_of_icl_is_a_ratio_of_pooled_accuracies():
    made = {"a": _fake(tv=[1, 1, 0, 0], icl=[1, 1, 1, 1]), "b": _fake(tv=[1, 0, 1, 1], icl=[1, 1, 1, 0])}
    share = ch05.share_of_icl(made)
    assert share.estimate == pytest.approx(5 / 7) and share.low <= share.estimate <= share.high
    assert ch05.share_of_icl(made, ["a"]).estimate == pytest.approx(0.5)


def _fake(tv, icl):
    return controls.ControlResult(layer=0, n_test=len(tv), hits={"tv": np.array(tv, bool), "icl": np.array(icl, bool)})


def test_ch06_functions(model, tok, cache):
    curves = ch06.dev_curves(model, tok, TASKS, **SIZES)
    results = ch05.evaluate_tasks(model, tok, TASKS, **SIZES)
    assert all(np.array_equal(curves[t], results[t].dev_curve) for t in TASKS)
    ablation = ch06.format_ablation(model, tok, TASKS, ["bare", "example"], **SIZES)
    assert list(ablation) == ["bare", "example"] and list(ablation["bare"]) == TASKS
    assert ablation["example"]["to_upper"].test_queries == [] and ablation["example"]["to_upper"].theta_test is None
    assert np.array_equal(ablation["example"]["next_letter"].hits["tv"], results["next_letter"].hits["tv"])
    assert ablation["bare"]["to_upper"].fmt.prefix == ""
    sizes = {k: v for k, v in SIZES.items() if k != "n_baseline"}
    answers = ch06.answer_curves(model, tok, TASKS, **sizes)
    for name in TASKS:
        assert answers[name].query_hits.shape == (4, 3)
        # the query's hits at the chosen block are the task vector's test hits
        assert np.array_equal(answers[name].query_hits[:, results[name].best_layer], results[name].hits["tv"])


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, t: ch05.evaluate_tasks(m, t, "to_upper"), TypeError, "tasks"),
        (lambda m, t: ch05.evaluate_tasks(m, t, []), TypeError, "tasks"),
        (lambda m, t: ch05.task_controls(m, t, ["no_such_task"]), ValueError, "no_such_task"),
        (lambda m, t: ch05.slim("result"), TypeError, "result"),
        (lambda m, t: ch05.pooled({}, "tv", []), ValueError, "tasks"),
        (lambda m, t: ch06.format_ablation(m, t, TASKS, "bare"), TypeError, "formats"),
        (lambda m, t: ch06.format_ablation(m, t, TASKS, ["nope"]), ValueError, "fmt"),
        (lambda m, t: ch06.format_ablation(m, t, TASKS, [3]), TypeError, "formats"),
        (lambda m, t: ch06.dev_curves(m, t, None), TypeError, "tasks"),
    ],
)
def test_bad_inputs(model, tok, call, error, match):
    with pytest.raises(error, match=match):
        call(model, tok)


# ----------------------------------------------------------------------------------------------------------------
# The paper's numbers used by chapters 5 and 6
# ----------------------------------------------------------------------------------------------------------------
def test_the_papers_per_task_table_agrees_with_its_summaries():
    table = papers.hendel.PAPER_PER_TASK
    assert set(table) == set(papers.PAPER_AVERAGES)
    assert all(set(tasks) == set(lang_tasks.TASK_NAMES) for tasks in table.values())
    at_least, total = papers.hendel.PAPER_TV_AT_LEAST_ICL
    rows = [v for tasks in table.values() for v in tasks.values()]
    assert total == len(rows) == 126 and at_least == sum(t >= i for _, t, i in rows)
    for model, tasks in table.items():  # the per-model means, rounded as the paper prints them
        np.testing.assert_allclose(np.mean(list(tasks.values()), axis=0), papers.PAPER_AVERAGES[model], atol=0.0051)
    share = np.mean([t for _, t, _ in rows]) / np.mean([i for _, _, i in rows])
    assert share == pytest.approx(papers.PAPER_TV_SHARE_OF_ICL, abs=0.005)
    assert papers.hendel.PAPER_N_DUMMIES == 2
    assert set(papers.hendel.PAPER_PROMPT_FORMAT.values()) <= set(tv.FORMATS)
    assert all(name in papers.hendel.SOURCES for name in ("PAPER_PER_TASK", "PAPER_TV_AT_LEAST_ICL",
                                                          "PAPER_PROMPT_FORMAT", "PAPER_N_DUMMIES"))
    assert isinstance(stats.wilson(*papers.hendel.PAPER_TV_AT_LEAST_ICL), stats.Interval)


# ----------------------------------------------------------------------------------------------------------------
# Records: what chapters 5 and 6 record comes back from replay as it was made
# ----------------------------------------------------------------------------------------------------------------
def test_the_chapters_results_record_and_replay(model, tok, monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_RECORDS_DIR", str(tmp_path / "records"))
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ICL_FULL", "1")
    sizes = {k: v for k, v in SIZES.items() if k != "n_baseline"}
    calls = [("ch05/tasks", ch05.evaluate_tasks, (model, tok, TASKS), SIZES),
             ("ch05/controls", ch05.task_controls, (model, tok, TASKS), SIZES),
             ("ch06/answers", ch06.answer_curves, (model, tok, TASKS), sizes),
             ("ch06/formats", ch06.format_ablation, (model, tok, TASKS, ["bare", "example"]), SIZES)]
    monkeypatch.setenv("ICL_RECORD", "1")
    made = {name: records.result(name, fn, *args, **kwargs) for name, fn, args, kwargs in calls}
    monkeypatch.setenv("ICL_RECORD", "0")
    for name, fn, args, kwargs in calls:
        replayed = records.result(name, fn, *args, **kwargs)
        assert _plain(replayed) == _plain(made[name]), name
    assert (tmp_path / "records/ch05/tasks.npz").is_file()
    size = sum(p.stat().st_size for p in (tmp_path / "records").rglob("*"))
    assert size < 100_000, size  # slim: hits and curves, no task vectors


def _plain(value):
    """Results as comparable plain data (arrays as lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return np.nan_to_num(value.astype(float), nan=-1.0).tolist()
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    return value
