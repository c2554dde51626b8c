"""Tests of icllib.experiments.ch01: the paper's dictionary, Lemma 5 against Monte Carlo, the ridge error curve."""

from __future__ import annotations

import pytest
import torch

from icllib import kernels, theory
from icllib.experiments import ch01

K, D, M, N, TAU = 20, 6, 4, 6, 0.2


def test_paper_dictionary_is_deterministic_and_nested():
    tokens, Z_all = ch01.paper_dictionary(K, D, M, seed=3)
    assert tokens.shape == (K, D) and Z_all.shape == (M, K) and Z_all.dtype == torch.float64
    assert torch.allclose(tokens.norm(dim=1), torch.ones(K, dtype=torch.float64))  # unit-norm tokens
    again_tokens, again_Z = ch01.paper_dictionary(K, D, M, seed=3)
    assert torch.equal(tokens, again_tokens) and torch.equal(Z_all, again_Z)
    assert not torch.equal(ch01.paper_dictionary(K, D, M, seed=4)[1], Z_all)


def test_lemma5_candidates():
    A = kernels.target_matrix(ch01.paper_dictionary(K, D, M, seed=0)[1], N, TAU)
    out = ch01.lemma5_candidates(A, seed=1)
    assert list(out)[:2] == ["A (target)", "zero"] and len(out) == 7
    assert torch.equal(out["A (target)"], A) and out["zero"].abs().max() == 0
    assert (out["A + 0.003 noise"] - A).abs().max() < (out["A + 0.3 noise"] - A).abs().max()


def test_lemma5_check_agrees_with_monte_carlo():
    out = ch01.lemma5_check(K, N, D, M, TAU, n_mc=20_000, seed=0)
    assert out["names"][0] == "A (target)" and out["exact"].shape == (7,)
    assert out["exact"][0] == pytest.approx(out["L_star"], rel=1e-12)
    assert ((out["mc"] - out["exact"]).abs() < 5 * out["se"]).all()


def test_ridge_error_curve_matches_its_closed_form():
    _, Z_all = ch01.paper_dictionary(K, D, M, seed=0)
    out = ch01.ridge_error_curve(Z_all, [2, 8], TAU, n_prompts=4000)
    assert out["per_prompt"].shape == (2, 4000) and out["n"] == [2, 8]
    assert out["closed_form"][1] == pytest.approx(theory.label_error(Z_all, 8, TAU, M * TAU))
    means = out["per_prompt"].mean(dim=1)
    se = out["per_prompt"].std(dim=1) / 4000**0.5
    assert ((means - out["closed_form"]).abs() < 5 * se).all()
    assert out["signal"] == pytest.approx(float((Z_all**2).sum(0).mean()))


def test_bad_inputs():
    with pytest.raises(ValueError, match="n_tokens"):
        ch01.paper_dictionary(1, D, M, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ch01.paper_dictionary(K, D, M, seed=-1)
    with pytest.raises(ValueError, match="n_mc"):
        ch01.lemma5_check(K, N, D, M, TAU, n_mc=1)
    with pytest.raises(ValueError, match="perturbation"):
        ch01.lemma5_candidates(torch.zeros(N, K), seed=0, perturbations=(-1.0,))
    with pytest.raises(ValueError, match="n"):
        ch01.ridge_error_curve(ch01.paper_dictionary(K, D, M, seed=0)[1], [K], TAU, n_prompts=10)
    with pytest.raises(ValueError, match="n_prompts"):
        ch01.ridge_error_curve(ch01.paper_dictionary(K, D, M, seed=0)[1], [2], TAU, n_prompts=1)
