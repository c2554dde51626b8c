"""Tests of icllib.kernels: ridge identities, the target matrix, Lemma 5 against Monte Carlo, gradients, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icllib import basis, kernels, prompts


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def features(m: int = 6, K: int = 40, seed: int = 0) -> torch.Tensor:
    """A small Z_all (m, K) of i.i.d. N(0, 1) features, as in the paper's experiments."""
    return torch.randn(m, K, generator=gen(seed), dtype=torch.float64)


def random_coefficients(N: int, K: int, seed: int, scale: float = 0.3) -> torch.Tensor:
    return scale * torch.randn(N, K, generator=gen(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------- ridge


@pytest.mark.parametrize("m, N", [(6, 4), (4, 9), (5, 5)])
def test_ridge_coefficients_formula_and_push_through(m, N):
    Z = features(m, N, seed=1)
    y = torch.randn(3, 2, N, generator=gen(2), dtype=torch.float64)
    reg = 0.7
    lam = kernels.ridge_coefficients(Z, y, reg)
    assert lam.shape == (3, 2, m)
    direct = torch.linalg.solve(Z @ Z.T + reg * torch.eye(m, dtype=torch.float64), Z @ y.reshape(-1, N).T).T
    torch.testing.assert_close(lam.reshape(-1, m), direct, atol=1e-12, rtol=1e-10)
    # push-through (Woodbury) identity behind the choice of the smaller solve
    left = torch.linalg.solve(Z @ Z.T + reg * torch.eye(m, dtype=torch.float64), Z)
    right = Z @ torch.linalg.inv(Z.T @ Z + reg * torch.eye(N, dtype=torch.float64))
    torch.testing.assert_close(left, right, atol=1e-12, rtol=1e-10)


def test_ridge_coefficients_reg_zero_is_min_norm_least_squares():
    Z = features(6, 4, seed=3)  # N < m: underdetermined, interpolates with the smallest norm
    y = torch.randn(4, generator=gen(4), dtype=torch.float64)
    lam = kernels.ridge_coefficients(Z, y, 0.0)
    torch.testing.assert_close(Z.T @ lam, y, atol=1e-12, rtol=0)
    small = kernels.ridge_coefficients(Z, y, 1e-9)
    torch.testing.assert_close(lam, small, atol=1e-6, rtol=0)


def test_ridge_predictions_are_target_matrix_predictions():
    m, K, N, tau = 6, 40, 9, 0.2
    Z_all = features(m, K)
    y = prompts.sample_prompts(Z_all, N, tau, 5, gen(5)).y
    yhat = kernels.ridge_predictions(Z_all, y, N, tau)
    assert yhat.shape == (5, K)
    torch.testing.assert_close(yhat[:, :N], y)  # the shown labels are copied
    torch.testing.assert_close(yhat, y @ kernels.target_matrix(Z_all, N, tau), atol=1e-12, rtol=1e-10)
    lam_hat = kernels.ridge_coefficients(Z_all[:, :N], y, m * tau)
    torch.testing.assert_close(yhat[:, N:], lam_hat @ Z_all[:, N:])


def test_bayes_predictions_use_N_tau():
    m, K, N, tau = 6, 40, 9, 0.2
    Z_all = features(m, K)
    y = prompts.sample_prompts(Z_all, N, tau, 4, gen(6)).y
    best = kernels.bayes_predictions(Z_all, y, N, tau)
    lam_tau = kernels.bayes_coefficients(Z_all[:, :N], y, tau)
    torch.testing.assert_close(lam_tau, kernels.ridge_coefficients(Z_all[:, :N], y, N * tau))
    torch.testing.assert_close(best, torch.cat([y, lam_tau @ Z_all[:, N:]], dim=1))
    # N = m: the two regularisations coincide and the gap vanishes
    assert float(kernels.ridge_gap(Z_all, m, tau)) == 0.0


def test_ridge_gap_expectation_matches_sampled_prompts():
    m, K, N, tau = 6, 40, 12, 0.3
    Z_all = features(m, K)
    expected = float(kernels.ridge_gap(Z_all, N, tau))
    assert expected > 0
    torch.testing.assert_close(
        kernels.ridge_gap(Z_all, N, tau, lambda_moment=torch.eye(m, dtype=torch.float64)),
        torch.tensor(expected, dtype=torch.float64),
    )
    batch = prompts.sample_prompts(Z_all, N, tau, 40000, gen(7))
    yhat_star = kernels.ridge_predictions(Z_all, batch.y, N, tau)
    yhat_best = kernels.bayes_predictions(Z_all, batch.y, N, tau)
    per_prompt = ((yhat_star - yhat_best) ** 2).mean(dim=1)
    sampled = float(kernels.ridge_gap(Z_all, N, tau, y=batch.y))
    assert sampled == pytest.approx(float(per_prompt.mean()), rel=1e-10)
    assert sampled == pytest.approx(float(kernels.inference_loss(yhat_star, yhat_best)), rel=1e-10)
    assert abs(sampled - expected) < 4 * float(per_prompt.std()) / 40000**0.5
    # out of domain, lambda ~ N(1, 4 I): second moment C = 4 I + 1 1^T
    C = 4 * torch.eye(m, dtype=torch.float64) + torch.ones(m, m, dtype=torch.float64)
    expected_ood = float(kernels.ridge_gap(Z_all, N, tau, lambda_moment=C))
    ood = prompts.sample_prompts(Z_all, N, tau, 40000, gen(8), distribution="out_of_domain")
    per_prompt = (
        (kernels.ridge_predictions(Z_all, ood.y, N, tau) - kernels.bayes_predictions(Z_all, ood.y, N, tau)) ** 2
    ).mean(dim=1)
    assert abs(float(per_prompt.mean()) - expected_ood) < 4 * float(per_prompt.std()) / 40000**0.5


# ----------------------------------------------------------------------------------------------- target matrix


def test_target_matrix_columns():
    m, K, N, tau = 6, 40, 9, 0.2
    Z_all = features(m, K)
    A = kernels.target_matrix(Z_all, N, tau)
    assert A.shape == (N, K)
    assert torch.equal(A[:, :N], torch.eye(N, dtype=torch.float64))  # exactly, not up to rounding
    Z = Z_all[:, :N]
    M = Z.T @ Z + m * tau * torch.eye(N, dtype=torch.float64)
    right = torch.cat([torch.eye(N, dtype=torch.float64), torch.zeros(N, K - N, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(A, torch.linalg.solve(M, Z.T @ Z_all + m * tau * right), atol=1e-12, rtol=1e-10)


def test_target_matrix_tau_zero_recovers_the_template():
    m, K, N = 5, 30, 8  # N >= m: lambda is determined by the labels
    Z_all = features(m, K)
    A = kernels.target_matrix(Z_all, N, 0.0)
    torch.testing.assert_close(A[:, N:], torch.linalg.pinv(Z_all[:, :N]) @ Z_all[:, N:])
    assert torch.equal(A[:, :N], torch.eye(N, dtype=torch.float64))
    batch = prompts.sample_prompts(Z_all, N, 0.0, 6, gen(9))
    torch.testing.assert_close(batch.y @ A, batch.lam @ Z_all, atol=1e-10, rtol=0)
    assert float(kernels.optimal_loss(Z_all, N, 0.0)) < 1e-20
    # N < m at tau = 0: the formula (Z^T Z)^{-1} Z^T Z_all is well defined and gives the same matrix
    Z_all = features(8, 30, seed=1)
    Z = Z_all[:, :5]
    torch.testing.assert_close(
        kernels.target_matrix(Z_all, 5, 0.0), torch.linalg.solve(Z.T @ Z, Z.T @ Z_all), atol=1e-10, rtol=1e-8
    )
    # continuity at tau = 0+
    torch.testing.assert_close(kernels.target_matrix(Z_all, 5, 1e-12), kernels.target_matrix(Z_all, 5, 0.0),
                               atol=1e-8, rtol=0)


def test_zbar_is_the_symmetric_square_root():
    m, N, tau = 6, 9, 0.2
    Z = features(m, N)
    root = kernels.zbar(Z, tau)
    M = Z.T @ Z + m * tau * torch.eye(N, dtype=torch.float64)
    torch.testing.assert_close(root, root.T)
    torch.testing.assert_close(root @ root, M, atol=1e-11, rtol=1e-11)
    assert float(torch.linalg.eigvalsh(root).min()) > 0
    assert kernels.zbar(Z.float(), tau).dtype == torch.float32


# ----------------------------------------------------------------------------------------------- Lemma 5


def test_population_loss_matches_its_zbar_form_and_L_star_formula():
    m, K, N, tau = 6, 40, 9, 0.2
    Z_all = features(m, K)
    A_tilde = random_coefficients(N, K, 10)
    A = kernels.target_matrix(Z_all, N, tau)
    L_star = kernels.optimal_loss(Z_all, N, tau)
    root = kernels.zbar(Z_all[:, :N], tau)
    lemma5 = ((root @ (A_tilde - A)) ** 2).sum() / (2 * K) + L_star
    torch.testing.assert_close(kernels.population_loss(A_tilde, Z_all, N, tau), lemma5)
    # L* = (1/2K) sum_{k>N} (||z_k||^2 + m tau - z_k^T Z M^{-1} Z^T z_k)
    Z, Z_Q = Z_all[:, :N], Z_all[:, N:]
    M = Z.T @ Z + m * tau * torch.eye(N, dtype=torch.float64)
    cross = Z.T @ Z_Q
    alt = ((Z_Q**2).sum() + m * tau * (K - N) - (cross * torch.linalg.solve(M, cross)).sum()) / (2 * K)
    torch.testing.assert_close(L_star, alt)


@pytest.mark.parametrize("which", ["random", "target", "zero", "copy_first"])
def test_population_loss_matches_monte_carlo(which):
    m, K, N, tau = 6, 40, 9, 0.2
    Z_all = features(m, K)
    A_tilde = {
        "random": random_coefficients(N, K, 11),
        "target": kernels.target_matrix(Z_all, N, tau),
        "zero": torch.zeros(N, K, dtype=torch.float64),
        "copy_first": torch.zeros(N, K, dtype=torch.float64).index_fill_(0, torch.tensor([0]), 1.0),
    }[which]
    exact = float(kernels.population_loss(A_tilde, Z_all, N, tau))
    mc, stderr = kernels.monte_carlo_loss(A_tilde, Z_all, N, tau, 40000, gen(12), return_stderr=True)
    assert abs(mc - exact) < 4 * stderr, (which, exact, mc, stderr)


def test_monte_carlo_loss_is_distribution_free_in_second_moment():
    # only E[lambda lambda^T] = I enters: Rademacher entries give the same population loss
    m, K, N, tau = 5, 30, 7, 0.1
    Z_all = features(m, K, seed=2)
    A_tilde = random_coefficients(N, K, 13)

    def rademacher(n, dim, generator):
        return 2.0 * torch.randint(0, 2, (n, dim), generator=generator, dtype=torch.float64) - 1.0

    exact = float(kernels.population_loss(A_tilde, Z_all, N, tau))
    mc, stderr = kernels.monte_carlo_loss(
        A_tilde, Z_all, N, tau, 40000, gen(14), distribution=rademacher, chunk_size=5000, return_stderr=True
    )
    assert abs(mc - exact) < 4 * stderr


def test_paper_size_closed_form_vs_monte_carlo():
    # The paper note's check (N=30, K=200, d=100, m=20, tau=0.1, unit-norm Gaussian tokens, a random A_tilde)
    K, N, d, m, tau = 200, 30, 100, 20, 0.1
    tokens = basis.gaussian_dictionary(K, d, gen(15))
    Z_all = basis.GaussianLookupFeatures(tokens, m, gen(16))(tokens)
    A_tilde = random_coefficients(N, K, 17, scale=0.2)
    exact = float(kernels.population_loss(A_tilde, Z_all, N, tau))
    mc, stderr = kernels.monte_carlo_loss(A_tilde, Z_all, N, tau, 40000, gen(18), return_stderr=True)
    assert abs(mc - exact) < 4 * stderr
    assert stderr / exact < 0.01


def test_loss_at_target_is_optimal_and_never_below():
    m, K, N, tau = 6, 40, 9, 0.2
    Z_all = features(m, K)
    A = kernels.target_matrix(Z_all, N, tau)
    L_star = kernels.optimal_loss(Z_all, N, tau)
    assert float(L_star) > 0
    torch.testing.assert_close(kernels.population_loss(A, Z_all, N, tau), L_star, atol=0, rtol=1e-14)
    batch = torch.stack([A + random_coefficients(N, K, seed, scale=s) for seed, s in enumerate([1e-6, 1e-3, 1.0])])
    losses = kernels.population_loss(batch, Z_all, N, tau)  # leading batch dimension: one loss each
    assert losses.shape == (3,) and bool((losses > L_star).all())


def test_gradient_matches_autograd():
    m, K, N, tau = 6, 40, 9, 0.2
    Z_all = features(m, K)
    A_tilde = random_coefficients(N, K, 19).requires_grad_(True)
    kernels.population_loss(A_tilde, Z_all, N, tau).backward()
    closed = kernels.population_loss_grad(A_tilde.detach(), Z_all, N, tau)
    torch.testing.assert_close(A_tilde.grad, closed, atol=1e-13, rtol=1e-11)
    # zero at the target
    A = kernels.target_matrix(Z_all, N, tau)
    assert float(kernels.population_loss_grad(A, Z_all, N, tau).abs().max()) < 1e-12


def test_autograd_gradient_passes_gradcheck():
    m, K, N, tau = 4, 12, 5, 0.3
    Z_all = features(m, K, seed=3)
    A_tilde = random_coefficients(N, K, 20).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: kernels.population_loss(a, Z_all, N, tau), (A_tilde,))


def test_loss_terms_reuse():
    m, K, N, tau = 6, 40, 9, 0.2
    Z_all = features(m, K)
    terms = kernels.loss_terms(Z_all, N, tau)
    A_tilde = random_coefficients(N, K, 21)
    torch.testing.assert_close(terms.loss(A_tilde), kernels.population_loss(A_tilde, Z_all, N, tau))
    torch.testing.assert_close(terms.grad(A_tilde), kernels.population_loss_grad(A_tilde, Z_all, N, tau))
    torch.testing.assert_close(terms.optimal, kernels.optimal_loss(Z_all, N, tau))


def test_dtypes_and_numpy_inputs():
    m, K, N, tau = 6, 40, 9, 0.2
    Z64 = features(m, K)
    Z32, A32 = Z64.float(), random_coefficients(N, K, 22).float()
    assert kernels.target_matrix(Z32, N, tau).dtype == torch.float32
    assert kernels.optimal_loss(Z32, N, tau).dtype == torch.float32
    loss32 = kernels.population_loss(A32, Z32, N, tau)
    assert loss32.dtype == torch.float32
    assert kernels.population_loss_grad(A32, Z32, N, tau).dtype == torch.float32
    assert kernels.population_loss(A32, Z64, N, tau).dtype == torch.float64  # mixed: float64
    torch.testing.assert_close(loss32.double(), kernels.population_loss(A32.double(), Z64, N, tau), rtol=1e-5, atol=0)
    # float32 parameters still receive float32 gradients through a float64 loss
    A = A32.clone().requires_grad_(True)
    kernels.population_loss(A, Z64, N, tau).backward()
    assert A.grad.dtype == torch.float32
    y = np.random.default_rng(0).normal(size=(3, N)).astype(np.float32)
    assert kernels.ridge_predictions(Z32.numpy(), y, N, tau).dtype == torch.float32
    assert kernels.ridge_predictions(Z64.numpy(), y, N, tau).dtype == torch.float64
    assert kernels.ridge_coefficients(Z32[:, :N], torch.from_numpy(y), 0.1).dtype == torch.float32
    assert kernels.ridge_gap(Z32, N, tau).dtype == torch.float32
    assert kernels.inference_loss(y, y).dtype == torch.float32
    assert float(kernels.population_loss(A32.numpy(), Z64.numpy(), N, tau)) == pytest.approx(float(loss32), rel=1e-5)


def test_inference_loss():
    yhat = torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    star = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert float(kernels.inference_loss(yhat, star)) == pytest.approx(2.0)  # ((4)/2 + (4)/2) / 2
    assert float(kernels.inference_loss(yhat[0], star[0])) == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------------- bad input

Z_OK = features(6, 40)
A_OK = random_coefficients(9, 40, 0)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: kernels.ridge_coefficients(Z_OK[0], torch.zeros(6), 0.1), ValueError, "Z"),
        (lambda: kernels.ridge_coefficients(Z_OK[:, :9], torch.zeros(8, dtype=torch.float64), 0.1), ValueError, "y"),
        (lambda: kernels.ridge_coefficients(Z_OK[:, :9], torch.zeros(9, dtype=torch.float64), -1.0), ValueError,
         "reg"),
        (lambda: kernels.ridge_coefficients(Z_OK[:, :9], torch.zeros(9, dtype=torch.int64), 0.1), TypeError, "y"),
        (lambda: kernels.ridge_coefficients(Z_OK[:, :9], [0.0] * 9, 0.1), TypeError, "y"),
        (lambda: kernels.ridge_coefficients(Z_OK[:, :9], torch.zeros(9, dtype=torch.float64), "0.1"), TypeError,
         "reg"),
        (lambda: kernels.ridge_predictions(Z_OK, torch.zeros(2, 40, dtype=torch.float64), 9, 0.1), ValueError,
         "n_labeled = 9"),
        (lambda: kernels.ridge_predictions(Z_OK, torch.zeros(2, 9, dtype=torch.float64), 9, -0.1), ValueError, "tau"),
        (lambda: kernels.bayes_coefficients(Z_OK[:, :9], torch.zeros(9, dtype=torch.float64), float("nan")),
         ValueError, "tau"),
        (lambda: kernels.bayes_predictions(Z_OK, torch.zeros(9, dtype=torch.float64), 40, 0.1), ValueError,
         "n_labeled"),
        (lambda: kernels.ridge_gap(Z_OK, 9, 0.1, y=torch.zeros(3, 8, dtype=torch.float64)), ValueError, "y"),
        (lambda: kernels.ridge_gap(Z_OK, 9, 0.1, lambda_moment=torch.eye(5, dtype=torch.float64)), ValueError,
         "lambda_moment"),
        (lambda: kernels.ridge_gap(Z_OK, 9, 0.1, y=torch.zeros(3, 9, dtype=torch.float64),
                                   lambda_moment=torch.eye(6, dtype=torch.float64)), ValueError, "not both"),
        (lambda: kernels.target_matrix(Z_OK, 40, 0.1), ValueError, "n_labeled"),
        (lambda: kernels.target_matrix(Z_OK, 50, 0.1), ValueError, "n_labeled"),
        (lambda: kernels.target_matrix(Z_OK, 0, 0.1), ValueError, "n_labeled"),
        (lambda: kernels.target_matrix(Z_OK, 9.0, 0.1), TypeError, "n_labeled"),
        (lambda: kernels.target_matrix(Z_OK, 9, -0.1), ValueError, "tau"),
        (lambda: kernels.target_matrix(Z_OK, 9, None), TypeError, "tau"),
        (lambda: kernels.target_matrix(Z_OK[:, :1], 1, 0.1), ValueError, "Z_all"),
        (lambda: kernels.target_matrix(Z_OK.long(), 9, 0.1), TypeError, "Z_all"),
        (lambda: kernels.target_matrix(torch.zeros(2, 3, 4, dtype=torch.float64), 1, 0.1), ValueError, "Z_all"),
        (lambda: kernels.zbar(Z_OK[0], 0.1), ValueError, "Z"),
        (lambda: kernels.zbar(Z_OK, -1.0), ValueError, "tau"),
        (lambda: kernels.population_loss(A_OK[:, :39], Z_OK, 9, 0.1), ValueError, r"\(\.\.\., 9, 40\)"),
        (lambda: kernels.population_loss(A_OK[:8], Z_OK, 9, 0.1), ValueError, "A_tilde"),
        (lambda: kernels.population_loss(A_OK[0], Z_OK, 9, 0.1), ValueError, "A_tilde"),
        (lambda: kernels.population_loss(A_OK.int(), Z_OK, 9, 0.1), TypeError, "A_tilde"),
        (lambda: kernels.population_loss(A_OK, Z_OK[:, :30], 9, 0.1), ValueError, "A_tilde"),
        (lambda: kernels.population_loss(A_OK, Z_OK, 9, -0.1), ValueError, "tau"),
        (lambda: kernels.optimal_loss(Z_OK, 41, 0.1), ValueError, "n_labeled"),
        (lambda: kernels.population_loss_grad(A_OK.T, Z_OK, 9, 0.1), ValueError, "A_tilde"),
        (lambda: kernels.monte_carlo_loss(A_OK, Z_OK, 9, 0.1, 1, gen()), ValueError, "n_prompts"),
        (lambda: kernels.monte_carlo_loss(A_OK, Z_OK, 9, 0.1, 10, 1), TypeError, "generator"),
        (lambda: kernels.monte_carlo_loss(A_OK[None], Z_OK, 9, 0.1, 10, gen()), ValueError, "A_tilde"),
        (lambda: kernels.monte_carlo_loss(A_OK, Z_OK, 9, 0.1, 10, gen(), chunk_size=0), ValueError, "chunk_size"),
        (lambda: kernels.monte_carlo_loss(A_OK, Z_OK, 9, 0.1, 10, gen(), distribution="wide"), ValueError,
         "distribution"),
        (lambda: kernels.bayes_coefficients(Z_OK[:, :9], torch.zeros(8, dtype=torch.float64), 0.1), ValueError, "y"),
        (lambda: kernels.inference_loss(torch.zeros(3, 4), torch.zeros(3, 5)), ValueError, "same shape"),
        (lambda: kernels.inference_loss(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.int64)), TypeError,
         "yhat_star"),
        (lambda: kernels.inference_loss(torch.tensor(1.0), torch.tensor(1.0)), ValueError, "same shape"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
