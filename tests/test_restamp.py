"""Tests of re-stamping (icllib.restamp) and of the code-only source hash it relies on (icllib.cache)."""

import pytest

from icllib import cache, restamp


def _sources(**modules: str) -> dict:
    return {f"icllib.{name}": (f"icllib/{name}.py", text.encode()) for name, text in modules.items()}


BASE = '''"""A module."""
import math

__all__ = ["area"]


def area(r):
    """The area."""
    return math.pi * r * r  # pi r^2
'''


def test_code_only_ignores_comments_docstrings_and_blank_lines_but_not_code():
    documented = BASE.replace('"""The area."""', '"""The area of a disc\n\n    of radius r."""').replace(
        "# pi r^2", "# the formula") + "\n\n# a trailing comment\n"
    assert cache.code_only(documented.encode()) == cache.code_only(BASE.encode())
    assert cache.code_only(BASE.replace("r * r", "r ** 2").encode()) != cache.code_only(BASE.encode())
    # a '#' inside a string is code, and so is a string that is not a statement
    assert cache.code_only(b"x = '# not a comment'\n") == b"x = '# not a comment'"
    assert cache.code_only(b"y = 'text'\n") != cache.code_only(b"y = 'other'\n")
    assert cache.code_only("s = 'é'  # accent\n".encode()) == "s = 'é'".encode()


def test_closure_digest_follows_imports_and_counts_code_only():
    old = _sources(base=BASE, user="from icllib.base import area\nA = area(2)\n", other="B = 1\n")
    reworded = _sources(base=BASE.replace("The area.", "Area of a disc."), user=old["icllib.user"][1].decode(),
                        other="B = 1\n")
    changed = _sources(base=BASE.replace("r * r", "r ** 2"), user=old["icllib.user"][1].decode(), other="B = 1\n")
    digest = cache.closure_digest
    assert digest(("icllib.user",), old) == digest(("icllib.user",), reworded)
    assert digest(("icllib.user",), old) != digest(("icllib.user",), changed)  # user imports base
    assert digest(("icllib.other",), old) == digest(("icllib.other",), changed)
    assert digest(("icllib.user",), old, code=False) != digest(("icllib.user",), reworded, code=False)


@pytest.mark.parametrize("addition,same", [
    ("\n\ndef volume(r):\n    return area(r) * r\n", True),          # a new function
    ("\n\nclass Disc:\n    pass\n", True),                         # a new class
    ("\nimport cmath\n", True),                                     # a new import of a new name
    ("\n\ndef area(r):\n    return 0\n", False),                    # redefines an old name
    ("\nmath = None\n", False),                                     # a statement that is not a definition
    ("\nprint('side effect')\n", False),
])
def test_extends_accepts_only_new_definitions(addition, same):
    old = _sources(base=BASE)
    new = _sources(base=BASE.replace('__all__ = ["area"]', '__all__ = ["area", "volume"]') + addition)
    assert restamp.extends(old, new, {"icllib.base"}) is same


def test_extends_rejects_a_changed_statement_and_a_name_taken_elsewhere():
    old = _sources(base=BASE, other="def volume(r):\n    return 1\n")
    assert not restamp.extends(old, _sources(base=BASE.replace("r * r", "r * r * 1"), other="x = 1\n"),
                               {"icllib.base"})
    clash = _sources(base=BASE + "\n\ndef volume(r):\n    return 2\n", other="def volume(r):\n    return 1\n")
    assert not restamp.extends(old, clash, {"icllib.base", "icllib.other"})
    assert restamp.extends(old, clash, {"icllib.base"})  # nothing else in the closure binds volume


def test_exclusions_and_git_batch_parsing():
    assert restamp._exclusions(b'X = 1\n_NOT_COMPUTATION = ("icllib.papers", "icllib.book")\n') == (
        "icllib.papers", "icllib.book")
    assert restamp._exclusions(b"X = 1\n") == ()
    batch = b"aaa blob 3\nabc\nbbb blob 0\n\nccc blob 2\nxy\n"
    assert list(restamp._split_batch(batch)) == [b"abc", b"", b"xy"]


def test_verdicts_rejects_a_directory_that_is_not_one(tmp_path):
    with pytest.raises(ValueError, match="directory must be a folder of records"):
        restamp.verdicts(tmp_path / "missing")
