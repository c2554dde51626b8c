"""Yang, Huang, Liang & Chi (2024), "In-Context Learning with Representations: Contextual Generalization of Trained
Transformers" (NeurIPS 2024, arXiv 2408.10147): the settings and numbers the book reproduces.

No code was released; ``shared/papers/yang2024.md`` has the notes (what the paper states, and what it leaves
unstated, such as tau for Figures 2, 4 and 5). Each constant says where in the paper it comes from.
"""

from __future__ import annotations

__all__ = ["SETTING", "SOURCES"]

_YANG = "Yang, Huang, Liang & Chi (2024), arXiv 2408.10147"

# ---------------------------------------------------------------------------------------------------------------
# Chapters 01, 02 and 09 add their numbers below this line (and their sources to SOURCES).
# ---------------------------------------------------------------------------------------------------------------
#: The setting of the paper's experiments (Figure 2(a)), as a dict of sizes. K dictionary tokens, N of them labelled,
#: tokens in R^d, m basis functions, H heads of the one-layer model. The noise level tau is not stated.
SETTING: dict[str, int] = {"K": 200, "N": 30, "d": 100, "m": 20, "H": 64}


# ---------------------------------------------------------------------------------------------------------------
# Chapters 03 and 04 add their numbers below this line (and their sources to SOURCES).
# ---------------------------------------------------------------------------------------------------------------


#: Where each constant comes from.
SOURCES: dict[str, str] = {
    "SETTING": f"{_YANG}, Section 5 and the caption of Figure 2: N = 30, K = 200, d = 100, m = 20; H = 64 for "
               "the one-layer model of Figure 2(a)",
}
