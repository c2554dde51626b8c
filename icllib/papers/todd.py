"""Todd, Li, Sharma, Mueller, Wallace & Bau (2024), "Function Vectors in Large Language Models" (ICLR 2024,
arXiv 2310.15213v2): the numbers below were read from the paper and its reference code
(github.com/ericwtodd/function_vectors); ``shared/papers/todd2024.md`` has the notes. Accuracies are fractions of
the first answer token (top-1), on test queries the model answers correctly with 10-shot ICL, averaged over 5 seeds;
the ``_SE`` tables hold the standard errors the paper prints beside them.
"""

from __future__ import annotations

__all__ = ["TABLE2", "TABLE2_SE", "TABLE2_TASKS", "N_HEADS", "FV_LAYER", "N_LAYERS", "N_HEADS_PER_LAYER",
           "N_DEMOS", "N_MEAN_PROMPTS", "N_CORRUPTED_PROMPTS", "MAX_AIE", "GPTJ_TOP_HEADS", "TEMPLATES_GPTJ",
           "SOURCES"]

#: The six tasks of Table 2 (the paper's names); the book's closest tasks are antonyms, to_upper (letters, not
#: words), country_capital, en_fr, present_past and plural_singular (the reverse direction).
TABLE2_TASKS: tuple[str, ...] = ("antonym", "capitalize", "country-capital", "english-french", "present-past",
                                 "singular-plural")

#: Table 2, mean over its six tasks, as (shuffled-label, zero-shot) accuracy of the model alone and with an added
#: vector. "+ layer mean" is the mean last-token residual state over ICL prompts (their Section 2.1), the "+ FV" rows add the
#: function vector at about a third of the depth.
TABLE2: dict[str, tuple[float, float]] = {
    "GPT-J": (0.391, 0.055),
    "GPT-J + layer mean": (0.795, 0.095),
    "GPT-J + FV": (0.908, 0.575),
    "GPT-NeoX": (0.325, 0.067),
    "GPT-NeoX + FV": (0.907, 0.571),
    "Llama 2 70B": (0.523, 0.082),
    "Llama 2 70B + FV": (0.965, 0.838),
}
#: The standard errors printed beside :data:`TABLE2` (same keys).
TABLE2_SE: dict[str, tuple[float, float]] = {
    "GPT-J": (0.012, 0.008),
    "GPT-J + layer mean": (0.031, 0.018),
    "GPT-J + FV": (0.009, 0.017),
    "GPT-NeoX": (0.013, 0.001),
    "GPT-NeoX + FV": (0.006, 0.015),
    "Llama 2 70B": (0.022, 0.007),
    "Llama 2 70B + FV": (0.005, 0.007),
}
#: The number of heads summed into the function vector, ``|A|`` (paper, footnote 1 and Appendix C).
N_HEADS: dict[str, int] = {"GPT-J": 10, "Llama 2 7B": 20, "Llama 2 13B": 50, "GPT-NeoX": 50, "Llama 2 70B": 100}
#: The block after which the function vector is added (0-based, about a third of the blocks; Appendix C).
FV_LAYER: dict[str, int] = {"GPT-J": 9, "GPT-NeoX": 15, "Llama 2 7B": 11, "Llama 2 13B": 14, "Llama 2 70B": 26}
#: Blocks and heads per block of those models.
N_LAYERS: dict[str, int] = {"GPT-J": 28, "GPT-NeoX": 44, "Llama 2 7B": 32, "Llama 2 13B": 40, "Llama 2 70B": 80}
N_HEADS_PER_LAYER: dict[str, int] = {"GPT-J": 16, "GPT-NeoX": 64, "Llama 2 7B": 32, "Llama 2 13B": 40,
                                     "Llama 2 70B": 64}
#: The protocol's counts, demonstrations per prompt, clean prompts behind each mean activation and corrupted
#: prompts per task behind each indirect effect (Appendix C; the reference code's defaults since its PR #20).
N_DEMOS = 10
N_MEAN_PROMPTS = 100
N_CORRUPTED_PROMPTS = 25
#: The largest average indirect effect of one head (Appendix G, Figures 18-22), as a probability gain.
MAX_AIE: dict[str, float] = {"GPT-J": 0.053, "Llama 2 7B": 0.047, "Llama 2 70B": 0.037}
#: GPT-J's ten heads of largest average indirect effect over tasks, (block, head), largest first
#: (the reference code's ``compute_universal_function_vector``).
GPTJ_TOP_HEADS: tuple[tuple[int, int], ...] = ((15, 5), (9, 14), (12, 10), (8, 1), (11, 0), (13, 13), (8, 0),
                                               (14, 9), (9, 2), (24, 6))
#: GPT-J's (shuffled-label, zero-shot) accuracy without and with the FV, over 20 other prompt templates (Table 8).
TEMPLATES_GPTJ: dict[str, tuple[float, float]] = {"GPT-J": (0.323, 0.062), "GPT-J + FV": (0.762, 0.400)}

_TODD = "Todd et al. (2024), arXiv 2310.15213v2"
#: Where each constant comes from.
SOURCES: dict[str, str] = {
    "TABLE2_TASKS": f"{_TODD}, Section 3 and Table 2",
    "TABLE2": f"{_TODD}, Table 2 (means over the six tasks, 5 seeds)",
    "TABLE2_SE": f"{_TODD}, Table 2",
    "N_HEADS": f"{_TODD}, footnote 1 and Appendix C",
    "FV_LAYER": f"{_TODD}, Appendix C",
    "N_LAYERS": "the models' configurations",
    "N_HEADS_PER_LAYER": "the models' configurations",
    "N_DEMOS": f"{_TODD}, Appendix C",
    "N_MEAN_PROMPTS": f"{_TODD}, Appendix C; reference code, PR #20",
    "N_CORRUPTED_PROMPTS": f"{_TODD}, Appendix C; reference code, PR #20",
    "MAX_AIE": f"{_TODD}, Appendix G, Figures 18-22",
    "GPTJ_TOP_HEADS": "reference code, src/utils/extract_utils.py, compute_universal_function_vector",
    "TEMPLATES_GPTJ": f"{_TODD}, Section 3.1 and Table 8",
}
