"""Tests of the theorem quantities (icllib.theory) on small problems."""

import math

import numpy as np
import pytest
import torch

from icllib import basis, kernels, theory, train
from icllib.models.one_layer import OneLayerMultiHead

N, K, D, M, TAU = 5, 16, 6, 4, 0.1




def _problem(n_heads: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = basis.gaussian_dictionary(K, D, g)
    Z_all = basis.GaussianLookupFeatures(tokens, M, g)(tokens)
    return OneLayerMultiHead(tokens, N, n_heads, generator=g), Z_all, g


@pytest.mark.parametrize("n_heads", [1, N - 1, N, N + 3])
def test_head_matrices_rank_follows_proposition_1(n_heads):
    model, Z_all, _ = _problem(n_heads)
    hm = theory.head_matrices(model, Z_all, TAU)
    assert hm.B.shape == (K, N, n_heads)
    assert hm.singular_values.shape == (K, min(N, n_heads))
    assert torch.all(hm.rank == min(N, n_heads))
    assert hm.full_rank == (n_heads >= N)
    if n_heads < N:
        assert hm.zeta == 0.0
    else:
        assert hm.zeta > 0 and math.isclose(theory.zeta(model, Z_all, TAU), hm.zeta)
    # Z given as (m, N) gives the same matrices; B_k = Zbar S_k by definition
    torch.testing.assert_close(theory.head_matrices(model, Z_all[:, :N], TAU).B, hm.B)
    Zbar = kernels.zbar(Z_all[:, :N], TAU)
    S = model.attention_scores().detach()
    torch.testing.assert_close(hm.B[3], Zbar @ S[:, :, 3].T)


def test_best_w_given_Q_zero_iff_enough_heads():
    gaps = {}
    for n_heads in (1, N - 1, N, 2 * N):
        model, Z_all, _ = _problem(n_heads)
        best = theory.best_w_given_Q(model, Z_all, TAU)
        assert best.w.shape == (n_heads, K)
        with torch.no_grad():
            model.w.copy_(best.w)
        terms = kernels.loss_terms(Z_all, N, TAU)
        assert math.isclose(float(train.exact_gap(model.attention_matrix().detach(), terms)), best.gap,
                            rel_tol=1e-6, abs_tol=1e-20)
        gaps[n_heads] = best.gap
    assert gaps[1] > gaps[N - 1] > 1e-6
    assert gaps[N] < 1e-18 and gaps[2 * N] < 1e-18


def test_pl_ratio_respects_its_lower_bound():
    model, Z_all, g = _problem(2 * N)
    with torch.no_grad():
        model.w.normal_(generator=g)
    for gamma2 in (1.0, 4.0):
        ratio = theory.pl_ratio(model, Z_all, TAU, gamma2)
        bound = theory.pl_lower_bound(model, Z_all, TAU, gamma2)
        assert ratio >= bound > 0
    # gamma2 weights only the w-part of the gradient
    assert theory.pl_ratio(model, Z_all, TAU, 4.0) > theory.pl_ratio(model, Z_all, TAU, 1.0)


def test_smoothness_estimate_matches_dense_hessian():
    model, Z_all, g = _problem(3)
    with torch.no_grad():
        model.w.normal_(generator=g)
    terms = kernels.loss_terms(Z_all, N, TAU)
    Q0, w0 = model.Q.detach().clone(), model.w.detach().clone()
    gamma2 = 2.0

    def gap(flat):
        Q = flat[: Q0.numel()].reshape(Q0.shape)
        w = flat[Q0.numel():].reshape(w0.shape) * gamma2**0.5
        model_scores = torch.softmax((model.tokens[:N] @ Q) @ model.tokens.T, dim=1)
        return train.exact_gap(torch.einsum("hk,hnk->nk", w, model_scores), terms)

    flat = torch.cat([Q0.flatten(), w0.flatten() / gamma2**0.5])
    hess = torch.autograd.functional.hessian(gap, flat)
    expected = float(torch.linalg.eigvalsh(hess).abs().max())
    estimate = theory.smoothness_estimate(model, Z_all, TAU, g, gamma2=gamma2, n_iter=300)
    assert math.isclose(estimate, expected, rel_tol=1e-3)


def test_fit_linear_rate_recovers_a_geometric_sequence():
    steps = np.arange(0, 100, 10)
    gaps = 3.0 * 0.97**steps
    fit = theory.fit_linear_rate(gaps, steps)
    assert math.isclose(fit.rate, 0.97, rel_tol=1e-12) and math.isclose(fit.r2, 1.0)
    assert math.isclose(fit.intercept, math.log(3.0), rel_tol=1e-10)
    assert math.isclose(fit.steps_to(10.0), math.log(10) / -math.log(0.97))
    assert theory.fit_linear_rate([1.0, 0.5, 0.25]).rate == pytest.approx(0.5)


def test_predicted_rate_and_constant_are_inverse():
    rate = theory.predicted_rate(0.5, 4.0, 0.1, 200, c=0.25)
    assert rate == pytest.approx(1 - 0.25 * 0.5 * 4 * 0.01 / 200)
    assert theory.rate_constant(rate, 0.5, 4.0, 0.1, 200) == pytest.approx(0.25)


def test_effective_tau_turns_ridge_into_bayes():
    _, Z_all, g = _problem(1)
    y = torch.randn(4, N, generator=g, dtype=torch.float64)
    tau_eff = theory.effective_tau(M, TAU, N)
    assert tau_eff == pytest.approx(M * TAU / N)
    torch.testing.assert_close(kernels.ridge_predictions(Z_all, y, N, TAU),
                               kernels.bayes_predictions(Z_all, y, N, tau_eff))


def test_label_error_closed_form_matches_monte_carlo():
    _, Z_all, g = _problem(1)
    reg = M * TAU
    exact = theory.label_error(Z_all, N, TAU, reg)
    prompts = __import__("icllib.prompts", fromlist=["sample_prompts"]).sample_prompts(Z_all, N, TAU, 40_000, g)
    pred = kernels.ridge_predictions(Z_all, prompts.y, N, TAU)[:, N:]
    truth = prompts.lam @ Z_all[:, N:]
    mc = float(((pred - truth) ** 2).mean())
    assert math.isclose(exact, mc, rel_tol=0.03)
    # under lambda ~ N(0, I_m) the ridge with m tau is the best linear predictor: no other regularisation is better
    for other in (0.3 * reg, 3 * reg, N * TAU):
        assert theory.label_error(Z_all, N, TAU, other) >= exact - 1e-12


def test_bad_inputs():
    model, Z_all, g = _problem(2)
    with pytest.raises(TypeError, match="one-layer"):
        theory.head_matrices(torch.nn.Linear(2, 2), Z_all, TAU)
    with pytest.raises(ValueError, match="Z must be"):
        theory.head_matrices(model, Z_all[:, :3], TAU)
    with pytest.raises(ValueError, match="tau"):
        theory.head_matrices(model, Z_all, -1.0)
    with pytest.raises(ValueError, match="K = 16"):
        theory.pl_ratio(model, Z_all[:, :10], TAU)
    with pytest.raises(ValueError, match="gamma2"):
        theory.pl_ratio(model, Z_all, TAU, gamma2=0.0)
    with pytest.raises(TypeError, match="generator"):
        theory.smoothness_estimate(model, Z_all, TAU, generator=None)
    with pytest.raises(ValueError, match="at least 3"):
        theory.fit_linear_rate([1.0, 0.5])
    with pytest.raises(ValueError, match="> 0"):
        theory.fit_linear_rate([1.0, 0.0, 0.5])
    with pytest.raises(ValueError, match="same shape"):
        theory.fit_linear_rate([1.0, 0.5, 0.2], [0, 1])
    with pytest.raises(ValueError, match="eta_Q"):
        theory.predicted_rate(0.0, 1.0, 0.1, 10)
    with pytest.raises(ValueError, match="zeta"):
        theory.rate_constant(0.9, 1.0, 1.0, 0.0, 10)
    with pytest.raises(ValueError, match="n_labeled"):
        theory.effective_tau(10, 0.1, 0)
    with pytest.raises(ValueError, match="reg"):
        theory.label_error(Z_all, N, TAU, -1.0)
    with pytest.raises(TypeError, match="one-layer"):
        theory.best_w_given_Q(object(), Z_all, TAU)
