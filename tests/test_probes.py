"""Tests of icllib.probes: planted linear maps are recovered (R^2 ~ 1), noise is not (R^2 ~ 0), bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icllib.probes import LinearProbe, fit_linear_probe, probe_layers, r2_score


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _planted(n: int = 400, p: int = 12, q: int = 3, noise: float = 0.0, seed: int = 0):
    X = torch.randn(n, p, generator=_gen(seed), dtype=torch.float64) * 3 + 1
    W = torch.randn(p, q, generator=_gen(seed + 1), dtype=torch.float64)
    Y = X @ W + 0.5 + noise * torch.randn(n, q, generator=_gen(seed + 2), dtype=torch.float64)
    return X, Y, W


def test_recovers_a_planted_linear_map():
    X, Y, W = _planted()
    probe = fit_linear_probe(X[:300], Y[:300], reg=0.0)
    assert isinstance(probe, LinearProbe)
    assert torch.allclose(probe.weight, W, atol=1e-8)
    assert probe.r2(X[300:], Y[300:]) == pytest.approx(1.0, abs=1e-10)
    assert torch.allclose(probe.predict(X[300:]), Y[300:], atol=1e-8)


def test_noise_targets_give_r2_near_zero():
    X, _, _ = _planted(n=2000, p=10)
    Y = torch.randn(2000, 3, generator=_gen(7), dtype=torch.float64)
    probe = fit_linear_probe(X[:1500], Y[:1500])
    r2 = probe.r2(X[1500:], Y[1500:])
    assert -0.05 < r2 < 0.02  # held out: no better than the training mean (slightly worse is expected)


def test_partial_signal_gives_the_expected_r2():
    """Y = signal + noise of equal variance: R^2 = 1/2 (up to sampling)."""
    X = torch.randn(6000, 4, generator=_gen(3), dtype=torch.float64)
    Y = X[:, :1] + torch.randn(6000, 1, generator=_gen(4), dtype=torch.float64)
    probe = fit_linear_probe(X[:4000], Y[:4000])
    assert probe.r2(X[4000:], Y[4000:]) == pytest.approx(0.5, abs=0.05)


def test_ridge_penalty_is_scale_free():
    X, Y, _ = _planted(noise=0.5)
    a = fit_linear_probe(X, Y, reg=0.1)
    b = fit_linear_probe(100 * X, Y, reg=0.1)
    assert torch.allclose(a.predict(X), b.predict(100 * X), atol=1e-8)
    assert not torch.allclose(a.weight, fit_linear_probe(X, Y, reg=0.0).weight, atol=1e-3)  # and it does shrink


def test_r2_score_basics():
    Y = torch.tensor([[1.0, 2.0], [3.0, 5.0], [0.0, -1.0]], dtype=torch.float64)
    assert r2_score(Y, Y) == 1.0
    assert r2_score(Y, Y.mean(0).expand_as(Y)) == pytest.approx(0.0, abs=1e-12)
    assert r2_score(Y[:, 0], Y[:, 0]) == 1.0  # 1-d targets
    assert r2_score(np.array([1.0, 2.0]), np.array([2.0, 1.0])) < 0


def test_probe_layers_finds_the_informative_layer():
    n, p = 600, 8
    target = torch.randn(n, 2, generator=_gen(5), dtype=torch.float64)
    noise = torch.randn(n, 3, p, generator=_gen(6), dtype=torch.float64)
    states = noise.clone()
    states[:, 1, :2] += 3 * target  # layer 1 holds the target (plus noise), layers 0 and 2 do not
    curve = probe_layers(states, target, n_train=400)
    assert curve.best_layer == 1
    assert curve.r2_test[1] > 0.8
    assert np.all(np.abs(curve.r2_test[[0, 2]]) < 0.1)
    assert curve.n_train == 400 and curve.n_test == 200
    shuffled = probe_layers(states, target, generator=_gen(0))
    assert shuffled.best_layer == 1 and shuffled.n_train == 420


# ------------------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs():
    X, Y, _ = _planted(n=20)
    with pytest.raises(ValueError, match="same number of rows"):
        fit_linear_probe(X, Y[:10])
    with pytest.raises(ValueError, match="reg"):
        fit_linear_probe(X, Y, reg=-1.0)
    with pytest.raises(TypeError, match="X"):
        fit_linear_probe([[1.0]], Y)
    with pytest.raises(ValueError, match="at least 2"):
        fit_linear_probe(X[:1], Y[:1])
    probe = fit_linear_probe(X, Y)
    with pytest.raises(ValueError, match="columns"):
        probe.predict(X[:, :3])
    with pytest.raises(ValueError, match="columns"):
        probe.r2(X, Y[:, :1])
    with pytest.raises(ValueError, match="same shape"):
        r2_score(Y, Y[:, :1])
    with pytest.raises(ValueError, match="spread"):
        r2_score(torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="Y_mean"):
        r2_score(Y, Y, Y_mean=torch.zeros(5, dtype=torch.float64))
    states = torch.randn(20, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="states"):
        probe_layers(states[0], Y)
    with pytest.raises(ValueError, match="rows"):
        probe_layers(states, Y[:10])
    with pytest.raises(ValueError, match="n_train"):
        probe_layers(states, Y, n_train=20)
    with pytest.raises(TypeError, match="generator"):
        probe_layers(states, Y, generator=1)


# ------------------------------------------------------------------------------------------------ controls
def test_probe_with_controls_tells_the_target_from_the_labels():
    """States holding lambda = fixed map of labels *by identity* (shuffled order): the target probe scores 1, the
    labels in shown order and their random image score far less; states holding the shown labels: the reverse."""
    from icllib.probes import probe_with_controls, random_linear_image

    gen = torch.Generator().manual_seed(0)
    n, N = 600, 5
    by_token = torch.randn(n, N, generator=gen, dtype=torch.float64)
    order = torch.argsort(torch.rand(n, N, generator=gen), dim=1)
    shown = by_token.gather(1, order)
    target = by_token @ torch.randn(N, 1, generator=gen, dtype=torch.float64)
    holds_target = torch.cat([target, torch.zeros(n, 3, dtype=torch.float64)], 1)[:, None, :]
    holds_labels = shown[:, None, :]
    states = torch.cat([holds_target, holds_labels[:, :, :4]], 1)  # layer 0: the target; layer 1: 4 of the labels
    curves = probe_with_controls(states, target, shown)
    assert set(curves) == {"target", "labels", "random image"}
    assert curves["target"][0] > 0.99 and curves["labels"][0] < 0.3 and curves["random image"][0] < 0.3
    assert curves["labels"][1] > 0.7 and curves["target"][1] < 0.5
    image = random_linear_image(shown, 2, torch.Generator().manual_seed(1))
    assert image.shape == (n, 2) and image.dtype == torch.float64
    with pytest.raises(ValueError, match="labels"):
        probe_with_controls(states, target, shown[:10])
    with pytest.raises(ValueError, match="q"):
        random_linear_image(shown, 0, torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        random_linear_image(shown, 1, None)
