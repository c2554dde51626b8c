"""Hendel, Geva & Globerson (2023), "In-Context Learning Creates Task Vectors" (Findings of EMNLP 2023,
arXiv 2310.15916): the numbers below were read from the paper and from the result tables committed to its
reference code (github.com/roeehendel/icl_task_vectors); ``shared/papers/hendel2023.md`` has the notes.
Accuracies are fractions of one greedy token judged by the task's rule, with 5 demonstrations unless stated.
"""

from __future__ import annotations

__all__ = ["PAPER_AVERAGES", "PAPER_CATEGORIES", "PAPER_LAYER_PEAKS", "PAPER_TV_SHARE_OF_ICL", "PAPER_CONFLICTS",
           "PAPER_MODEL_PARAMETERS", "PAPER_GEOMETRY", "PAPER_CONFLICT_PAIRS", "PAPER_CONFLICT_SETUP", "PAPER_TOP_TOKENS",
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
#: Parameter counts of the paper's models that Part II compares the book's model with (LLaMA 1).
PAPER_MODEL_PARAMETERS: dict[str, float] = {"LLaMA 7B": 6.7e9, "LLaMA 13B": 13.0e9}
#: The geometry figure (t-SNE of theta, histograms of cosine distances): model, demonstration sets per task,
#: demonstrations per set, dummy queries per set, the range of blocks the layer was chosen in, number of blocks.
PAPER_GEOMETRY: dict[str, object] = {"model": "LLaMA 7B", "n_sets": 50, "n_demos": 4, "n_dummies": 2,
                                     "blocks": (10, 19), "n_layers": 32}
#: Section 5's pairs (A, B) in the paper's order: demonstrations of A, the task vector of B.
PAPER_CONFLICT_PAIRS: tuple[tuple[str, str], ...] = (
    ("next_letter", "to_upper"), ("list_last", "list_first"), ("prev_letter", "next_letter"),
    ("present_past", "present_gerund"), ("en_es", "en_fr"),
)
#: Section 5's set-up in the reference code: model, demonstrations per prompt, prompts (and sets of B) per pair.
#: The block is chosen on the same sets of B whose vectors are patched (their vectors in B's bare queries).
PAPER_CONFLICT_SETUP: dict[str, object] = {"model": "LLaMA 13B", "n_demos": 4, "n_prompts": 100}
#: Section 6's vocabulary projections: the first tokens of the released table for the rows the book quotes.
PAPER_TOP_TOKENS: dict[tuple[str, str], tuple[str, ...]] = {
    ("GPT-J 6B", "present_gerund"): ("getting", "working", "storing", "playing", "making"),
    ("GPT-J 6B", "country_capital"): ("London", "Paris", "West", "South", "Berlin"),
    ("LLaMA 13B", "country_capital"): ("Paris", "cities", "its", "capital", "Isabel", "Madrid"),
    ("Pythia 12B", "country_capital"): ("in", "the", "a", "N", "and", "C"),
    ("Pythia 12B", "prev_letter"): ("r", "b", "a", "m", "d", "p"),
}


_HENDEL = "Hendel, Geva & Globerson (2023), arXiv 2310.15916"
#: Where each table comes from.
SOURCES: dict[str, str] = {
    "PAPER_AVERAGES": f"{_HENDEL}, main results, and the reference code's result tables",
    "PAPER_CATEGORIES": f"{_HENDEL}, per-category means of the reference code's result tables",
    "PAPER_TV_SHARE_OF_ICL": f"{_HENDEL}, mean over the reference code's 126 model-task results",
    "PAPER_LAYER_PEAKS": f"{_HENDEL}, Figure 3 and the reference code's layer-sweep tables",
    "PAPER_CONFLICTS": f"{_HENDEL}, Section 5, and the reference code's conflict results for LLaMA 13B",
    "PAPER_MODEL_PARAMETERS": "Touvron et al. (2023), LLaMA, Table 2 (6.7B and 13.0B parameters)",
    "PAPER_GEOMETRY": f"{_HENDEL}, Section 4.1 and Figure 4 (t-SNE, LLaMA 7B, layers 10-19 of 32)",
    "PAPER_CONFLICT_PAIRS": f"{_HENDEL}, Section 5; scripts/experiments/overriding.py, OVERRIDING_TASK_PAIRS",
    "PAPER_CONFLICT_SETUP": f"{_HENDEL}, Section 5; scripts/experiments/overriding.py (num_examples=4, "
                            f"100 overriding datasets, seed 41)",
    "PAPER_TOP_TOKENS": f"{_HENDEL}, Section 6; outputs/figures/top_tokens_table.tex of the reference code",
}
