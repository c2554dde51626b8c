"""The committed task files in data/: valid, sized, clean (checks the JSON itself, not icllib's loader)."""

import json
import re
import string
from pathlib import Path

import pytest

from icllib.lang_tasks import CATEGORIES, TASK_NAMES

DATA = Path(__file__).resolve().parents[1] / "data"
LETTER_TASKS = {"next_letter": 25, "prev_letter": 25, "to_upper": 26, "to_lower": 26}
WORD = re.compile(r"^[^\W\d_]+$")  # one word, letters only (accents allowed)


def read(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def records() -> dict[str, dict]:
    return {name: read(name) for name in TASK_NAMES}


def test_exactly_the_18_task_files_exist():
    assert sorted(p.stem for p in DATA.glob("*.json")) == sorted(TASK_NAMES)
    assert len(TASK_NAMES) == 18


def test_files_are_small():
    assert sum(p.stat().st_size for p in DATA.glob("*.json")) < 2_000_000


@pytest.mark.parametrize("name", TASK_NAMES)
def test_record_layout(records, name):
    record = records[name]
    category = next(c for c, names in CATEGORIES.items() if name in names)
    assert record["task"] == name and record["category"] == category
    assert isinstance(record["source"], str) and record["source"]
    expected_keys = {"task", "category", "pairs", "source"} | ({"synonyms"} if category == "translation" else set())
    assert set(record) == expected_keys
    pairs = record["pairs"]
    assert all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in pairs)
    assert all(s == s.strip() and s for p in pairs for s in p), "no empty or padded strings"
    inputs = [x for x, _ in pairs]
    assert len(set(inputs)) == len(inputs), "inputs must be unique"
    if name in LETTER_TASKS:
        assert len(pairs) == LETTER_TASKS[name]
    else:
        assert len(pairs) >= 100


def test_letter_tasks_are_the_alphabet(records):
    lower = string.ascii_lowercase
    assert records["next_letter"]["pairs"] == [[a, b] for a, b in zip(lower, lower[1:])]
    assert records["prev_letter"]["pairs"] == [[b, a] for a, b in zip(lower, lower[1:])]
    assert records["to_upper"]["pairs"] == [[c, c.upper()] for c in lower]
    assert records["to_lower"]["pairs"] == [[c.upper(), c] for c in lower]


@pytest.mark.parametrize("name, index", [("list_first", 0), ("list_last", -1)])
def test_list_tasks(records, name, index):
    for x, y in records[name]["pairs"]:
        letters = x.split(",")
        assert 2 <= len(letters) <= 4 and len(set(letters)) == len(letters)
        assert all(len(c) == 1 and c in string.ascii_lowercase for c in letters)
        assert y == letters[index]
    assert [x for x, _ in records["list_first"]["pairs"]] == [x for x, _ in records["list_last"]["pairs"]]


@pytest.mark.parametrize("name", CATEGORIES["translation"])
def test_translation_pairs_and_synonyms(records, name):
    record = records[name]
    synonyms = record["synonyms"]
    assert list(synonyms) == [x for x, _ in record["pairs"]]
    for x, y in record["pairs"]:
        assert WORD.match(x) and WORD.match(y) and x == x.lower() and y == y.lower(), (x, y)
        assert x != y, "copying the input must not score"
        accepted = synonyms[x]
        assert accepted[0] == y and len(set(accepted)) == len(accepted)
        assert all(WORD.match(s) for s in accepted), (x, accepted)
    english = record["pairs"] if name.startswith("en") else [(y, x) for x, y in record["pairs"]]
    assert all(e.isascii() for e, _ in english)


@pytest.mark.parametrize("name", CATEGORIES["linguistic"])
def test_linguistic_pairs_are_distinct_single_words(records, name):
    for x, y in records[name]["pairs"]:
        assert WORD.match(x) and WORD.match(y) and x.isascii() and y.isascii() and x != y, (x, y)
        assert x == x.lower() and y == y.lower()


def test_linguistic_forms(records):
    assert all(y.endswith("ing") for _, y in records["present_gerund"]["pairs"])
    gerund_verbs = {x for x, _ in records["present_gerund"]["pairs"]}
    past_verbs = {x for x, _ in records["present_past"]["pairs"]}
    assert len(gerund_verbs & past_verbs) >= 0.9 * len(past_verbs), "the two verb tasks share their verbs"
    assert {"have", "take", "run"} <= past_verbs
    past = dict(records["present_past"]["pairs"])
    assert past["take"] == "took" and past["run"] == "ran" and past["have"] == "had"
    singular = dict(records["plural_singular"]["pairs"])
    assert singular["men"] == "man" and singular["days"] == "day"
    antonyms = dict(records["antonyms"]["pairs"])
    assert antonyms["good"] == "bad" and antonyms["high"] == "low"


def test_knowledge_labels(records):
    continents = {y for _, y in records["location_continent"]["pairs"]}
    assert continents == {"Africa", "Asia", "Europe", "North America", "South America", "Oceania"}
    religions = {y for _, y in records["location_religion"]["pairs"]}
    assert religions == {"Christianity", "Islam", "Hinduism", "Buddhism", "Judaism"}
    languages = [y for _, y in records["person_language"]["pairs"]]
    assert all(WORD.match(y) and y[0].isupper() for y in languages)
    capital = dict(records["country_capital"]["pairs"])
    assert capital["France"] == "Paris" and capital["Japan"] == "Tokyo" and capital["Kazakhstan"] == "Astana"
    assert all(not y.startswith(x) and not x.startswith(y) for x, y in capital.items())
    language = dict(records["person_language"]["pairs"])
    assert language["Victor Hugo"] == "French" and language["Leo Tolstoy"] == "Russian"
