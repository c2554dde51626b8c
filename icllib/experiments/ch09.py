"""Chapter 09: the one-layer model trained by exact gradient descent, read through the closed-form task vector.

:func:`train_and_read` trains the model of Yang et al. (2024) on its exact loss (Theorem 1's two step sizes) and
reads every snapshot of its coefficient matrix A_tilde through lambda_hat: the spectrum of the unseen-token block,
the factorisation A_tilde_Q^T = D R + E (:func:`icllib.bridge.factor_through_lambda_hat`), the split of the excess
loss along ker(Z) (:func:`icllib.bridge.excess_split`) and the conflicting-task experiment run through the model's
own predictions (:func:`conflict_scores` on the labels of :func:`conflict_pairs`). It returns those curves and the
final A_tilde (float32), never the model.
"""

from __future__ import annotations

import torch

from icllib import bridge, prompts
from icllib._checks import as_float_tensor, check_int
from icllib.models.one_layer import OneLayerMultiHead
from icllib.train import train_exact_gd

__all__ = ["conflict_pairs", "conflict_scores", "train_and_read"]


def conflict_pairs(Z_all, n_labeled: int, tau: float, n_pairs: int, seed: int) -> dict[str, torch.Tensor]:
    """``n_pairs`` prompt pairs (A, B) and the labels ``y_AB`` closest to A's that carry lambda_hat(S_B).

    ``{"y_A", "y_B", "y_AB"}``, each (n_pairs, N), float64 (:func:`icllib.bridge.transplant_lambda_hat`).
    """
    n_pairs = check_int("n_pairs", n_pairs, minimum=1)
    batch = prompts.sample_prompts(Z_all, n_labeled, tau, 2 * n_pairs, torch.Generator().manual_seed(seed))
    y_A, y_B = batch.y[:n_pairs].double(), batch.y[n_pairs:].double()
    Z = torch.as_tensor(Z_all, dtype=torch.float64)[:, :n_labeled]
    return {"y_A": y_A, "y_B": y_B, "y_AB": bridge.transplant_lambda_hat(Z, y_A, y_B)}


def conflict_scores(A_tilde, n_labeled: int, y_A, y_B, y_AB) -> dict[str, torch.Tensor]:
    """The predictor ``yhat = A_tilde^T y`` on the three label sets of :func:`conflict_pairs`, unseen tokens only.

    Per pair: ``follows_B``, the share of unseen tokens whose answer from ``y_AB`` is closer to the answer from
    ``y_B`` than to the one from ``y_A``; ``rel_to_B``, ``||yhat(y_AB) - yhat(y_B)|| / ||yhat(y_A) - yhat(y_B)||``
    (0 for a predictor that factors through lambda_hat, about 1 for one that follows the labels it reads).
    """
    A = as_float_tensor("A_tilde", A_tilde, ndim=2).double()
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=A.shape[1] - 1)
    p_A, p_B, p_AB = ((torch.as_tensor(y, dtype=torch.float64) @ A)[:, n_labeled:] for y in (y_A, y_B, y_AB))
    follows = ((p_AB - p_B).abs() < (p_AB - p_A).abs()).double().mean(dim=1)
    rel = (p_AB - p_B).norm(dim=1) / (p_A - p_B).norm(dim=1)
    return {"follows_B": follows, "rel_to_B": rel}


def _read(A_tilde: torch.Tensor, Z_all: torch.Tensor, N: int, tau: float, pairs: dict) -> dict[str, object]:
    """What one snapshot shows: spectrum, factorisation, excess split and the conflict test's mean distance."""
    fac = bridge.factor_through_lambda_hat(A_tilde, Z_all, N, tau)
    split = bridge.excess_split(A_tilde, Z_all, N, tau)
    conflict = conflict_scores(A_tilde, N, pairs["y_A"], pairs["y_B"], pairs["y_AB"])
    return {"sv": fac.singular_values, "decoder_error": fac.decoder_error, "relative_rest": fac.relative_rest,
            "rest_energy": fac.rest_energy, "row_space": split.row_space, "kernel": split.kernel,
            "unseen_excess": split.total, "conflict_rel": float(conflict["rel_to_B"].mean())}


def train_and_read(tokens, Z_all, n_labeled: int, n_heads: int, tau: float, steps: int, seed: int, *,
                   eta_Q: float = 0.5, gamma2: float = 4.0, snapshot_every: int = 250, pair_seed: int = 5,
                   n_pairs: int = 200, progress: bool = False) -> dict:
    """Train the one-layer model (initialisation ``seed``) by exact GD and read each snapshot through lambda_hat.

    ``tokens`` (K, d) is the dictionary and ``Z_all`` (m, K) its features. Returns float64
    arrays over the snapshots (every ``snapshot_every`` steps, step 0 left out since w = 0 there): ``step``,
    ``gap`` (L - L*), ``sv`` (snapshots, N), ``decoder_error``, ``relative_rest``, ``rest_energy``, ``row_space``,
    ``kernel``, ``unseen_excess``, ``conflict_rel``; and ``A_final`` (N, K) float32, ``step_time_s``.
    """
    steps = check_int("steps", steps, minimum=1)
    snapshot_every = check_int("snapshot_every", snapshot_every, minimum=1)
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2, dtype=torch.float64)
    model = OneLayerMultiHead(tokens, n_labeled, n_heads, torch.Generator().manual_seed(seed))
    pairs = conflict_pairs(Z_all, n_labeled, tau, n_pairs, pair_seed)
    rows: list[dict] = []

    def keep(step: int, current: OneLayerMultiHead) -> None:
        if step > 0:
            with torch.no_grad():
                rows.append({"step": step, **_read(current.attention_matrix().double(), Z_all, n_labeled, tau,
                                                   pairs)})

    history = train_exact_gd(model, Z_all, tau, steps, eta_Q=eta_Q, gamma2=gamma2, eval_every=snapshot_every,
                             generator=torch.Generator().manual_seed(2), callback=keep, progress=progress)
    out = {name: torch.tensor([r[name] for r in rows], dtype=torch.float64)
           for name in rows[0] if name != "sv"}
    out["sv"] = torch.stack([r["sv"] for r in rows])
    out["gap"] = torch.tensor(history.loss_gap[1:], dtype=torch.float64)
    out["A_final"] = model.attention_matrix().detach().float()
    out["step_time_s"] = float(history.step_time_s)
    return out
