"""Tests of icllib.experiments.ch02: Proposition 1's table, the common step size, a short run and the rate table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icllib import theory
from icllib.experiments import ch01, ch02

K, D, M, N, H, TAU = 16, 6, 3, 4, 6, 0.1


@pytest.fixture(scope="module")
def dictionary():
    return ch01.paper_dictionary(2 * K, D, M, seed=0)


def test_proposition1_table(dictionary):
    tokens, Z_all = dictionary
    out = ch02.proposition1(tokens[:K], Z_all[:, :K], N, TAU, [2, N, 8], seeds=[0, 1])
    assert out["min_rank"].tolist() == [[2, N, N], [2, N, N]]  # rank B_k = min(H, N)
    assert (out["zeta"][:, 0] == 0).all() and (out["zeta"][:, 1:] > 0).all()
    assert (out["best_gap"][:, 0] > 1e-3).all() and (out["best_gap"][:, 1:] < 1e-16).all()


def test_initial_smoothness_and_common_step_size(dictionary):
    tokens, Z_all = dictionary
    ell0 = ch02.initial_smoothness(tokens, Z_all, [K, 2 * K], N, H, TAU, 4.0, seeds=[0])
    assert set(ell0) == {(K, 0), (2 * K, 0)} and all(v > 0 for v in ell0.values())
    eta = ch02.common_step_size(ell0, margin=0.8)
    assert eta * max(ell0.values()) <= 0.8 and eta * max(ell0.values()) > 0.79  # 3 significant digits, rounded down
    assert ch02.common_step_size([4.0], margin=0.8) == pytest.approx(0.2)


def test_gd_run_records_the_proof_quantities(dictionary):
    tokens, Z_all = dictionary
    run = ch02.gd_run(tokens[:K], Z_all[:, :K], N, H, TAU, 40, 0.1, 4.0, seed=0, eval_every=10, check_every=20)
    assert run["step"].tolist() == [0, 10, 20, 30, 40] and run["check_step"].tolist() == [0, 20, 40]
    assert np.all(run["pl_ratio"] >= run["pl_bound"]) and np.all(np.diff(run["gap"]) < 0)
    assert run["zeta0"] == run["zeta"][0] > 0 and np.all(run["ell"] > 0)


def test_tail_rate_and_rate_table_recover_known_rates():
    steps = np.arange(0, 1001, 50.0)
    runs = {}
    for k, speed in ((10, 4e-3), (20, 2e-3), (40, 1e-3)):  # 1 - rate proportional to 1/K
        for seed in (0, 1):
            runs[(k, seed)] = {"step": steps, "gap": 2.0 * (1 - speed) ** steps, "zeta0": 0.5}
    fit = ch02.tail_rate(steps, runs[(10, 0)]["gap"])
    assert fit.rate == pytest.approx(1 - 4e-3, rel=1e-9) and fit.r2 == pytest.approx(1.0)
    table = ch02.rate_table(runs, eta_Q=0.1, gamma2=4.0)
    assert table["K"] == [10, 20, 40] and table["rate"].shape == (2, 3)
    assert np.allclose(table["slope_K"], -1.0, atol=1e-3)  # 1 - rate ~ 1/K ...
    assert np.allclose(table["slope_form"], 1.0, atol=1e-3)  # ... which is the form's zeta_0^2 / K at fixed zeta_0
    assert np.allclose(table["c"], theory.rate_constant(1 - 4e-3, 0.1, 4.0, 0.5, 10), rtol=1e-6)


def test_bad_inputs(dictionary):
    tokens, Z_all = dictionary
    with pytest.raises(ValueError, match="check_every"):
        ch02.gd_run(tokens[:K], Z_all[:, :K], N, H, TAU, 10, 0.1, 4.0, seed=0, eval_every=10, check_every=15)
    with pytest.raises(ValueError, match="Z_all"):
        ch02.gd_run(tokens[:K], Z_all, N, H, TAU, 10, 0.1, 4.0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ch02.gd_run(tokens[:K], Z_all[:, :K], N, H, TAU, 10, 0.1, 4.0, seed=-1)
    with pytest.raises(ValueError, match="K"):
        ch02.initial_smoothness(tokens, Z_all, [N], N, H, TAU, 4.0, seeds=[0])
    with pytest.raises(ValueError, match="ell0"):
        ch02.common_step_size([0.0])
    with pytest.raises(ValueError, match="margin"):
        ch02.common_step_size([1.0], margin=0.0)
    with pytest.raises(ValueError, match="fewer than 3"):
        ch02.tail_rate([0, 1, 2, 3], [1.0, 0.5, 1e-20, 1e-21])
    with pytest.raises(ValueError, match="at least 2"):
        ch02.rate_table({(K, 0): {"step": [0, 1, 2], "gap": [1.0, 0.5, 0.25], "zeta0": 1.0}}, 0.1, 4.0)
