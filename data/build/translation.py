"""Build the four translation tasks: en_fr, en_es, fr_en, es_en, each with a synonym set per input word.

Source words are the most frequent words of the source language (``wordfreq``'s ranked list) that the FreeDict
dictionary of that direction lists. For each word x:

1. candidates: the translations of x's main dictionary entries that are one plain lowercase word and not rare in
   the target language (Zipf >= ``MIN_ZIPF``: drops glued junk such as ``buenosdías`` and misspellings);
2. the answer y: among the candidates that the *reverse* dictionary confirms (its entry for y lists x), the one
   with the highest ``Zipf(y) - log2(number of words y's reverse entry lists)``: frequent and specific wins
   (run -> courir, not fonctionner, whose entry also lists function, operate, work). Words with no confirmed
   candidate, or whose best score is below ``MIN_SCORE``, are skipped;
3. the synonym set: y, every candidate of step 1, and every target word whose reverse entry lists x.

Pairs with y == x (``taxi -> taxi``) are dropped: copying the input would score. English words must be WordNet
lemmas that SemCor tagged at least once (content words), not function words (stoplist below) and, as inputs, not
inflected forms (``things``, ``found``: ``lemminflect``). A French or Spanish input whose translations include an
English function word (``dans -> in``) is skipped.

Run (build venv with wordfreq; Debian dict-freedict-{eng-fra,eng-spa,fra-eng,spa-eng} and wordnet-base):
``/tmp/databuild/bin/python data/build/translation.py``
"""

from __future__ import annotations

import math
from functools import cache

from _common import dictd_translations, is_plain_word, read_dictd, top_words, wordnet_tag_counts, write_task, zipf

N_PAIRS = 600  # per task, the most frequent source words first (all within the part checked by eye)
N_CANDIDATES = 40_000  # how deep into the frequency list to look for source words
MIN_ZIPF = 2.5  # about one occurrence in 3 million words
MIN_SCORE = 3.0  # answers below this (rare, or with many meanings) are too uncertain to teach by example

# Function words: their dictionary entries give content senses (can -> tin can, will -> testament) that a
# translation prompt would not mean.
ENGLISH_STOPLIST = set(
    """
    have has had having do does did done doing be is are was were been being can could will would shall should may
    might must not all any some one out about over after before up down off into onto upon like just there this that
    these those which who whom whose what when where why how than then such own same other others each every either
    neither both few many much more most less least very too also only even still yet ever never here now well
    back get got getting let lets say said says per via within without against among between through during under
    above below across along around behind beside besides beyond near since until unless whether while though
    although because however therefore thus hence their them they you your yours him his her hers its our ours
    mine myself yourself himself herself itself ourselves themselves for from with and but nor yes
    """.split()
)

# Checked by eye: inputs whose chosen answer is wrong or misleading (a dictionary error, a rare sense, an
# inflected or vulgar word). Written by hand after reading every pair of the first 700 of each task.
EXCLUDE = {
    "en_fr": """business mean wrong low remember control attack poor release election sign base pass standard track
        link spend degree notice cell exchange score separate previously leader immediately absolutely average
        department record drive pick round rate self post deal guy move act plan activity collection protect drink
        grow mostly sad need use look feel""",
    "en_es": """first best keep top mean mind problem reason future rather meet energy issue project period industry
        sense wish design guess society average rate stand drive league property pick bed goal pass officer create
        addition credit spend coach opportunity bar reality environment activity accept receive demand separate fund
        target draw foundation waste apparently previous prior previously directly collection hit scale estate
        supply please look""",
    "fr_en": """fait soit puis selon saint suite passer parti centre tour plutôt autour abord milieu produit propos
        intérêt activité fonction putain con accès domaine particulièrement assurer relation militaire application
        importance totalement arrêt compter salut centrale protéger élevé rappeler rejoindre reprendre réaliser
        monter partager logique certes réserve mérite humain appris consommation figure collection propriété
        occasion cause fond intérieur est nous mieux vrai""",
    "es_en": """lugar haber centro dicho llegar haya pasar proceso empresa relación media llama producción comer
        prueba baja comunicación puta capacidad natural llamada unión importancia origen particular naturaleza
        material directamente hambre reunión realizar salida función término amo salvo querido consumo dejo
        intención propósito capitán delante frontera quedar grave inteligencia aceptar patria bandera acaso
        condición aparte lima superficie igualdad escala pasada acabar disposición tasa universal desarrollar
        este nosotros poder""",
}
EXCLUDE = {task: set(words.split()) for task, words in EXCLUDE.items()}

TASKS = {
    # name: (source lang, target lang, forward dictionary, reverse dictionary)
    "en_fr": ("en", "fr", "freedict-eng-fra", "freedict-fra-eng"),
    "en_es": ("en", "es", "freedict-eng-spa", "freedict-spa-eng"),
    "fr_en": ("fr", "en", "freedict-fra-eng", "freedict-eng-fra"),
    "es_en": ("es", "en", "freedict-spa-eng", "freedict-eng-spa"),
}


@cache
def english_lemmas(word: str) -> set[str]:
    """The noun and verb lemmas that ``lemminflect`` gives for an English word form."""
    from lemminflect import getAllLemmas

    lemmas = getAllLemmas(word)
    return {lemma for pos in ("NOUN", "VERB") for lemma in lemmas.get(pos, ())}


def english_content_words() -> set[str]:
    """WordNet lemmas tagged at least once in SemCor as any part of speech, minus function words."""
    words: set[str] = set()
    for pos in "nvar":
        words |= {w for w, count in wordnet_tag_counts(pos).items() if count > 0}
    return words - ENGLISH_STOPLIST


def build(name: str, english: set[str]) -> None:
    source, target, forward_name, reverse_name = TASKS[name]
    forward, reverse = read_dictd(forward_name), read_dictd(reverse_name)

    def usable(word: str, lang: str) -> bool:
        if not is_plain_word(word, min_len=2) or zipf(word, lang) < MIN_ZIPF:
            return False
        return word in english if lang == "en" else True

    # target word -> its reverse-dictionary translations; and source word -> target words listing it
    back = {t: dictd_translations(entries) for t, entries in reverse.items()}
    listed_by: dict[str, list[str]] = {}
    for t, sources in back.items():
        if usable(t, target):
            for s in sources:
                listed_by.setdefault(s, []).append(t)

    def score(t: str, x: str) -> float:
        """log10 of P(t) P(x | t): Zipf of t plus log10 of x's share of the frequency of t's reverse entry."""
        meanings = [s for s in back.get(t, []) if is_plain_word(s)]
        share = 10 ** zipf(x, source) / sum(10 ** zipf(s, source) for s in meanings)
        return zipf(t, target) + math.log10(share)

    pairs: list[tuple[str, str]] = []
    synonyms: dict[str, list[str]] = {}
    for x in top_words(source, N_CANDIDATES):
        if len(pairs) == N_PAIRS:
            break
        if x in EXCLUDE[name] or x not in forward or not is_plain_word(x, min_len=3):
            continue
        if source == "en" and x not in english:
            continue
        if source == "en" and any(lemma != x for lemma in english_lemmas(x)):
            continue  # an inflected form (things, found, used): translate the lemma instead
        translations = dictd_translations(forward[x])
        if target == "en" and any(t in ENGLISH_STOPLIST for t in translations):
            continue  # a function word (dans -> in, aussi -> also): no single content answer
        candidates = [t for t in translations if usable(t, target)]
        confirmed = [t for t in candidates if x in back.get(t, [])]
        if not confirmed:
            continue
        best = max(confirmed, key=lambda t: score(t, x))  # max keeps the dictionary's order on ties
        if best == x or score(best, x) < MIN_SCORE:
            continue
        pairs.append((x, best))
        synonyms[x] = list(dict.fromkeys([best, *candidates, *listed_by.get(x, [])]))
    write_task(
        name,
        "translation",
        pairs,
        f"FreeDict {forward_name} (answers confirmed by {reverse_name}); source words ranked by wordfreq; "
        "built by data/build/translation.py",
        synonyms,
    )


def main() -> None:
    english = english_content_words()
    for name in TASKS:
        build(name, english)


if __name__ == "__main__":
    main()
