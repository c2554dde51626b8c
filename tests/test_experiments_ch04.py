"""Tests of chapter 04's computations (icllib.experiments.ch04) on tiny problems."""

import math

import numpy as np
import pytest

from icllib import train
from icllib.experiments import ch03, ch04
from icllib.models import TransformerConfig

TINY = ch03.Problem(K=20, d=6, m=4, N=5, tau=0.1, n_test=12)


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    """Every run here goes through the cache (a cut-off record run resumes): a fresh one per test."""
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path / "cache"))


def test_head_statistics_below_and_above_n():
    few = ch04.head_statistics(TINY, 3, seed=0)
    many = ch04.head_statistics(TINY, 10, seed=0)
    assert few["zeta0"] == 0.0 and few["best_w_gap"] > 1e-3  # H < N: B_k cannot have full row rank
    assert many["zeta0"] > 0.0 and many["best_w_gap"] < 1e-18  # H >= N: Proposition 1
    assert 0 < few["ell0"] < many["ell0"]  # the curvature grows with H
    with pytest.raises(TypeError, match="problem"):
        ch04.head_statistics("p", 3, 0)
    with pytest.raises(ValueError, match="gamma2"):
        ch04.head_statistics(TINY, 3, 0, gamma2=0.0)


def test_heads_sweep_structure_and_statistics_switch():
    out = ch04.heads_sweep(TINY, [3, 10], ch03.ExactGD(), 10, [0, 1], eval_every=5)
    assert list(out) == [3, 10] and len(out[3]["histories"]) == 2 and len(out[10]["init"]) == 2
    assert out[10]["histories"][0].step == [0, 5, 10]
    recipe = ch03.Recipe(lr=1e-2, batch_size=8, n_train_prompts=32)
    bare = ch04.heads_sweep(TINY, [3], recipe, 4, [0], eval_every=2, statistics=False)
    assert set(bare[3]) == {"histories"}
    with pytest.raises(ValueError, match="increasing"):
        ch04.heads_sweep(TINY, [10, 3], ch03.ExactGD(), 1, [0])
    with pytest.raises(TypeError, match="heads"):
        ch04.heads_sweep(TINY, [], ch03.ExactGD(), 1, [0])
    with pytest.raises(TypeError, match="optimiser"):
        ch04.heads_sweep(TINY, [3], None, 1, [0])


def _history(gaps, reason="steps"):
    history = train.TrainingHistory("test")
    for i, gap in enumerate(gaps):
        history.append(i, gap, float(i), {"loss_gap": gap})
    history.stop_reason = reason
    return history


def test_diverged():
    assert not ch04.diverged(_history([3.0, 1.0, 0.5]))
    assert not ch04.diverged(_history([3.0, 9.0, 0.5]))  # a spike that recovers still trains
    assert ch04.diverged(_history([3.0, 1.0, 4.0]))
    assert ch04.diverged(_history([3.0, math.inf]))
    assert ch04.diverged(_history([3.0, 1.0], reason="diverged"))


def test_divergence_sweep_thresholds_fall_with_the_step_size():
    out = ch04.divergence_sweep(TINY, [0.5, 1.0, 2.0], [2, 4, 8, 16, 32, 64], 60, [0])
    assert out["outcome"].shape == (3, 6, 1) and out["ell0"].shape == (6, 1) and out["fit"].shape == (2,)
    assert set(np.unique(out["outcome"])) <= {-1, 0, 1}
    t = out["threshold"][:, 0]
    assert np.isfinite(t[:2]).all() and t[0] > t[1]  # a larger step diverges at fewer heads
    assert out["predicted"][0] > out["predicted"][1] > out["predicted"][2]
    for i in range(3):  # each scan stops at its first divergence
        row = out["outcome"][i, :, 0]
        ran = row[row >= 0]
        assert (ran[:-1] == 0).all()
    with pytest.raises(ValueError, match="eta"):
        ch04.divergence_sweep(TINY, [0.0], [2, 4], 10, [0])
    with pytest.raises(ValueError, match="steps"):
        ch04.divergence_sweep(TINY, [0.5], [2, 4], 0, [0])


def test_four_layer_heads_splits_the_width():
    arch = TransformerConfig(d_model=8, n_layers=1, n_heads=2, d_ff=8)
    recipe = ch03.Recipe(lr=1e-3, batch_size=8, n_train_prompts=32)
    out = ch04.four_layer_heads(TINY, [1, 4], arch, recipe, 2, [0], eval_every=1)
    assert list(out) == [1, 4] and out[4][0].step == [0, 1, 2] and out[1][0].step_time_s > 0
    with pytest.raises(ValueError, match="n_heads must divide"):
        ch04.four_layer_heads(TINY, [3], arch, recipe, 1, [0])
    with pytest.raises(TypeError, match="architecture"):
        ch04.four_layer_heads(TINY, [2], "arch", recipe, 1, [0])
