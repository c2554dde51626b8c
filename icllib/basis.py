"""Representation maps g: R^d -> R^m and the token dictionaries they act on (Yang et al. 2024, Section 2).

A *task* is a template ``x -> lambda^T g(x)`` over a fixed feature map ``g = (g_1, ..., g_m)`` (the "basis
functions"; the paper calls the map f). The prompt and query tokens come from a fixed dictionary ``v_1, ..., v_K``
in R^d; the book writes ``z_k = g(v_k)`` and stacks them as the columns of ``Z_all = (z_1, ..., z_K)`` of shape ``(m, K)``.

Every feature family here is a small class with an attribute ``m`` (number of basis functions) and
``__call__(tokens) -> Z_all``, where ``tokens`` has shape ``(K, d)`` (one token per row) and ``Z_all`` has shape
``(m, K)`` (one token per column). The output keeps the tokens' dtype (float32 or float64).

Families:

- :class:`GaussianLookupFeatures`: the paper's experiments, i.i.d. N(0, 1) features drawn once per dictionary token.
- :class:`FourierFeatures`: harmonics of the angle of a token on the unit circle (d = 2), for pictures.
- :class:`LegendreFeatures`: Legendre polynomials of one coordinate.
- :class:`RandomCosineFeatures`: random Fourier features ``sqrt(2/m) cos(W x + b)`` (Gaussian kernel).

Assumption 3 of the paper (some coordinate of the N prompt tokens takes N distinct values) is checked by
:func:`check_assumption3`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from icllib._checks import as_float_tensor, check_bool, check_float, check_float_dtype, check_generator, check_int

__all__ = [
    "gaussian_dictionary",
    "circle_tokens",
    "GaussianLookupFeatures",
    "FourierFeatures",
    "LegendreFeatures",
    "RandomCosineFeatures",
    "check_assumption3",
    "assumption3_report",
    "Assumption3Report",
]

def _check_tokens(tokens, dim: int | None = None, name: str = "tokens") -> torch.Tensor:
    tokens = as_float_tensor(name, tokens, ndim=2)
    if tokens.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one token (one per row), got shape {tuple(tokens.shape)}")
    if dim is not None and tokens.shape[1] != dim:
        raise ValueError(f"{name} must have shape (K, {dim}) (one token per row), got shape {tuple(tokens.shape)}")
    return tokens


# --------------------------------------------------------------------------------------------- dictionaries


def gaussian_dictionary(
    n_tokens: int,
    dim: int,
    generator: torch.Generator,
    unit_norm: bool = True,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """K tokens ``v_1..v_K`` in R^d drawn i.i.d. N(0, I_d), one per row, shape ``(K, d)``.

    With ``unit_norm`` (the paper's setting) each token is scaled onto the unit sphere; the dictionary is drawn
    once and shared by every prompt.
    """
    n_tokens = check_int("n_tokens", n_tokens, minimum=1)
    dim = check_int("dim", dim, minimum=1)
    check_generator("generator", generator)
    check_bool("unit_norm", unit_norm)
    check_float_dtype("dtype", dtype)
    tokens = torch.randn(n_tokens, dim, generator=generator, dtype=torch.float64)
    if unit_norm:
        tokens = tokens / tokens.norm(dim=1, keepdim=True)
    return tokens.to(dtype)


def circle_tokens(
    n_tokens: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """K tokens ``(cos phi_k, sin phi_k)`` on the unit circle, shape ``(K, 2)``.

    Without a generator the angles are equally spaced, ``phi_k = 2 pi k / K`` for k = 0..K-1 (in that order);
    with one they are i.i.d. uniform on ``[0, 2 pi)``, so that the first N tokens (the labelled ones) are spread
    over the circle.
    """
    n_tokens = check_int("n_tokens", n_tokens, minimum=1)
    check_float_dtype("dtype", dtype)
    if generator is None:
        phi = 2 * math.pi * torch.arange(n_tokens, dtype=torch.float64) / n_tokens
    else:
        check_generator("generator", generator)
        phi = 2 * math.pi * torch.rand(n_tokens, generator=generator, dtype=torch.float64)
    return torch.stack([torch.cos(phi), torch.sin(phi)], dim=1).to(dtype)


# --------------------------------------------------------------------------------------------- feature maps


class GaussianLookupFeatures:
    """The paper's representation: ``g(v_k)`` i.i.d. N(0, I_m), drawn once per dictionary token (a lookup table).

    Calling the map on tokens looks each one up in the dictionary (any order, repeats allowed; matched to within
    ``atol`` in the max norm). A token that is not in the dictionary raises ``ValueError``, since the feature of an
    unseen token is not defined.

    Parameters
    ----------
    tokens:
        The dictionary ``(K, d)``, one distinct token per row.
    m:
        Number of basis functions.
    generator:
        Source of the table ``Z_all`` (shape ``(m, K)``), drawn in float64 and stored in the tokens' dtype.
    atol:
        Tolerance of the lookup (max norm); dictionary tokens must be farther apart than this.
    """

    def __init__(self, tokens, m: int, generator: torch.Generator, atol: float = 1e-6) -> None:
        tokens = _check_tokens(tokens)
        self.m = check_int("m", m, minimum=1)
        check_generator("generator", generator)
        self.atol = check_float("atol", atol, minimum=0.0)
        gaps = torch.cdist(tokens.double(), tokens.double(), p=float("inf"))
        gaps.fill_diagonal_(float("inf"))
        if tokens.shape[0] > 1 and gaps.min() <= self.atol:
            raise ValueError(f"tokens must be distinct (at least atol={self.atol} apart in the max norm)")
        self.tokens = tokens
        self.table = torch.randn(self.m, tokens.shape[0], generator=generator, dtype=torch.float64).to(tokens.dtype)

    def indices(self, tokens) -> torch.Tensor:
        """Dictionary index of each row of ``tokens`` (ValueError for a token not in the dictionary)."""
        return self._indices(_check_tokens(tokens, dim=self.tokens.shape[1]))

    def _indices(self, tokens: torch.Tensor) -> torch.Tensor:
        dist = torch.cdist(tokens.double(), self.tokens.double(), p=float("inf"))
        best, index = dist.min(dim=1)
        missing = torch.nonzero(best > self.atol).flatten()
        if missing.numel():
            raise ValueError(
                f"tokens row {int(missing[0])} is not in the dictionary (nearest token is {float(best[missing[0]]):.3g}"
                f" away in the max norm, atol={self.atol}); GaussianLookupFeatures is defined on its dictionary only"
            )
        return index

    def __call__(self, tokens) -> torch.Tensor:
        """``Z_all = (g(v_1), ..., g(v_K))``, shape ``(m, K)``, in the dtype of ``tokens``."""
        tokens = _check_tokens(tokens, dim=self.tokens.shape[1])
        return self.table[:, self._indices(tokens)].to(tokens.dtype)

    def __repr__(self) -> str:
        return f"GaussianLookupFeatures(K={self.tokens.shape[0]}, d={self.tokens.shape[1]}, m={self.m})"


class FourierFeatures:
    """Harmonics of the angle ``phi`` of a token ``(cos phi, sin phi)`` on the unit circle (d = 2).

    Order and normalisation: ``g_1 = 1``, then ``sqrt(2) cos(j phi)``, ``sqrt(2) sin(j phi)`` for j = 1, 2, ...,
    truncated after ``m`` functions (``include_constant=False`` drops ``g_1``). The factor ``sqrt(2)`` makes the
    family orthonormal for ``phi`` uniform on the circle, ``E[g_i g_j] = delta_ij``, so every feature has mean
    square 1 like the paper's N(0, 1) features and ``lambda ~ N(0, I_m)`` spreads its variance evenly.

    Tokens must lie on the unit circle (within ``1e-6`` in norm for float64, ``1e-4`` for float32).
    """

    def __init__(self, m: int, include_constant: bool = True) -> None:
        self.m = check_int("m", m, minimum=1)
        self.include_constant = check_bool("include_constant", include_constant)

    def harmonics(self) -> list[tuple[str, int]]:
        """``(kind, j)`` of each feature in order: kind is 'const', 'cos' or 'sin'."""
        out: list[tuple[str, int]] = [("const", 0)] if self.include_constant else []
        j = 1
        while len(out) < self.m:
            out += [("cos", j), ("sin", j)]
            j += 1
        return out[: self.m]

    def __call__(self, tokens) -> torch.Tensor:
        """``Z_all`` of shape ``(m, K)`` for tokens ``(K, 2)`` on the unit circle."""
        tokens = _check_tokens(tokens, dim=2)
        tol = 1e-6 if tokens.dtype == torch.float64 else 1e-4
        radius = tokens.double().norm(dim=1)
        if (radius - 1).abs().max() > tol:
            worst = int((radius - 1).abs().argmax())
            raise ValueError(
                f"tokens must lie on the unit circle; row {worst} has norm {float(radius[worst]):.6g}"
            )
        phi = torch.atan2(tokens[:, 1].double(), tokens[:, 0].double())
        rows = []
        for kind, j in self.harmonics():
            if kind == "const":
                rows.append(torch.ones_like(phi))
            elif kind == "cos":
                rows.append(math.sqrt(2) * torch.cos(j * phi))
            else:
                rows.append(math.sqrt(2) * torch.sin(j * phi))
        return torch.stack(rows).to(tokens.dtype)

    def __repr__(self) -> str:
        return f"FourierFeatures(m={self.m}, include_constant={self.include_constant})"


class LegendreFeatures:
    """Legendre polynomials of one coordinate ``x = v[coordinate]``: ``g_{j+1}(v) = sqrt(2j + 1) P_j(x)``.

    ``j = 0..m-1`` (the degree). The factor ``sqrt(2j+1)`` makes the family orthonormal for
    ``x`` uniform on ``[-1, 1]``. Unit-norm tokens have every coordinate in ``[-1, 1]``; values outside are
    allowed (the polynomials are defined everywhere) but the features then grow fast.
    """

    def __init__(self, m: int, coordinate: int = 0) -> None:
        self.m = check_int("m", m, minimum=1)
        self.coordinate = check_int("coordinate", coordinate, minimum=0)

    def __call__(self, tokens) -> torch.Tensor:
        """``Z_all`` of shape ``(m, K)`` for tokens ``(K, d)`` with ``d > coordinate``."""
        tokens = _check_tokens(tokens)
        if self.coordinate >= tokens.shape[1]:
            raise ValueError(
                f"coordinate={self.coordinate} is out of range for tokens of dimension d={tokens.shape[1]}"
            )
        x = tokens[:, self.coordinate].double()
        polys = [torch.ones_like(x), x]
        # Bonnet's recurrence (n + 1) P_{n+1} = (2n + 1) x P_n - n P_{n-1}: stable on [-1, 1].
        for n in range(1, self.m - 1):
            polys.append(((2 * n + 1) * x * polys[n] - n * polys[n - 1]) / (n + 1))
        scale = torch.sqrt(2 * torch.arange(self.m, dtype=torch.float64) + 1)
        return (torch.stack(polys[: self.m]) * scale[:, None]).to(tokens.dtype)

    def __repr__(self) -> str:
        return f"LegendreFeatures(m={self.m}, coordinate={self.coordinate})"


class RandomCosineFeatures:
    """Random Fourier features ``g(x) = sqrt(2/m) cos(W x + b)`` (Rahimi & Recht).

    ``W`` has i.i.d. N(0, 1/bandwidth^2) entries (shape ``(m, dim)``) and ``b`` is uniform on ``[0, 2 pi)``, both drawn
    once from ``generator``; then ``g(x)^T g(x')`` approximates the Gaussian kernel
    ``exp(-||x - x'||^2 / (2 bandwidth^2))`` as m grows.
    """

    def __init__(self, m: int, dim: int, generator: torch.Generator, bandwidth: float = 1.0) -> None:
        self.m = check_int("m", m, minimum=1)
        self.dim = check_int("dim", dim, minimum=1)
        check_generator("generator", generator)
        self.bandwidth = check_float("bandwidth", bandwidth, minimum=0.0, strict=True)
        self.weights = torch.randn(self.m, self.dim, generator=generator, dtype=torch.float64) / self.bandwidth
        self.phases = 2 * math.pi * torch.rand(self.m, generator=generator, dtype=torch.float64)

    def __call__(self, tokens) -> torch.Tensor:
        """``Z_all`` of shape ``(m, K)`` for tokens ``(K, dim)``."""
        tokens = _check_tokens(tokens, dim=self.dim)
        angles = self.weights @ tokens.double().T + self.phases[:, None]
        return (math.sqrt(2 / self.m) * torch.cos(angles)).to(tokens.dtype)

    def __repr__(self) -> str:
        return f"RandomCosineFeatures(m={self.m}, dim={self.dim}, bandwidth={self.bandwidth})"


# --------------------------------------------------------------------------------------------- Assumption 3


@dataclass
class Assumption3Report:
    """Per-coordinate view of Assumption 3 for N prompt tokens.

    ``n_distinct[i]`` distinct values in coordinate i; ``min_gap[i]`` the smallest gap between sorted values of
    coordinate i (0 when two coincide, ``inf`` for a single token); ``coordinate`` the index of a coordinate with N
    distinct values and the largest minimal gap (``None`` when the assumption fails); ``holds``.
    """

    holds: bool
    coordinate: int | None
    n_distinct: torch.Tensor
    min_gap: torch.Tensor


def assumption3_report(tokens, atol: float = 0.0) -> Assumption3Report:
    """Assumption 3 of Yang et al.: some coordinate of the prompt tokens ``(N, d)`` takes N distinct values.

    Two values count as distinct when they differ by more than ``atol`` (default: exactly different).
    """
    tokens = _check_tokens(tokens)
    atol = check_float("atol", atol, minimum=0.0)
    n = tokens.shape[0]
    values = tokens.double().sort(dim=0).values
    if n == 1:
        gaps = torch.full((tokens.shape[1],), float("inf"), dtype=torch.float64)
        n_distinct = torch.ones(tokens.shape[1], dtype=torch.long)
    else:
        diffs = values[1:] - values[:-1]
        gaps = diffs.min(dim=0).values
        n_distinct = 1 + (diffs > atol).sum(dim=0)
    ok = n_distinct == n
    coordinate = int(torch.where(ok, gaps, torch.full_like(gaps, -1.0)).argmax()) if ok.any() else None
    return Assumption3Report(holds=bool(ok.any()), coordinate=coordinate, n_distinct=n_distinct, min_gap=gaps)


def check_assumption3(tokens, atol: float = 0.0) -> bool:
    """True when some coordinate of the N prompt tokens ``(N, d)`` takes N distinct values (Assumption 3)."""
    return assumption3_report(tokens, atol=atol).holds
