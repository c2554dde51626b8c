"""Chapter 01: the paper's dictionary, and Lemma 5's closed-form loss checked against Monte Carlo at full size.

:func:`paper_dictionary` draws the setting of the paper's experiments (K unit-norm Gaussian tokens in R^d, features
drawn i.i.d. N(0, 1) once per token); chapters 02 and 09 build their dictionaries with it too.
:func:`lemma5_check` is the chapter's expensive step: for a family of coefficient matrices A_tilde (the target A,
A plus perturbations, matrices unrelated to A), the closed form of Lemma 5 and a Monte-Carlo average of the loss's
definition with its standard error. :func:`ridge_error_curve` is Figure 1.2: the ridge prediction's error at the
unlabelled tokens against the number of labels, per prompt, beside its closed form.
"""

from __future__ import annotations

import torch

from icllib import basis, kernels, prompts, theory
from icllib._checks import check_float, check_int

__all__ = ["paper_dictionary", "lemma5_candidates", "lemma5_check", "ridge_error_curve"]


def paper_dictionary(n_tokens: int, dim: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens (K, d), Z_all (m, K))``: K unit-norm Gaussian tokens and their Gaussian lookup features (float64).

    Every token and feature is i.i.d., so the first K' tokens of a draw of K > K' (with the first K' columns of
    Z_all) are a dictionary of K' tokens in the same law: slicing one draw gives nested dictionaries (chapter 02's
    sweep over K).
    """
    n_tokens = check_int("n_tokens", n_tokens, minimum=2)
    dim = check_int("dim", dim, minimum=1)
    m = check_int("m", m, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    gen = torch.Generator().manual_seed(seed)
    tokens = basis.gaussian_dictionary(n_tokens, dim, gen)
    return tokens, basis.GaussianLookupFeatures(tokens, m, gen)(tokens)


def lemma5_candidates(target: torch.Tensor, seed: int, perturbations=(0.003, 0.03, 0.3),
                      random_scales=(0.05, 0.2)) -> dict[str, torch.Tensor]:
    """The coefficient matrices Lemma 5 is checked on: ``A``, zero, ``A + s G`` and ``s G`` (G standard Gaussian)."""
    target = torch.as_tensor(target, dtype=torch.float64)
    gen = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    shape = tuple(target.shape)
    out = {"A (target)": target, "zero": torch.zeros(shape, dtype=torch.float64)}
    for s in perturbations:
        out[f"A + {s} noise"] = target + check_float("perturbation", s, minimum=0.0) * torch.randn(
            shape, generator=gen, dtype=torch.float64)
    for s in random_scales:
        out[f"random, scale {s}"] = check_float("random scale", s, minimum=0.0) * torch.randn(
            shape, generator=gen, dtype=torch.float64)
    return out


def lemma5_check(n_tokens: int, n_labeled: int, dim: int, m: int, tau: float, n_mc: int, seed: int = 0,
                 candidate_seed: int = 1, mc_seed: int = 2) -> dict:
    """Closed form against Monte Carlo for each matrix of :func:`lemma5_candidates` (dictionary ``seed``).

    Returns ``{"names": [...], "exact": (n,), "mc": (n,), "se": (n,), "L_star": float}`` (float64 arrays):
    ``exact`` from :func:`icllib.kernels.population_loss`, ``mc`` and ``se`` the mean of the definition over
    ``n_mc`` sampled prompts and its standard error (:func:`icllib.kernels.monte_carlo_loss`).
    """
    n_mc = check_int("n_mc", n_mc, minimum=2)
    _, Z_all = paper_dictionary(n_tokens, dim, m, seed)
    A = kernels.target_matrix(Z_all, n_labeled, tau)
    candidates = lemma5_candidates(A, candidate_seed)
    gen = torch.Generator().manual_seed(check_int("mc_seed", mc_seed, minimum=0))
    exact, mc, se = [], [], []
    for A_tilde in candidates.values():
        exact.append(float(kernels.population_loss(A_tilde, Z_all, n_labeled, tau)))
        mean, err = kernels.monte_carlo_loss(A_tilde, Z_all, n_labeled, tau, n_mc, gen, return_stderr=True)
        mc.append(mean)
        se.append(err)
    as_array = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return {"names": list(candidates), "exact": as_array(exact), "mc": as_array(mc), "se": as_array(se),
            "L_star": float(kernels.optimal_loss(Z_all, n_labeled, tau))}


def ridge_error_curve(Z_all, n_grid, tau: float, n_prompts: int, seed: int = 0) -> dict:
    """Figure 1.2: per N in ``n_grid``, the ridge prediction's squared error at the K - N unlabelled tokens against
    the noise-free template (regularisation m tau), for ``n_prompts`` prompts, and its closed form
    (:func:`icllib.theory.label_error`).

    Returns ``{"n": [...], "per_prompt": (len(n_grid), n_prompts) mean error over the unlabelled tokens of each
    prompt, "closed_form": (len(n_grid),), "signal": E (lambda^T z_k)^2 averaged over all tokens}``.
    """
    Z_all = torch.as_tensor(Z_all, dtype=torch.float64)
    m, K = Z_all.shape
    n_prompts = check_int("n_prompts", n_prompts, minimum=2)
    rows, closed = [], []
    for n in n_grid:
        n = check_int("n", n, minimum=1, maximum=K - 1)
        batch = prompts.sample_prompts(Z_all, n, tau, n_prompts, torch.Generator().manual_seed(seed + n))
        yhat = kernels.ridge_predictions(Z_all, batch.y, n, tau)
        rows.append(((yhat - batch.lam @ Z_all)[:, n:] ** 2).mean(dim=1))
        closed.append(theory.label_error(Z_all, n, tau, m * tau))
    return {"n": [int(n) for n in n_grid], "per_prompt": torch.stack(rows),
            "closed_form": torch.tensor(closed, dtype=torch.float64),
            "signal": float((Z_all**2).sum(0).mean())}
