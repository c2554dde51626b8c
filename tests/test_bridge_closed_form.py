"""Tests of the closed-form additions for Chapter 9: the transplanted labels and the split of the excess loss."""

from __future__ import annotations

import pytest
import torch

from icllib import bridge, kernels
from icllib.experiments import ch01

K, D, M, N, TAU = 16, 6, 3, 7, 0.2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def Z_all():
    return ch01.paper_dictionary(K, D, M, seed=0)[1]


def test_transplant_carries_the_source_task_vector_and_stays_nearest(Z_all):
    Z = Z_all[:, :N]
    y_a = torch.randn(5, N, generator=_gen(1), dtype=torch.float64)
    y_b = torch.randn(5, N, generator=_gen(2), dtype=torch.float64)
    y = bridge.transplant_lambda_hat(Z, y_a, y_b)
    assert y.shape == (5, N) and y.dtype == torch.float64
    for tau in (0.0, TAU, 3.0):  # lambda_hat(y') = lambda_hat(y_B) at every noise level
        assert torch.allclose(bridge.lambda_hat(Z, y, tau), bridge.lambda_hat(Z, y_b, tau), atol=1e-10)
    P = bridge.kernel_projector(Z)
    assert torch.allclose(y @ P, y_a @ P, atol=1e-12)  # A's noise-only component is kept
    # nearest: moving along ker Z keeps lambda_hat and can only move away from y_A
    step = torch.randn(5, N, generator=_gen(3), dtype=torch.float64) @ P
    assert ((y + step - y_a).norm(dim=1) >= (y - y_a).norm(dim=1) - 1e-12).all()
    assert bridge.transplant_lambda_hat(Z, y_a, y_b[0]).shape == (5, N)  # broadcasting
    assert bridge.transplant_lambda_hat(Z.float(), y_a.float(), y_b.float()).dtype == torch.float32


def test_transplant_of_a_prompt_onto_itself_is_itself(Z_all):
    y = torch.randn(3, N, generator=_gen(4), dtype=torch.float64)
    assert torch.allclose(bridge.transplant_lambda_hat(Z_all[:, :N], y, y), y, atol=1e-12)


def test_excess_split_is_exact_and_sums_to_the_unseen_excess(Z_all):
    A_tilde = kernels.target_matrix(Z_all, N, TAU) + 0.3 * torch.randn(N, K, generator=_gen(5), dtype=torch.float64)
    split = bridge.excess_split(A_tilde, Z_all, N, TAU)
    assert split.row_space + split.kernel == pytest.approx(split.total, rel=1e-10)
    # total = 2K (L - L*) minus the labelled tokens' share, from Lemma 5 directly
    labelled = A_tilde.clone()
    labelled[:, N:] = kernels.target_matrix(Z_all, N, TAU)[:, N:]
    gap = kernels.population_loss(A_tilde, Z_all, N, TAU) - kernels.population_loss(labelled, Z_all, N, TAU)
    assert split.total == pytest.approx(float(2 * K * gap), rel=1e-9)
    assert split.kernel > 0 and split.row_space > 0


def test_excess_split_of_the_target_and_of_a_compressed_matrix(Z_all):
    A = kernels.target_matrix(Z_all, N, TAU)
    split = bridge.excess_split(A, Z_all, N, TAU)
    assert split.total < 1e-20 and split.kernel < 1e-20
    R = bridge.ridge_encoder(Z_all[:, :N], TAU)
    decoder = torch.randn(K - N, M, generator=_gen(6), dtype=torch.float64)
    compressed = A.clone()
    compressed[:, N:] = (decoder @ R).T  # factors through lambda_hat: nothing in ker Z
    assert bridge.excess_split(compressed, Z_all, N, TAU).kernel < 1e-20


def test_bad_inputs(Z_all):
    Z = Z_all[:, :N]
    y = torch.zeros(2, N, dtype=torch.float64)
    with pytest.raises(ValueError, match="y_source"):
        bridge.transplant_lambda_hat(Z, y, torch.zeros(2, N + 1))
    with pytest.raises(ValueError, match="y_context"):
        bridge.transplant_lambda_hat(Z, torch.zeros(2, N - 1), y)
    with pytest.raises(TypeError, match="Z"):
        bridge.transplant_lambda_hat("Z", y, y)
    with pytest.raises(ValueError, match="A_tilde"):
        bridge.excess_split(torch.zeros(N, K - 1), Z_all, N, TAU)
    with pytest.raises(ValueError, match="tau"):
        bridge.excess_split(torch.zeros(N, K), Z_all, N, -1.0)
    with pytest.raises(ValueError, match="n_labeled"):
        bridge.excess_split(torch.zeros(K, K), Z_all, K, TAU)
