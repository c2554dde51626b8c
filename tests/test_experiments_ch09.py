"""Tests of icllib.experiments.ch09: the conflict test on known predictors, and one short training run read out."""

from __future__ import annotations

import pytest
import torch

from icllib import bridge, kernels
from icllib.experiments import ch01, ch09

K, D, M, N, H, TAU = 24, 8, 3, 8, 10, 0.5


@pytest.fixture(scope="module")
def dictionary():
    return ch01.paper_dictionary(K, D, M, seed=0)


def test_conflict_pairs_carry_the_source_task_vector(dictionary):
    _, Z_all = dictionary
    pairs = ch09.conflict_pairs(Z_all, N, TAU, 7, seed=1)
    assert {k: tuple(v.shape) for k, v in pairs.items()} == {"y_A": (7, N), "y_B": (7, N), "y_AB": (7, N)}
    Z = Z_all[:, :N]
    assert torch.allclose(bridge.lambda_hat(Z, pairs["y_AB"], TAU), bridge.lambda_hat(Z, pairs["y_B"], TAU),
                          atol=1e-10)
    again = ch09.conflict_pairs(Z_all, N, TAU, 7, seed=1)
    assert torch.equal(again["y_AB"], pairs["y_AB"])  # deterministic given the seed


def test_conflict_scores_of_the_target_and_of_a_label_reader(dictionary):
    _, Z_all = dictionary
    pairs = ch09.conflict_pairs(Z_all, N, TAU, 50, seed=2)
    target = ch09.conflict_scores(kernels.target_matrix(Z_all, N, TAU), N, **pairs)
    assert target["rel_to_B"].max() < 1e-9 and target["follows_B"].min() == 1.0
    # a predictor that reads A's noise-only directions as much as the others: part of A stays in its answers
    reader = torch.randn(N, K, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scores = ch09.conflict_scores(reader, N, **pairs)
    assert scores["rel_to_B"].mean() > 0.3 and scores["follows_B"].mean() < 0.9


def test_train_and_read_returns_curves_and_compresses(dictionary):
    tokens, Z_all = dictionary
    out = ch09.train_and_read(tokens, Z_all, N, H, TAU, 60, seed=1, snapshot_every=20, n_pairs=10)
    assert out["step"].tolist() == [20.0, 40.0, 60.0]
    assert out["sv"].shape == (3, N) and out["A_final"].shape == (N, K) and out["A_final"].dtype == torch.float32
    assert torch.allclose(out["row_space"] + out["kernel"], out["unseen_excess"], rtol=1e-8)
    assert (out["gap"].diff() < 0).all() and (out["kernel"].diff() < 0).all()
    assert out["step_time_s"] > 0


def test_bad_inputs(dictionary):
    tokens, Z_all = dictionary
    with pytest.raises(ValueError, match="n_pairs"):
        ch09.conflict_pairs(Z_all, N, TAU, 0, seed=1)
    with pytest.raises(ValueError, match="n_labeled"):
        ch09.conflict_scores(torch.zeros(N, K), K, torch.zeros(1, N), torch.zeros(1, N), torch.zeros(1, N))
    with pytest.raises(ValueError, match="A_tilde"):
        ch09.conflict_scores(torch.zeros(N), N, torch.zeros(1, N), torch.zeros(1, N), torch.zeros(1, N))
    with pytest.raises(ValueError, match="steps"):
        ch09.train_and_read(tokens, Z_all, N, H, TAU, 0, seed=1)
    with pytest.raises(ValueError, match="snapshot_every"):
        ch09.train_and_read(tokens, Z_all, N, H, TAU, 10, seed=1, snapshot_every=0)
