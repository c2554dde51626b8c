"""Build the four linguistic tasks: present_gerund, present_past, plural_singular, antonyms.

- Verbs (present_gerund, present_past): the most frequent English words (``wordfreq``) that are their own verb
  lemma (``lemminflect``), were tagged as verbs at least ``MIN_VERB_TAGS`` times in SemCor (WordNet's counts) and
  more often as verbs than as any other part of speech, so that ``table`` or ``back`` are not taken for verbs.
  The forms come from ``lemminflect`` (``VBG``, ``VBD``; the first, most common form when there are several:
  learned, not learnt). Verbs whose past equals the present (``put``, ``cut``) are dropped from present_past:
  copying the input would score.
- Nouns (plural_singular): the most frequent words that are their own noun lemma, tagged as nouns in SemCor at
  least ``MIN_NOUN_TAGS`` times and more often than as anything else (``stops`` is mostly a verb form), with a
  plural (``lemminflect`` ``NNS``) that differs from the singular and is itself common: Zipf(plural) >=
  ``MIN_ZIPF`` and at most ``MAX_PLURAL_DROP`` below Zipf(singular), which drops mass nouns (``water`` ->
  ``waters``). The task maps plural -> singular.
- Antonyms: WordNet's lexical antonym pointers (all parts of speech) between two common single words
  (Zipf >= ``MIN_ZIPF_ANTONYM``) that SemCor reads first as the pointer's part of speech (``clear -> bounce``,
  a verb sense of an adjective, is dropped). When a word has several antonyms, one without a negative prefix
  (un-, in-, dis-) is preferred, then the most frequent (good -> bad, not evil). Inputs whose antonym is a
  technical or odd sense were excluded by hand after reading the list (``EXCLUDE_ANTONYMS``).

Every produced form must be a plain lowercase ASCII word. Run (build venv with wordfreq and lemminflect; Debian
wordnet-base): ``/tmp/databuild/bin/python data/build/linguistic.py``
"""

from __future__ import annotations

from _common import is_plain_word, top_words, wordnet_antonyms, wordnet_tag_counts, write_task, zipf

N_VERBS = 400
N_NOUNS = 400
N_ANTONYMS = 400
N_CANDIDATES = 30_000
MIN_VERB_TAGS = 5
MIN_NOUN_TAGS = 5
MIN_ZIPF = 3.0  # about one in a million words
MAX_PLURAL_DROP = 1.5
MIN_ZIPF_ANTONYM = 3.5
NEGATIVE_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non")
# Checked by eye: inputs whose WordNet antonym is a technical or rare sense (out -> safe in baseball, natural ->
# flat in music, location -> studio in film), or not an opposite in everyday use. Written by hand.
EXCLUDE_ANTONYMS = set(
    """
    out safe know ignore still moving let prevent real nominal set rise full thin following leading clear issue
    recall miss common individual ground figure natural flat sharp union credit cash annual location studio lie
    covered fresh destroyed spread host nuclear emotional resolution preparation opposite dramatic organic adopted
    native extensive rush delay active quiet pro gain reduce lost saved attend defend equal avoid hungry busy tough
    charge straight standing end middle make break keep general local national international other same all some
    back ahead incredible manage neutral magnetic yield induced complain cheer delicate vocal instrumental worn enforce
    """.split()
)
# "be" has two pasts (was/were)
VERB_STOPLIST = {"be", "lie"}  # lie: lay (recline) or lied (tell a falsehood)


def ascii_word(word: str) -> bool:
    return word.isascii() and is_plain_word(word, min_len=3)


def own_lemma(word: str, upos: str) -> bool:
    """True when lemminflect reads ``word`` as a base form of part of speech ``upos`` (NOUN or VERB)."""
    from lemminflect import getAllLemmas

    return getAllLemmas(word).get(upos, ()) == (word,)


def inflect(word: str, tag: str) -> str | None:
    """The most common ``tag`` form of ``word`` (Penn tags: VBG, VBD, NNS), or None."""
    from lemminflect import getInflection

    forms = getInflection(word, tag=tag)
    return forms[0] if forms else None


def dominant_pos(word: str, tags: dict[str, dict[str, int]]) -> str | None:
    """The part of speech (n, v, a, r) that SemCor tagged ``word`` as most often; None if never tagged."""
    counts = {pos: tags[pos].get(word, 0) for pos in "nvar"}
    pos = max(counts, key=counts.get)
    return pos if counts[pos] > 0 else None


def all_tag_counts() -> dict[str, dict[str, int]]:
    return {pos: wordnet_tag_counts(pos) for pos in "nvar"}


def common_verbs() -> list[str]:
    """Frequent base-form verbs that SemCor tagged as verbs more often than as anything else."""
    tags = all_tag_counts()
    return [
        w
        for w in top_words("en", N_CANDIDATES)
        if ascii_word(w)
        and w not in VERB_STOPLIST
        and tags["v"].get(w, 0) >= MIN_VERB_TAGS
        and dominant_pos(w, tags) == "v"
        and own_lemma(w, "VERB")
    ]


def build_verbs() -> None:
    gerunds, pasts = [], []
    for verb in common_verbs():
        gerund, past = inflect(verb, "VBG"), inflect(verb, "VBD")
        if len(gerunds) < N_VERBS and gerund and ascii_word(gerund) and zipf(gerund, "en") >= MIN_ZIPF:
            gerunds.append((verb, gerund))
        if len(pasts) < N_VERBS and past and past != verb and ascii_word(past) and zipf(past, "en") >= MIN_ZIPF:
            pasts.append((verb, past))
    source = "verbs ranked by wordfreq, SemCor verb tags from WordNet 3.0, forms from lemminflect; " \
             "built by data/build/linguistic.py"
    write_task("present_gerund", "linguistic", gerunds, source)
    write_task("present_past", "linguistic", pasts, source)


def build_plurals() -> None:
    tags = all_tag_counts()
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for noun in top_words("en", N_CANDIDATES):
        if len(pairs) == N_NOUNS:
            break
        if not ascii_word(noun) or tags["n"].get(noun, 0) < MIN_NOUN_TAGS or dominant_pos(noun, tags) != "n":
            continue
        if not own_lemma(noun, "NOUN"):
            continue
        plural = inflect(noun, "NNS")
        if not plural or plural == noun or plural in seen or not ascii_word(plural):
            continue
        z_plural = zipf(plural, "en")
        if z_plural < MIN_ZIPF or z_plural < zipf(noun, "en") - MAX_PLURAL_DROP:
            continue
        seen.add(plural)
        pairs.append((plural, noun))
    write_task(
        "plural_singular",
        "linguistic",
        pairs,
        "nouns ranked by wordfreq, SemCor noun tags from WordNet 3.0, plurals from lemminflect; "
        "built by data/build/linguistic.py",
    )


def build_antonyms() -> None:
    tags = all_tag_counts()
    options: dict[str, set[str]] = {}
    for pos in "nvar":
        for word, antonym in wordnet_antonyms(pos):
            if antonym in EXCLUDE_ANTONYMS:
                continue
            # both words must be read first as this part of speech: drops clear -> bounce (of a cheque)
            if dominant_pos(word, tags) != pos or dominant_pos(antonym, tags) != pos:
                continue
            if word != antonym and ascii_word(word) and ascii_word(antonym):
                if zipf(word, "en") >= MIN_ZIPF_ANTONYM and zipf(antonym, "en") >= MIN_ZIPF_ANTONYM:
                    options.setdefault(word, set()).add(antonym)

    def morphological(a: str, b: str) -> bool:
        """One word is the other with a negative prefix (able / unable)."""
        return any(a == p + b or b == p + a for p in NEGATIVE_PREFIXES)

    pairs = []
    words = [w for w in options if w not in EXCLUDE_ANTONYMS]
    for word in sorted(words, key=lambda w: (-zipf(w, "en"), w))[:N_ANTONYMS]:
        # sorted() first: the set's order must not decide ties
        best = min(sorted(options[word]), key=lambda a: (morphological(word, a), -zipf(a, "en")))
        pairs.append((word, best))
    write_task(
        "antonyms",
        "linguistic",
        pairs,
        "WordNet 3.0 antonym pointers between common words (wordfreq); built by data/build/linguistic.py",
    )


def main() -> None:
    build_verbs()
    build_plurals()
    build_antonyms()


if __name__ == "__main__":
    main()
