"""Yang, Huang, Liang & Chi (2024), "In-Context Learning with Representations: Contextual Generalization of Trained
Transformers" (NeurIPS 2024, arXiv 2408.10147): the settings and numbers the book reproduces.

No code was released; ``shared/papers/yang2024.md`` has the notes (what the paper states, and what it leaves
unstated, such as tau for Figures 2, 4 and 5). Each constant says where in the paper it comes from.
"""

from __future__ import annotations

__all__ = ["SETTING", "SOURCES", "FIGURE2_PROBLEM", "FIGURE2A_HEADS", "FIGURE2B_ARCHITECTURE", "RECIPE",
           "TEST_PROMPTS", "OUT_OF_DOMAIN", "FIGURE3", "FIGURE4_UNSTABLE_HEADS", "FIGURE5"]

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
#: Figures 2, 4 and 5 — N labelled tokens, K tokens in the dictionary, token dimension d, m basis functions.
FIGURE2_PROBLEM: dict[str, int] = {"N": 30, "K": 200, "d": 100, "m": 20}
#: Figure 2(a) — heads of the one-layer model.
FIGURE2A_HEADS = 64
#: Figure 2(b) — the "standard" transformer, as layers, width, feed-forward width, heads.
FIGURE2B_ARCHITECTURE: dict[str, int] = {"n_layers": 4, "d_model": 256, "d_ff": 512, "n_heads": 8}
#: The training recipe of every experiment — Adam's learning rate, training prompts, batch size.
RECIPE: dict[str, float] = {"lr": 1e-4, "n_train_prompts": 10_000, "batch_size": 256}
#: Test prompts in domain (lambda ~ N(0, I_m)), and as many out of domain.
TEST_PROMPTS = 200
#: The out-of-domain tasks lambda ~ N(1_m, 4 I_m) — the mean and the variance of every coordinate.
OUT_OF_DOMAIN: dict[str, float] = {"mean": 1.0, "variance": 4.0}
#: Figure 3 — m, tau and the range of N of the gap (1/K) ||yhat* - yhat_best||^2 (smallest near N = m).
FIGURE3: dict[str, float] = {"m": 100, "tau": 0.01, "N_min": 50, "N_max": 150}
#: Figure 4 — the largest number of heads shown, whose training the paper calls unstable (with Adam).
FIGURE4_UNSTABLE_HEADS = 400
#: Figure 5 — the smallest and largest numbers of heads of the four-layer transformer, the equal wall-clock training
#: budget in seconds, and the number of heads that does best.
FIGURE5: dict[str, int] = {"H_min": 4, "H_max": 64, "budget_s": 100, "best_heads": 4}

_SOURCES_CH03_CH04 = {
    "FIGURE2_PROBLEM": f"{_YANG}, Section 5 (experiments), Figure 2",
    "FIGURE2A_HEADS": f"{_YANG}, Figure 2(a)",
    "FIGURE2B_ARCHITECTURE": f"{_YANG}, Figure 2(b) and its text",
    "RECIPE": f"{_YANG}, Section 5 (experimental set-up)",
    "TEST_PROMPTS": f"{_YANG}, Section 5 (experimental set-up)",
    "OUT_OF_DOMAIN": f"{_YANG}, Section 5 (the out-of-domain test tasks)",
    "FIGURE3": f"{_YANG}, Figure 3 and its caption",
    "FIGURE4_UNSTABLE_HEADS": f"{_YANG}, Figure 4 and its text",
    "FIGURE5": f"{_YANG}, Figure 5 and its text",
}


#: Where each constant comes from.
SOURCES: dict[str, str] = {
    "SETTING": f"{_YANG}, Section 5 and the caption of Figure 2: N = 30, K = 200, d = 100, m = 20; H = 64 for "
               "the one-layer model of Figure 2(a)",
    **_SOURCES_CH03_CH04,
}
