"""What a chapter shows besides figures: numbers glued into the prose, and notes a reader must see.

:func:`glue` puts a value computed by a cell into the text (myst-nb's ``{glue:text}`` role). myst-nb comes with the
book's tools, not with ``icllib`` (Colab installs only the library), so without it the value is printed instead.
:func:`note` shows a Markdown note in the page (or prints it outside a notebook); :func:`show_pending` is the note for a
record of the full edition that has not been made yet. :func:`sanity_check` asserts an identity, one that holds by
construction unless the code has a bug, and says so on the page: the book keeps such checks apart from the claims
of the papers, which are tested by computations that could have come out otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from icllib.records import Pending

__all__ = ["glue", "note", "show_pending", "sanity_check"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Make ``value`` available to the prose as ``{glue:text}`name``` (with a format spec: ``name:.2f``).

    Returns ``value``, so a cell can glue and keep working with it. Strings (an interval such as
    ``0.78 [0.71, 0.84]``), numbers and anything with a text form can be glued.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be letters, digits, '_' or '-', starting with a letter; got {name!r}")
    if isinstance(value, np.generic):
        # a numpy scalar (read back from a record, or a reduction) shows as `np.float64(0.2)`, which the format
        # spec of {glue:text}`name:.2f` cannot read: glue the Python number
        value = value.item()
    try:
        from myst_nb import glue as myst_glue
    except ImportError:  # Colab: only icllib is installed; the number still shows, as a printed line
        print(f"{name} = {value}")
        return value
    myst_glue(name, value, display=display)
    return value


def note(text: str) -> None:
    """Show ``text`` (Markdown) as a note in the page; outside a notebook, print it."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython comes with every notebook
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(Markdown(text))
    else:
        print(text.replace("**", "").replace("`", ""))


def show_pending(*values: Any) -> bool:
    """Show a note for every :class:`icllib.records.Pending` among ``values``; True when there was one.

    A chapter calls it before a figure or an assert that needs a record of the full edition: the page then says
    which record is pending and the command that makes it, instead of drawing or checking anything.
    """
    found = [v for v in values if isinstance(v, Pending)]
    for value in found:
        note(f"**Pending.** The record `{value.name}` has not been made yet ({value.reason}). "
             f"To make it: `{value.command}`. What depends on it is not shown and not checked in this edition.")
    return bool(found)


def sanity_check(condition: bool, what: str) -> None:
    """Assert ``condition``, an identity that holds by construction, and print that it is one.

    A failure means a bug in the code, not evidence about a paper's claim; the printed line keeps the reader from
    taking the check for a finding.
    """
    if not isinstance(what, str) or not what:
        raise ValueError(f"what must be a non-empty description, got {what!r}")
    if not bool(condition):
        raise AssertionError(f"sanity check failed (an identity; this is a bug): {what}")
    print(f"sanity check (holds by construction): {what}: ok")
