"""Hendel, Geva & Globerson (2023), "In-Context Learning Creates Task Vectors" (Findings of EMNLP 2023,
arXiv 2310.15916): the numbers below were read from the paper and from the result tables committed to its
reference code (github.com/roeehendel/icl_task_vectors); ``shared/papers/hendel2023.md`` has the notes.
Accuracies are fractions of one greedy token judged by the task's rule, with 5 demonstrations unless stated.
"""

from __future__ import annotations

__all__ = ["PAPER_AVERAGES", "PAPER_CATEGORIES", "PAPER_LAYER_PEAKS", "PAPER_TV_SHARE_OF_ICL", "PAPER_CONFLICTS",
           "PAPER_MODEL_PARAMETERS", "PAPER_GEOMETRY", "PAPER_CONFLICT_PAIRS", "PAPER_CONFLICT_SETUP", "PAPER_TOP_TOKENS",
           "PAPER_PER_TASK", "PAPER_TV_AT_LEAST_ICL", "PAPER_PROMPT_FORMAT", "PAPER_N_DUMMIES", "PAPER_COUNTS",
           "PAPER_LAYER_THRESHOLD", "SOURCES"]

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
#: Conflicting tasks (Section 5), LLaMA 13B, 4 demonstrations, from the released table — for each pair, keyed by task
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

#: Every model-task result of the paper's main experiment (its appendix table; the reference code's
#: ``outputs/figures/main_experiment_results_table.tex``): ``{model: {task: (baseline, task vector, ICL)}}``, 5
#: demonstrations, 50 test sets (so steps of 0.02), the book's task names.
PAPER_PER_TASK: dict[str, dict[str, tuple[float, float, float]]] = {
    "LLaMA 7B": {
        "list_first": (0.87, 0.98, 1.00),
        "list_last": (0.03, 1.00, 1.00),
        "next_letter": (0.03, 0.94, 0.88),
        "prev_letter": (0.04, 0.52, 0.58),
        "to_lower": (0.00, 0.74, 1.00),
        "to_upper": (0.00, 0.60, 1.00),
        "country_capital": (0.28, 0.82, 0.86),
        "location_continent": (0.02, 0.68, 0.72),
        "location_religion": (0.12, 0.84, 0.94),
        "person_language": (0.02, 0.68, 0.78),
        "antonyms": (0.33, 0.74, 0.76),
        "plural_singular": (0.15, 0.84, 0.88),
        "present_gerund": (0.00, 0.74, 0.90),
        "present_past": (0.02, 0.94, 0.92),
        "en_es": (0.07, 0.78, 0.76),
        "en_fr": (0.04, 0.78, 0.88),
        "es_en": (0.21, 0.68, 0.92),
        "fr_en": (0.15, 0.66, 0.70),
    },
    "LLaMA 13B": {
        "list_first": (0.77, 1.00, 1.00),
        "list_last": (0.07, 0.70, 0.92),
        "next_letter": (0.31, 1.00, 0.94),
        "prev_letter": (0.05, 0.34, 0.50),
        "to_lower": (0.00, 0.94, 1.00),
        "to_upper": (0.00, 0.94, 1.00),
        "country_capital": (0.17, 0.84, 0.86),
        "location_continent": (0.01, 0.70, 0.80),
        "location_religion": (0.10, 0.74, 0.84),
        "person_language": (0.02, 0.76, 0.88),
        "antonyms": (0.19, 0.74, 0.80),
        "plural_singular": (0.24, 0.84, 0.88),
        "present_gerund": (0.00, 0.96, 0.96),
        "present_past": (0.01, 1.00, 0.98),
        "en_es": (0.05, 0.78, 0.82),
        "en_fr": (0.15, 0.70, 0.84),
        "es_en": (0.29, 0.76, 0.88),
        "fr_en": (0.25, 0.54, 0.72),
    },
    "LLaMA 30B": {
        "list_first": (0.96, 0.98, 1.00),
        "list_last": (0.02, 0.64, 0.96),
        "next_letter": (0.30, 0.98, 0.96),
        "prev_letter": (0.02, 0.56, 0.80),
        "to_lower": (0.00, 1.00, 1.00),
        "to_upper": (0.00, 0.90, 1.00),
        "country_capital": (0.27, 0.72, 0.88),
        "location_continent": (0.01, 0.70, 0.86),
        "location_religion": (0.05, 0.70, 0.88),
        "person_language": (0.01, 0.72, 0.90),
        "antonyms": (0.37, 0.76, 0.82),
        "plural_singular": (0.21, 0.84, 0.90),
        "present_gerund": (0.00, 0.76, 0.98),
        "present_past": (0.02, 0.98, 1.00),
        "en_es": (0.07, 0.74, 0.78),
        "en_fr": (0.10, 0.80, 0.86),
        "es_en": (0.24, 0.70, 0.88),
        "fr_en": (0.20, 0.62, 0.78),
    },
    "GPT-J 6B": {
        "list_first": (0.30, 0.74, 0.98),
        "list_last": (0.24, 0.64, 1.00),
        "next_letter": (0.16, 1.00, 0.86),
        "prev_letter": (0.10, 0.36, 0.42),
        "to_lower": (0.00, 0.46, 1.00),
        "to_upper": (0.00, 0.94, 1.00),
        "country_capital": (0.19, 0.72, 0.80),
        "location_continent": (0.03, 0.58, 0.70),
        "location_religion": (0.09, 0.68, 0.78),
        "person_language": (0.02, 0.82, 0.82),
        "antonyms": (0.43, 0.68, 0.78),
        "plural_singular": (0.08, 0.90, 0.98),
        "present_gerund": (0.00, 0.88, 0.98),
        "present_past": (0.02, 0.76, 0.96),
        "en_es": (0.14, 0.34, 0.56),
        "en_fr": (0.16, 0.36, 0.54),
        "es_en": (0.06, 0.70, 0.74),
        "fr_en": (0.13, 0.66, 0.76),
    },
    "Pythia 2.8B": {
        "list_first": (0.69, 0.96, 1.00),
        "list_last": (0.06, 0.98, 1.00),
        "next_letter": (0.42, 0.86, 0.90),
        "prev_letter": (0.01, 0.22, 0.48),
        "to_lower": (0.00, 1.00, 1.00),
        "to_upper": (0.00, 1.00, 1.00),
        "country_capital": (0.18, 0.70, 0.76),
        "location_continent": (0.01, 0.62, 0.72),
        "location_religion": (0.08, 0.76, 0.82),
        "person_language": (0.00, 0.82, 0.82),
        "antonyms": (0.37, 0.68, 0.76),
        "plural_singular": (0.13, 0.70, 0.78),
        "present_gerund": (0.00, 0.86, 0.96),
        "present_past": (0.03, 0.80, 0.92),
        "en_es": (0.10, 0.26, 0.76),
        "en_fr": (0.16, 0.28, 0.60),
        "es_en": (0.08, 0.76, 0.82),
        "fr_en": (0.10, 0.64, 0.82),
    },
    "Pythia 6.9B": {
        "list_first": (0.43, 1.00, 0.98),
        "list_last": (0.08, 0.60, 0.98),
        "next_letter": (0.01, 0.66, 0.86),
        "prev_letter": (0.04, 0.28, 0.32),
        "to_lower": (0.00, 1.00, 1.00),
        "to_upper": (0.00, 0.94, 1.00),
        "country_capital": (0.21, 0.76, 0.82),
        "location_continent": (0.01, 0.62, 0.78),
        "location_religion": (0.10, 0.80, 0.80),
        "person_language": (0.01, 0.76, 0.80),
        "antonyms": (0.33, 0.72, 0.74),
        "plural_singular": (0.14, 0.78, 0.88),
        "present_gerund": (0.00, 0.82, 0.94),
        "present_past": (0.02, 0.88, 0.96),
        "en_es": (0.11, 0.46, 0.70),
        "en_fr": (0.21, 0.36, 0.60),
        "es_en": (0.06, 0.72, 0.82),
        "fr_en": (0.14, 0.66, 0.74),
    },
    "Pythia 12B": {
        "list_first": (0.53, 0.98, 0.96),
        "list_last": (0.09, 0.98, 1.00),
        "next_letter": (0.15, 0.96, 0.76),
        "prev_letter": (0.00, 0.24, 0.42),
        "to_lower": (0.02, 1.00, 1.00),
        "to_upper": (0.00, 0.98, 1.00),
        "country_capital": (0.19, 0.58, 0.82),
        "location_continent": (0.01, 0.68, 0.80),
        "location_religion": (0.07, 0.64, 0.78),
        "person_language": (0.01, 0.72, 0.86),
        "antonyms": (0.34, 0.72, 0.74),
        "plural_singular": (0.18, 0.80, 0.84),
        "present_gerund": (0.00, 0.86, 0.96),
        "present_past": (0.01, 0.76, 0.94),
        "en_es": (0.10, 0.44, 0.72),
        "en_fr": (0.16, 0.48, 0.54),
        "es_en": (0.05, 0.68, 0.80),
        "fr_en": (0.14, 0.68, 0.80),
    },
}
#: On how many of the 126 model-task pairs the task vector matches or beats ICL (TV >= ICL in ``PAPER_PER_TASK``),
#: out of how many; the paper reports the count (most often on next_letter, 5 of its 7 models).
PAPER_TV_AT_LEAST_ICL: tuple[int, int] = (21, 126)
#: The reference code's prompt — every line ``example:x->y`` (the query line ``example:x->``), lines joined by a
#: newline; LLaMA's tokenizer adds its BOS token in front, the GPT-J and Pythia tokenizers add none. The paper's
#: figures draw demonstrations as ``x -> y``, but no reported number used that bare format.
PAPER_PROMPT_FORMAT = {"LLaMA": "example+bos", "GPT-J": "example", "Pythia": "example"}
#: The paper's number of dummy queries per theta(S) (its Eq. 2 averages the state over them).
PAPER_N_DUMMIES = 2
#: The counts of the main experiment in the reference code (and its released tables) — demonstrations per prompt,
#: dev sets for choosing the block, test sets for ICL and the task vector, zero-shot queries, and the seed.
PAPER_COUNTS: dict[str, int] = {"n_demos": 5, "n_dev": 50, "n_test": 50, "n_baseline": 100, "seed": 41}
#: The layer figure averages the dev curves of the tasks whose best dev accuracy is above this (strictly).
PAPER_LAYER_THRESHOLD = 0.75



# ---------------------------------------------------------------------------------------------------------------
# Chapters 07 and 08 add their numbers below this line (and their sources to SOURCES).
# ---------------------------------------------------------------------------------------------------------------
#: Parameter counts of the paper's models that Part II compares the book's model with (LLaMA 1).
PAPER_MODEL_PARAMETERS: dict[str, float] = {"LLaMA 7B": 6.7e9, "LLaMA 13B": 13.0e9}
#: The geometry figure (t-SNE of theta, histograms of cosine distances) — model, demonstration sets per task,
#: demonstrations per set, dummy queries per set, the range of blocks the layer was chosen in, number of blocks.
PAPER_GEOMETRY: dict[str, object] = {"model": "LLaMA 7B", "n_sets": 50, "n_demos": 4, "n_dummies": 2,
                                     "blocks": (10, 19), "n_layers": 32}
#: Section 5's pairs (A, B) in the paper's order — demonstrations of A, the task vector of B.
PAPER_CONFLICT_PAIRS: tuple[tuple[str, str], ...] = (
    ("next_letter", "to_upper"), ("list_last", "list_first"), ("prev_letter", "next_letter"),
    ("present_past", "present_gerund"), ("en_es", "en_fr"),
)
#: Section 5's set-up in the reference code — model, demonstrations per prompt, prompts (and sets of B) per pair.
#: The block is chosen on the same sets of B whose vectors are patched (their vectors in B's bare queries).
PAPER_CONFLICT_SETUP: dict[str, object] = {"model": "LLaMA 13B", "n_demos": 4, "n_prompts": 100}
#: Section 6's vocabulary projections — the first tokens of the released table for the rows the book quotes.
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
    "PAPER_PER_TASK": f"{_HENDEL}, appendix table of all results (reference code: "
                      "outputs/figures/main_experiment_results_table.tex)",
    "PAPER_TV_AT_LEAST_ICL": f"{_HENDEL}, main results (the count of pairs with TV >= ICL; PAPER_PER_TASK agrees)",
    "PAPER_PROMPT_FORMAT": "reference code: core/data/datasets/few_shot_format.py (example:{input}->{output}, "
                           "newline-separated) and the models' tokenizers (LLaMA adds BOS)",
    "PAPER_N_DUMMIES": f"{_HENDEL}, Section 3 (theta averaged over dummy queries) and the reference code",
    "PAPER_COUNTS": "reference code: scripts/experiments/main.py and its released result tables (50 test sets; "
                    "the paper's text gives other counts)",
    "PAPER_LAYER_THRESHOLD": "reference code: scripts/figures/main.py, plot_accuracy_by_layer "
                             "(max dev accuracy > 0.75)",
}
