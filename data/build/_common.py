"""Shared helpers of the data build scripts: readers for the offline sources and the JSON writer.

The scripts in this folder run once, by hand, in a separate virtual environment that has the build-only packages
(see ``data/README.md``); the book and the tests read only the JSON files they write. Nothing here is imported by
``icllib``.

Sources read here:
- dictd dictionaries (Debian ``dict-freedict-*``), ``/usr/share/dictd/<name>.index`` + ``<name>.dict.dz``;
- WordNet 3.0 (Debian ``wordnet-base``), ``/usr/share/wordnet/{index,data}.{noun,verb,adj,adv}``;
- word frequencies from the PyPI package ``wordfreq`` (Zipf scale: 6 is one word in a thousand, 3 one in a million).
"""

from __future__ import annotations

import gzip
import json
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1]
DICTD_DIR = Path("/usr/share/dictd")
WORDNET_DIR = Path("/usr/share/wordnet")

# One lowercase word: letters only (accents allowed), no spaces, hyphens, apostrophes or digits.
_WORD = re.compile(r"^[^\W\d_]+$")


def is_plain_word(word: str, min_len: int = 2) -> bool:
    """True for a single lowercase alphabetic word of at least ``min_len`` letters."""
    return bool(_WORD.match(word)) and word == word.lower() and len(word) >= min_len


def zipf(word: str, lang: str) -> float:
    """Zipf frequency of ``word`` in language ``lang`` (``wordfreq``; 0 for unknown words)."""
    from wordfreq import zipf_frequency

    return zipf_frequency(word, lang)


def top_words(lang: str, n: int) -> list[str]:
    """The ``n`` most frequent words of ``lang``, most frequent first (``wordfreq``'s ranked list)."""
    from wordfreq import top_n_list

    return top_n_list(lang, n)


# ----------------------------------------------------------------------------------------------------------------
# dictd dictionaries
# ----------------------------------------------------------------------------------------------------------------
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64_number(text: str) -> int:
    """dictd's index stores offsets and lengths as base-64 numbers (most significant digit first)."""
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


def read_dictd(name: str) -> dict[str, list[tuple[str, list[list[str]]]]]:
    """Read a dictd dictionary into ``headword -> [(pronunciation, senses)]``, one tuple per entry.

    Each sense is a list of translations (a numbered line ``2. eau, onde`` is one sense). The index sometimes
    files a multi-word entry under its first word: only entries whose own first line names exactly the index key
    are kept, and the caller may use the pronunciation to tell the bare word (shortest) from such compounds.
    """
    data = gzip.open(DICTD_DIR / f"{name}.dict.dz").read()
    entries: dict[str, list[tuple[str, list[list[str]]]]] = {}
    for line in (DICTD_DIR / f"{name}.index").read_text(encoding="utf-8").splitlines():
        key, offset, length = line.split("\t")
        if key.startswith("00database"):
            continue
        start = _b64_number(offset)
        text = data[start : start + _b64_number(length)].decode("utf-8")
        head, *body = [row.strip() for row in text.strip().splitlines()]
        headword = head.split(" /")[0].split(" <")[0].strip()
        if headword != key:
            continue
        match = re.search(r"/([^/]*)/", head)
        pronunciation = match.group(1) if match else ""
        senses = []
        for row in body:
            row = re.sub(r"^\d+\.\s*", "", row)
            words = [unicodedata.normalize("NFC", w.strip()) for w in row.split(",")]
            if words := [w for w in words if w]:
                senses.append(words)
        if senses:
            entries.setdefault(key, []).append((pronunciation, senses))
    return entries


def dictd_translations(entries: list[tuple[str, list[list[str]]]]) -> list[str]:
    """The translations of a headword's main entries, in dictionary order, without repeats.

    Main entries are those whose pronunciation (stress and length marks removed) is at most one symbol longer
    than the shortest: the English-Spanish dictionary files ``good day`` under ``good`` with a longer one.
    """
    def length(pronunciation: str) -> int:
        return len(re.sub("[ˈˌː]", "", pronunciation))

    shortest = min(length(p) for p, _ in entries)
    out: list[str] = []
    for pronunciation, senses in entries:
        if length(pronunciation) <= shortest + 1:
            for sense in senses:
                out.extend(w for w in sense if w not in out)
    return out


# ----------------------------------------------------------------------------------------------------------------
# WordNet 3.0
# ----------------------------------------------------------------------------------------------------------------
WORDNET_POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


def wordnet_tag_counts(pos: str) -> dict[str, int]:
    """``lemma -> tagsense_cnt`` for one part of speech: how often the lemma was sense-tagged in SemCor.

    A lemma that SemCor's annotators met as this part of speech has a positive count: a cheap test that a word is
    commonly used as, say, a verb (``run``) and not only listed as one (``table``).
    """
    counts: dict[str, int] = {}
    for line in (WORDNET_DIR / f"index.{WORDNET_POS[pos]}").read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):
            continue  # licence header
        fields = line.split()
        lemma, n_pointers = fields[0], int(fields[3])
        counts[lemma] = int(fields[4 + n_pointers + 1])
    return counts


def wordnet_antonyms(pos: str) -> list[tuple[str, str]]:
    """All lexical antonym pointers (``!``) of one part of speech as ``(word, antonym)`` pairs, file order."""
    pairs: list[tuple[str, str]] = []
    synset_words: dict[str, list[str]] = {}
    pointers: list[tuple[str, int, str, int]] = []
    for line in (WORDNET_DIR / f"data.{WORDNET_POS[pos]}").read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):
            continue
        fields = line.split(" | ")[0].split()
        offset, n_words = fields[0], int(fields[3], 16)
        # adjective lemmas may carry a syntactic marker such as "(a)" or "(p)"
        words = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).lower() for i in range(n_words)]
        synset_words[offset] = words
        at = 4 + 2 * n_words
        for i in range(int(fields[at])):
            symbol, target, _, source_target = fields[at + 1 + 4 * i : at + 5 + 4 * i]
            if symbol == "!":
                pointers.append((offset, int(source_target[:2], 16), target, int(source_target[2:], 16)))
    for offset, source, target, target_word in pointers:
        pairs.append((synset_words[offset][source - 1], synset_words[target][target_word - 1]))
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------------
def write_task(
    task: str,
    category: str,
    pairs: Iterable[tuple[str, str]],
    source: str,
    synonyms: dict[str, list[str]] | None = None,
) -> Path:
    """Write ``data/<task>.json`` after checking that inputs are unique and nothing is empty."""
    pairs = [[str(x), str(y)] for x, y in pairs]
    inputs = [x for x, _ in pairs]
    if len(set(inputs)) != len(inputs):
        raise ValueError(f"{task}: duplicate inputs")
    if any(not x.strip() or not y.strip() for x, y in pairs):
        raise ValueError(f"{task}: empty input or output")
    record: dict = {"task": task, "category": category, "pairs": pairs, "source": source}
    if synonyms is not None:
        missing = [x for x in inputs if x not in synonyms]
        if missing:
            raise ValueError(f"{task}: no synonym set for {missing[:5]}")
        record["synonyms"] = {x: synonyms[x] for x in inputs}
    path = DATA_DIR / f"{task}.json"
    path.write_text(_dumps(record), encoding="utf-8")
    print(f"{task}: {len(pairs)} pairs -> {path.name}")
    return path


def _dumps(record: dict) -> str:
    """JSON with one pair (or one synonym set) per line, so that a diff of a rebuilt file reads line by line."""

    def one(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["{"]
    for key, value in record.items():
        if key == "pairs":
            rows = ",\n".join("  " + one(pair) for pair in value)
            lines.append(f'"pairs": [\n{rows}\n],')
        elif key == "synonyms":
            rows = ",\n".join(f"  {one(x)}: {one(ys)}" for x, ys in value.items())
            lines.append(f'"synonyms": {{\n{rows}\n}},')
        else:
            lines.append(f"{one(key)}: {one(value)},")
    lines[-1] = lines[-1].rstrip(",")
    text = "\n".join(lines) + "\n}\n"
    assert json.loads(text) == record  # the hand-made layout must still be the same JSON
    return text
