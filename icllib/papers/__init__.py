"""The papers' own numbers that the chapters compare with, in one place, each with its source.

One module per paper: :mod:`icllib.papers.yang` (Yang, Huang, Liang & Chi 2024, Part I), :mod:`icllib.papers.hendel`
(Hendel, Geva & Globerson 2023, Part II); later chapters add modules for their papers. Every module has a
``SOURCES`` dict naming where each constant comes from; chapters glue these numbers into their prose
(``icllib.book.glue``) rather than typing them. The tables of Hendel et al. are re-exported here under their old
names.
"""

from icllib.papers import hendel, yang
from icllib.papers.hendel import (PAPER_AVERAGES, PAPER_CATEGORIES, PAPER_CONFLICTS, PAPER_LAYER_PEAKS,
                                  PAPER_TV_SHARE_OF_ICL)

__all__ = ["hendel", "yang", "PAPER_AVERAGES", "PAPER_CATEGORIES", "PAPER_LAYER_PEAKS", "PAPER_TV_SHARE_OF_ICL",
           "PAPER_CONFLICTS"]
