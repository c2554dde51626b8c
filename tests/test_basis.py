"""Tests of icllib.basis: dictionaries, feature families, Assumption 3, bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icllib import basis


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- dictionaries


def test_gaussian_dictionary_shape_norm_dtype_and_seed():
    tokens = basis.gaussian_dictionary(50, 7, gen(1))
    assert tokens.shape == (50, 7) and tokens.dtype == torch.float64
    torch.testing.assert_close(tokens.norm(dim=1), torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(tokens, basis.gaussian_dictionary(50, 7, gen(1)))
    raw = basis.gaussian_dictionary(2000, 3, gen(2), unit_norm=False, dtype=torch.float32)
    assert raw.dtype == torch.float32
    assert abs(float(raw.var()) - 1.0) < 0.1  # N(0, 1) entries


def test_circle_tokens_equally_spaced_and_random():
    tokens = basis.circle_tokens(8)
    assert tokens.shape == (8, 2)
    torch.testing.assert_close(tokens[2], torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-15, rtol=0)
    random = basis.circle_tokens(100, gen(3), dtype=torch.float32)
    assert random.dtype == torch.float32
    torch.testing.assert_close(random.norm(dim=1), torch.ones(100))
    torch.testing.assert_close(random, basis.circle_tokens(100, gen(3), dtype=torch.float32))


# ----------------------------------------------------------------------------------------------- feature maps


def test_gaussian_lookup_is_a_fixed_table():
    tokens = basis.gaussian_dictionary(30, 5, gen(4))
    features = basis.GaussianLookupFeatures(tokens, 12, gen(5))
    Z_all = features(tokens)
    assert features.m == 12 and Z_all.shape == (12, 30)
    torch.testing.assert_close(Z_all, features.table)
    order = torch.tensor([3, 0, 3, 29])  # any order, repeats allowed
    torch.testing.assert_close(features(tokens[order]), Z_all[:, order])
    assert features(tokens.float()).dtype == torch.float32
    # same seed, same table
    torch.testing.assert_close(basis.GaussianLookupFeatures(tokens, 12, gen(5)).table, Z_all)


def test_gaussian_lookup_rejects_unknown_and_duplicate_tokens():
    tokens = basis.gaussian_dictionary(10, 4, gen(6))
    features = basis.GaussianLookupFeatures(tokens, 3, gen(7))
    with pytest.raises(ValueError, match="not in the dictionary"):
        features(tokens[:2] + 0.01)
    with pytest.raises(ValueError, match="shape"):
        features(tokens[:, :3])
    with pytest.raises(ValueError, match="distinct"):
        basis.GaussianLookupFeatures(torch.cat([tokens, tokens[:1]]), 3, gen(7))


def test_fourier_features_are_orthonormal_on_equally_spaced_points():
    K, m = 64, 9
    Z_all = basis.FourierFeatures(m)(basis.circle_tokens(K))
    assert Z_all.shape == (m, K)
    # discrete orthonormality holds exactly for harmonics below K/2
    torch.testing.assert_close(Z_all @ Z_all.T / K, torch.eye(m, dtype=torch.float64), atol=1e-12, rtol=0)
    phi = torch.tensor(0.3, dtype=torch.float64)
    token = torch.stack([torch.cos(phi), torch.sin(phi)])[None]
    z = basis.FourierFeatures(5)(token)[:, 0]
    expected = torch.tensor(
        [1, math.sqrt(2) * math.cos(0.3), math.sqrt(2) * math.sin(0.3), math.sqrt(2) * math.cos(0.6),
         math.sqrt(2) * math.sin(0.6)], dtype=torch.float64)
    torch.testing.assert_close(z, expected)
    no_const = basis.FourierFeatures(4, include_constant=False)
    assert no_const.harmonics()[0] == ("cos", 1)
    assert basis.FourierFeatures(3)(basis.circle_tokens(5, dtype=torch.float32)).dtype == torch.float32


def test_fourier_features_reject_off_circle_tokens():
    with pytest.raises(ValueError, match="unit circle"):
        basis.FourierFeatures(3)(torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(K, 2\)"):
        basis.FourierFeatures(3)(torch.ones(4, 3, dtype=torch.float64))


def test_legendre_features_match_numpy_and_are_orthonormal():
    m = 7
    nodes, weights = np.polynomial.legendre.leggauss(20)
    tokens = torch.tensor(np.stack([np.zeros_like(nodes), nodes], axis=1))
    Z_all = basis.LegendreFeatures(m, coordinate=1)(tokens)
    assert Z_all.shape == (m, 20)
    for j in range(m):
        coefficients = np.zeros(j + 1)
        coefficients[j] = 1.0
        expected = math.sqrt(2 * j + 1) * np.polynomial.legendre.legval(nodes, coefficients)
        np.testing.assert_allclose(Z_all[j].numpy(), expected, atol=1e-12)
    # E_{x ~ U[-1, 1]} f_i f_j = delta_ij, by Gauss-Legendre quadrature (exact for these degrees)
    gram = (Z_all * torch.tensor(weights / 2)) @ Z_all.T
    torch.testing.assert_close(gram, torch.eye(m, dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="coordinate=2"):
        basis.LegendreFeatures(3, coordinate=2)(tokens)


def test_random_cosine_features_approximate_gaussian_kernel():
    dim, m = 3, 20000
    features = basis.RandomCosineFeatures(m, dim, gen(8), bandwidth=0.7)
    tokens = basis.gaussian_dictionary(6, dim, gen(9))
    Z_all = features(tokens)
    assert Z_all.shape == (m, 6)
    kernel = torch.exp(-torch.cdist(tokens, tokens) ** 2 / (2 * 0.7**2))
    assert float((Z_all.T @ Z_all - kernel).abs().max()) < 0.05  # O(1/sqrt(m)) Monte-Carlo error
    with pytest.raises(ValueError, match=r"shape \(K, 3\)"):
        features(torch.ones(2, 4, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- Assumption 3


def test_assumption3():
    tokens = basis.gaussian_dictionary(30, 100, gen(10))
    assert basis.check_assumption3(tokens)
    report = basis.assumption3_report(tokens)
    assert report.holds and report.coordinate is not None and report.n_distinct.shape == (100,)
    repeated = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    assert not basis.check_assumption3(repeated)
    assert basis.assumption3_report(repeated).coordinate is None
    close = torch.tensor([[0.0, 5.0], [1e-9, 5.0], [2.0, 1.0]], dtype=torch.float64)
    assert basis.check_assumption3(close) and not basis.check_assumption3(close, atol=1e-6)
    assert basis.check_assumption3(torch.ones(1, 2, dtype=torch.float64))
    # equally spaced circle: cos phi repeats (phi and -phi) up to rounding, so exact comparison is fooled and
    # atol is needed; the first half of the circle is fine
    assert not basis.check_assumption3(basis.circle_tokens(8), atol=1e-12)
    assert basis.check_assumption3(basis.circle_tokens(8)[:5], atol=1e-12)


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: basis.gaussian_dictionary(0, 3, gen()), ValueError, "n_tokens"),
        (lambda: basis.gaussian_dictionary(3.0, 3, gen()), TypeError, "n_tokens"),
        (lambda: basis.gaussian_dictionary(3, 0, gen()), ValueError, "dim"),
        (lambda: basis.gaussian_dictionary(3, 3, 0), TypeError, "generator"),
        (lambda: basis.gaussian_dictionary(3, 3, gen(), unit_norm=1), TypeError, "unit_norm"),
        (lambda: basis.gaussian_dictionary(3, 3, gen(), dtype=torch.int64), TypeError, "dtype"),
        (lambda: basis.circle_tokens(-1), ValueError, "n_tokens"),
        (lambda: basis.circle_tokens(4, generator=3), TypeError, "generator"),
        (lambda: basis.GaussianLookupFeatures(torch.ones(3, dtype=torch.float64), 2, gen()), ValueError, "tokens"),
        (lambda: basis.GaussianLookupFeatures(torch.eye(3, dtype=torch.int64), 2, gen()), TypeError, "tokens"),
        (lambda: basis.GaussianLookupFeatures([[1.0, 0.0]], 2, gen()), TypeError, "tokens"),
        (lambda: basis.GaussianLookupFeatures(torch.eye(3, dtype=torch.float64), 0, gen()), ValueError, "m"),
        (lambda: basis.GaussianLookupFeatures(torch.eye(3, dtype=torch.float64), 2, None), TypeError, "generator"),
        (lambda: basis.FourierFeatures(0), ValueError, "m"),
        (lambda: basis.FourierFeatures(2, include_constant="yes"), TypeError, "include_constant"),
        (lambda: basis.FourierFeatures(2)(torch.full((2, 2), float("nan"), dtype=torch.float64)), ValueError, "NaN"),
        (lambda: basis.LegendreFeatures(3, coordinate=-1), ValueError, "coordinate"),
        (lambda: basis.LegendreFeatures(0), ValueError, "m"),
        (lambda: basis.RandomCosineFeatures(4, 2, gen(), bandwidth=0.0), ValueError, "bandwidth"),
        (lambda: basis.RandomCosineFeatures(4, 0, gen()), ValueError, "dim"),
        (lambda: basis.check_assumption3(torch.zeros(0, 2, dtype=torch.float64)), ValueError, "tokens"),
        (lambda: basis.check_assumption3(torch.zeros(3, dtype=torch.float64)), ValueError, "tokens"),
        (lambda: basis.assumption3_report(torch.eye(2, dtype=torch.float64), atol=-1.0), ValueError, "atol"),
    ],
)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_numpy_tokens_are_accepted():
    tokens = basis.circle_tokens(6).numpy()
    assert basis.FourierFeatures(3)(tokens).shape == (3, 6)
    assert basis.LegendreFeatures(3)(tokens.astype(np.float32)).dtype == torch.float32
