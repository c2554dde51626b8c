"""The reproduction table: each headline claim of the papers, the paper's number, and the book's number in both
editions, read from the records (``records/chNN/<name>`` at the papers' size, ``records/chNN/ci/<name>`` at CI size).

A :class:`Claim` names the records that hold its evidence and a ``measure`` that turns them (as
:class:`icllib.records.Record`: value, arguments, provenance) into the number the chapter states (an :class:`icllib.stats.Interval` where the chapter gives one). Nothing is computed here
beyond reading: a claim whose record is missing or pending says so in the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
import numpy as np
import pandas as pd

from icllib import records, stats

__all__ = ["Claim", "measured", "table", "over_seeds"]

_EDITIONS = ("full", "ci")


@dataclasses.dataclass(frozen=True)
class Claim:
    """One headline claim: where it is tested (``chapter``), what the paper reports (``paper_value``), the records
    holding the book's evidence (``record``: one name or a tuple of names), how to read the number off them
    (``measure``: list of :class:`~icllib.records.Record` -> text) and one line on why the paper's number and the
    book's two editions differ (``why``)."""

    paper: str
    claim: str
    chapter: str
    paper_value: str
    record: str | tuple[str, ...]
    measure: Callable[[list[records.Record]], str]
    why: str

    def names(self, edition: str) -> list[str]:
        """The record names of the claim in ``edition`` (``"ci"``: their CI-size twins)."""
        names = [self.record] if isinstance(self.record, str) else list(self.record)
        return names if edition == "full" else [records.ci_name(n) for n in names]


def measured(claim: Claim, edition: str) -> str:
    """The claim's number in ``edition`` (``"full"``: the papers' size; ``"ci"``: the live edition's size), or a
    word saying why there is none (``"pending"`` for a record listed in ``pending.json``, ``"not recorded"``)."""
    if edition not in _EDITIONS:
        raise ValueError(f"edition must be one of {_EDITIONS}, got {edition!r}")
    names = claim.names(edition)
    if any(name in records.pending() for name in names):
        return "pending"
    try:
        read = [records.read(name) for name in names]
    except records.RecordError:
        return "not recorded"
    return claim.measure(read)


def table(claims: Sequence[Claim]) -> pd.DataFrame:
    """One row per claim: paper, claim, chapter, the paper's number, the full and the CI edition's numbers, why."""
    if not claims or not all(isinstance(c, Claim) for c in claims):
        raise TypeError("claims must be a non-empty sequence of Claim")
    rows = [{"paper": c.paper, "claim": c.claim, "chapter": c.chapter, "paper's number": c.paper_value,
             "full edition": measured(c, "full"), "CI edition": measured(c, "ci"), "why they differ": c.why}
            for c in claims]
    return pd.DataFrame(rows)


def over_seeds(values: Sequence[float], fmt: str = ".3f") -> str:
    """Mean and t interval over seeds, formatted (the chapters' convention for trained models)."""
    return stats.over_seeds(np.asarray(values, dtype=float)).format(fmt)
