"""Tests of icllib.prompts: task laws, label law, reproducibility, dtypes, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icllib import prompts


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dictionary(m: int = 5, K: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(m, K, generator=gen(seed), dtype=torch.float64)


def test_sample_lambda_named_laws():
    lam = prompts.sample_lambda(50000, 4, gen(1))
    assert lam.shape == (50000, 4) and lam.dtype == torch.float64
    assert float(lam.mean(0).abs().max()) < 0.03 and float((lam.var(0) - 1).abs().max()) < 0.03
    shifted = prompts.sample_lambda(50000, 4, gen(2), "out_of_domain", dtype=torch.float32)
    assert shifted.dtype == torch.float32
    assert float((shifted.mean(0) - 1).abs().max()) < 0.05 and float((shifted.var(0) - 4).abs().max()) < 0.15
    torch.testing.assert_close(lam[:10], prompts.sample_lambda(50000, 4, gen(1))[:10])


def test_sample_lambda_callable_and_distribution():
    def uniform(n, m, generator):
        return torch.rand(n, m, generator=generator, dtype=torch.float64)

    lam = prompts.sample_lambda(6, 3, gen(3), uniform)
    assert lam.shape == (6, 3) and float(lam.min()) >= 0
    torch.testing.assert_close(lam, torch.rand(6, 3, generator=gen(3), dtype=torch.float64))

    state = torch.get_rng_state()
    vector = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3))
    a = prompts.sample_lambda(5, 3, gen(4), vector)
    b = prompts.sample_lambda(5, 3, gen(4), vector)
    torch.testing.assert_close(a, b)  # reproducible from the generator
    assert torch.equal(state, torch.get_rng_state())  # global random state untouched
    scalar_batch = torch.distributions.Laplace(torch.zeros(3), torch.ones(3))
    assert prompts.sample_lambda(5, 3, gen(4), scalar_batch).shape == (5, 3)


def test_sample_prompts_shapes_and_prefix():
    Z_all = dictionary()
    batch = prompts.sample_prompts(Z_all, 4, 0.1, 7, gen(5))
    assert batch.lam.shape == (7, 5) and batch.y_all.shape == (7, 12) and batch.y.shape == (7, 4)
    assert batch.n_labeled == 4 and batch.n_prompts == 7 and batch.n_tokens == 12 and batch.eps is None
    torch.testing.assert_close(batch.y, batch.y_all[:, :4])
    again = prompts.sample_prompts(Z_all, 4, 0.1, 7, gen(5))
    torch.testing.assert_close(batch.y_all, again.y_all)


def test_noise_free_labels_are_the_template():
    Z_all = dictionary()
    batch = prompts.sample_prompts(Z_all, 3, 0.0, 9, gen(6))
    torch.testing.assert_close(batch.y_all, batch.lam @ Z_all)


def test_explicit_feature_noise_defines_the_labels():
    Z_all = dictionary()
    batch = prompts.sample_prompts(Z_all, 3, 0.2, 4, gen(7), feature_noise=True)
    assert batch.eps.shape == (4, 12, 5)
    expected = torch.einsum("nm,nkm->nk", batch.lam, Z_all.T[None] + batch.eps)
    torch.testing.assert_close(batch.y_all, expected)


@pytest.mark.parametrize("feature_noise", [False, True])
def test_label_noise_law(feature_noise):
    # given lambda, y_k - lambda^T z_k ~ N(0, tau ||lambda||^2), independent over k
    Z_all, tau = dictionary(m=4, K=6), 0.3
    batch = prompts.sample_prompts(Z_all, 2, tau, 20000, gen(8), feature_noise=feature_noise)
    standardised = (batch.y_all - batch.lam @ Z_all) / (tau**0.5 * batch.lam.norm(dim=1, keepdim=True))
    assert float(standardised.mean().abs()) < 0.02
    assert abs(float(standardised.var()) - 1) < 0.03
    correlation = np.corrcoef(standardised.numpy().T)
    assert np.abs(correlation - np.eye(6)).max() < 0.04


def test_float32_and_numpy_inputs():
    Z32 = dictionary().float()
    batch = prompts.sample_prompts(Z32, 2, 0.1, 3, gen(9))
    assert batch.y_all.dtype == torch.float32 and batch.lam.dtype == torch.float32
    batch = prompts.sample_prompts(dictionary().numpy(), 2, 0.1, 3, gen(9))
    assert batch.y_all.dtype == torch.float64


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: prompts.sample_lambda(0, 3, gen()), ValueError, "n_prompts"),
        (lambda: prompts.sample_lambda(2, 0, gen()), ValueError, "m"),
        (lambda: prompts.sample_lambda(2, 3, 1), TypeError, "generator"),
        (lambda: prompts.sample_lambda(2, 3, gen(), "sideways"), ValueError, "distribution"),
        (lambda: prompts.sample_lambda(2, 3, gen(), 5), TypeError, "distribution"),
        (lambda: prompts.sample_lambda(2, 3, gen(), lambda n, m, g: torch.zeros(n, m + 1)), ValueError, "shape"),
        (lambda: prompts.sample_lambda(2, 3, gen(), lambda n, m, g: np.zeros((n, m))), TypeError, "torch.Tensor"),
        (
            lambda: prompts.sample_lambda(2, 3, gen(), torch.distributions.Normal(0.0, 1.0)),
            ValueError,
            "length m=3",
        ),
        (lambda: prompts.sample_lambda(2, 3, gen(), dtype=torch.int32), TypeError, "dtype"),
        (lambda: prompts.sample_prompts(dictionary(), 12, 0.1, 2, gen()), ValueError, "n_labeled"),
        (lambda: prompts.sample_prompts(dictionary(), 0, 0.1, 2, gen()), ValueError, "n_labeled"),
        (lambda: prompts.sample_prompts(dictionary(), 2, -0.1, 2, gen()), ValueError, "tau"),
        (lambda: prompts.sample_prompts(dictionary(), 2, 0.1, 0, gen()), ValueError, "n_prompts"),
        (lambda: prompts.sample_prompts(dictionary()[0], 2, 0.1, 2, gen()), ValueError, "Z_all"),
        (lambda: prompts.sample_prompts(dictionary()[:, :1], 1, 0.1, 2, gen()), ValueError, "K >= 2"),
        (lambda: prompts.sample_prompts(dictionary().long(), 2, 0.1, 2, gen()), TypeError, "Z_all"),
        (lambda: prompts.sample_prompts(dictionary(), 2, 0.1, 2, None), TypeError, "generator"),
        (lambda: prompts.sample_prompts(dictionary(), 2, 0.1, 2, gen(), feature_noise=1), TypeError, "feature_noise"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
