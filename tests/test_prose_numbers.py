"""Every number in a chapter's prose is computed: glued from a cell, or written in math, code or a reference.

The prose of a chapter (its markdown outside code cells) may hold numerals only where they are not results:
inside math (``$...$``, ``$$...$$``, ``{math}`` blocks), inline code, MyST roles and directives (``{glue:text}``,
``{cite}``, ``{eq}``, ``{numref}``, labels), figure and table numbers, and the short allowlist below (sizes that
are configuration, years, the number of tasks). A result typed by hand fails this test.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.md"))

# Words that may stand after a numeral because the numeral is configuration, a date or a count of things named in
# the text, not a result: "18 tasks", "4 demonstrations", "2023", "Figure 3", "Section 5", "Table 1".
ALLOWED_BEFORE = re.compile(
    r"^\s*(tasks?|task categories|categories|demonstrations?|dummy|blocks?|layers?|heads?|basis functions|"
    r"seeds?|steps?|dev sets|test sets|sets|queries|prompts|tokens|pairs|cores?|GB|MB|GiB|bits?|x|×|"
    r"dimensions?|features?|models?|classes|letters|languages|chapters?|parts?|(?:confidence )?intervals?)\b")
ALLOWED_AFTER = re.compile(  # a whole word before the numeral: "around 0.5" must not pass as "d 0.5"
    r"(?<!\w)(Figure|Fig\.|Table|Section|Chapter|Part|Eq\.|Equation|Appendix|App\.|Theorem|Lemma|Proposition|"
    r"Assumption|Corollary|step|block|layer|head|Python|torch|SmolLM2-|LLaMA|Pythia|GPT-J|GPT-|H|h|N|K|m|k|"
    r"d|L|l|nvidia-|H100|H200|Jupyter Book|version|v|ICLR|NeurIPS|EMNLP|COLM|ICML|arXiv)\s*$")
YEAR = re.compile(r"^(19|20)\d\d$")


def prose(text: str) -> str:
    """The chapter's markdown with code cells, math, inline code, roles, directives' options and labels removed."""
    text = re.sub(r"^```[\s\S]*?^```", "", text, flags=re.M)  # code cells and fenced directives ({math}, ...)
    text = re.sub(r"^:::[\s\S]*?^:::", "", text, flags=re.M)
    text = re.sub(r"^---\n[\s\S]*?\n---\n", "", text)  # the jupytext header
    text = re.sub(r"\$\$[\s\S]*?\$\$", "", text)
    text = re.sub(r"\$[^$\n]+\$", "", text)
    text = re.sub(r"\{[a-z:]+\}`[^`]*`", "", text)  # roles: {glue:text}`x:.2f`, {cite}`...`, {eq}`...`
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    text = re.sub(r"^\([^)\s]+\)=\s*$", "", text, flags=re.M)  # labels
    text = re.sub(r"^(\s*)\d+\.(?=\s)", r"\1", text, flags=re.M)  # the numbers of a numbered list
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"<[^>]+>", "", text)  # html
    return text


def hand_typed_numbers(text: str) -> list[str]:
    """The numerals of the prose that are neither allowed by context nor years: each with its surroundings."""
    found = []
    for match in re.finditer(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*%?", prose(text)):
        before, after = match.string[max(0, match.start() - 30):match.start()], match.string[match.end():][:30]
        number = match.group().rstrip("%")
        if YEAR.match(number) or ALLOWED_AFTER.search(before) or ALLOWED_BEFORE.match(after):
            continue
        found.append(f"...{before}[{match.group()}]{after}...".replace("\n", " "))
    return found


# Chapters whose prose still holds hand-typed results (converted to glued numbers one by one; this list only
# shrinks). Empty means every chapter is checked.
NOT_YET_GLUED = {
}


@pytest.mark.parametrize("md", [c for c in CHAPTERS if c.stem not in NOT_YET_GLUED], ids=lambda p: p.stem)
def test_no_hand_typed_number_in_prose(md):
    numbers = hand_typed_numbers(md.read_text())
    assert not numbers, f"{md.name}: glue these from a cell (icllib.book.glue):\n" + "\n".join(numbers)


def test_the_scanner_finds_typed_results_and_passes_glued_ones():
    typed = "The task vector keeps 88% of ICL accuracy, and the best block is 14."
    assert len(hand_typed_numbers(typed)) == 2
    glued = ("The task vector keeps {glue:text}`kept:.0%` of ICL accuracy on 18 tasks with 5 demonstrations "
             "(Figure 3, Section 5, {cite}`hendel2023taskvectors`, 2023), $\\lambda \\in R^{20}$ and `n=5`.")
    assert hand_typed_numbers(glued) == []
