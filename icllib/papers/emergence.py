"""Task vectors in transformers trained from scratch (Chapter 10): the numbers the chapter quotes from three papers,
each with its source; ``shared/papers/emergence.md`` has the notes (what was read, what could not be).

- Yang, Lin, Lee, Papailiopoulos & Nowak (2025), "Task Vectors in In-Context Learning: Emergence, Formation, and
  Benefits" (COLM 2025, arXiv 2501.09240): only the abstract, the TL;DR and the reviews could be read; the paper
  gives no number the chapter could quote here (its task-vector-prompting loss is described in words only).
- Dong, Jiang, Zhu & Ning (2026), "Understanding Task Vectors in In-Context Learning: Emergence, Functionality, and
  Limitations" (ICLR 2026; code github.com/Yuxin-Dong/ICL-TaskVector): the camera-ready PDF and the regression code.
- Saglam, Hu, Yang, Kalogerias & Karbasi (2025), "Learning Task Representations from In-Context Learning" (arXiv
  2502.05390; code github.com/baturaysaglam/ICL-Task-Representations): abstract and code; their results were not
  read.
"""

from __future__ import annotations

__all__ = ["DONG_REGRESSION", "DONG_SEEDS", "DONG_TASKV_LLAMA13B", "DONG_BIJECTION_LLAMA7B", "SAGLAM_BASE_MODEL",
           "SAGLAM_LTV_WEIGHTS", "SOURCES"]

#: Dong et al.'s linear-attention regression runs (``LinearTransformer/icl_regression.py`` defaults) — input
#: dimension d, demonstrations N, layers L, heads, batch of fresh tasks per step, training steps.
DONG_REGRESSION: dict[str, int] = {"d": 4, "N": 10, "L": 2, "heads": 1, "batch": 1000, "steps": 20001}
#: Seeds per configuration in Dong et al.'s protocol (App. B.1; they report the minimum risk over them).
DONG_SEEDS = 40
#: Dong et al. Table 2 (Llama-13B, average accuracy in %) — (baseline, task vector) at 0-shot and 1-shot.
DONG_TASKV_LLAMA13B: dict[str, tuple[float, float]] = {"0-shot": (10.28, 72.26), "1-shot": (58.11, 78.79)}
#: Dong et al. Table 1 (Llama-7B, 10 demonstrations) — (ICL, task vector) accuracy on the bijection version of
#: three tasks (a task merged with its inverse), where their rank-one argument predicts the task vector fails.
DONG_BIJECTION_LLAMA7B: dict[str, tuple[float, float]] = {"To Upper": (1.00, 0.55), "Eng->Fr": (0.54, 0.35),
                                                          "Present<->Past": (0.52, 0.33)}
#: Saglam et al.'s base models (Garg et al.'s GPT-2 ICL models) — layers, heads, width, input dimension.
SAGLAM_BASE_MODEL: dict[str, int] = {"layers": 12, "heads": 8, "width": 256, "n_dims": 20}
#: Number of learned weights of their learnable task vector on that model — one per (layer, head).
SAGLAM_LTV_WEIGHTS = SAGLAM_BASE_MODEL["layers"] * SAGLAM_BASE_MODEL["heads"]

SOURCES: dict[str, str] = {
    "DONG_REGRESSION": "Dong et al. (ICLR 2026), code LinearTransformer/icl_regression.py, argument defaults",
    "DONG_SEEDS": "Dong et al. (ICLR 2026), Appendix B.1",
    "DONG_TASKV_LLAMA13B": "Dong et al. (ICLR 2026), Table 2 (Llama-13B, average accuracy)",
    "DONG_BIJECTION_LLAMA7B": "Dong et al. (ICLR 2026), Table 1 (Llama-7B, n = 10)",
    "SAGLAM_BASE_MODEL": "Saglam et al. (2025), code synthetic/src (Garg et al.'s conf files)",
    "SAGLAM_LTV_WEIGHTS": "Saglam et al. (2025), code utils/learnable_task_vector.py (weights: n_layers x n_heads)",
}
