"""Hendel, Geva & Globerson (2023), "In-Context Learning Creates Task Vectors" (Findings of EMNLP 2023,
arXiv 2310.15916): the numbers below were read from the paper and from the result tables committed to its
reference code (github.com/roeehendel/icl_task_vectors); ``shared/papers/hendel2023.md`` has the notes.
Accuracies are fractions of one greedy token judged by the task's rule, with 5 demonstrations unless stated.
"""

from __future__ import annotations

__all__ = ["PAPER_AVERAGES", "PAPER_CATEGORIES", "PAPER_LAYER_PEAKS", "PAPER_TV_SHARE_OF_ICL", "PAPER_CONFLICTS",
           "SOURCES"]

#: Mean (baseline, task vector, ICL) accuracy over the 18 tasks per model in Hendel et al. (2023), 5 demonstrations.
PAPER_AVERAGES: dict[str, tuple[float, float, float]] = {
    "LLaMA 7B": (0.13, 0.78, 0.86),
    "LLaMA 13B": (0.15, 0.79, 0.87),
    "LLaMA 30B": (0.16, 0.78, 0.90),
    "GPT-J 6B": (0.12, 0.68, 0.81),
    "Pythia 2.8B": (0.13, 0.72, 0.83),
    "Pythia 6.9B": (0.11, 0.71, 0.82),
    "Pythia 12B": (0.11, 0.73, 0.82),
}
#: The same, per task category, over all 7 models.
PAPER_CATEGORIES: dict[str, tuple[float, float, float]] = {
    "algorithmic": (0.16, 0.80, 0.89),
    "translation": (0.13, 0.61, 0.76),
    "linguistic": (0.13, 0.81, 0.89),
    "knowledge": (0.08, 0.72, 0.82),
}
#: Task-vector accuracy as a share of ICL accuracy over all 126 model-task pairs (0.74 / 0.84; 83-91% per model).
PAPER_TV_SHARE_OF_ICL = 0.88
#: Peak of the mean dev-accuracy layer curve (tasks whose best accuracy > 0.75) as (accuracy, block, number of
#: blocks), read from the paper's Figure 3 and released tables (approximate for the Pythia models and GPT-J).
PAPER_LAYER_PEAKS: dict[str, tuple[float, int, int]] = {
    "LLaMA 7B": (0.86, 14, 32),
    "LLaMA 13B": (0.80, 15, 40),
    "LLaMA 30B": (0.77, 18, 60),
    "GPT-J 6B": (0.65, 12, 28),
    "Pythia 2.8B": (0.75, 13, 32),
    "Pythia 6.9B": (0.78, 13, 32),
    "Pythia 12B": (0.80, 12, 36),
}
#: Conflicting tasks (Section 5), LLaMA 13B, 4 demonstrations, from the released table: for each pair, keyed by task
#: A (demonstrations of A, task B's vector patched in), accuracy on (A before, B before, A after, B after) the patch.
#: The pairs: next_letter -> to_upper, list_last -> list_first, prev_letter -> next_letter,
#: present_past -> present_gerund, en_es -> en_fr.
PAPER_CONFLICTS: dict[str, tuple[float, float, float, float]] = {
    "next_letter": (0.91, 0.00, 0.10, 0.77),
    "list_last": (0.95, 0.05, 0.20, 0.78),
    "prev_letter": (0.51, 0.14, 0.08, 0.74),
    "present_past": (0.98, 0.00, 0.01, 0.97),
    "en_es": (0.93, 0.04, 0.91, 0.07),
}

# ---------------------------------------------------------------------------------------------------------------
# Chapters 05 and 06 add their numbers below this line (and their sources to SOURCES).
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Chapters 07 and 08 add their numbers below this line (and their sources to SOURCES).
# ---------------------------------------------------------------------------------------------------------------


_HENDEL = "Hendel, Geva & Globerson (2023), arXiv 2310.15916"
#: Where each table comes from.
SOURCES: dict[str, str] = {
    "PAPER_AVERAGES": f"{_HENDEL}, main results, and the reference code's result tables",
    "PAPER_CATEGORIES": f"{_HENDEL}, per-category means of the reference code's result tables",
    "PAPER_TV_SHARE_OF_ICL": f"{_HENDEL}, mean over the reference code's 126 model-task results",
    "PAPER_LAYER_PEAKS": f"{_HENDEL}, Figure 3 and the reference code's layer-sweep tables",
    "PAPER_CONFLICTS": f"{_HENDEL}, Section 5, and the reference code's conflict results for LLaMA 13B",
}
