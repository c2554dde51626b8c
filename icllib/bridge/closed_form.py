"""The closed-form task vector, and the one-layer model read through it (Chapter 9).

In the setting of Part I a prompt's whole influence on the prediction of an unseen token passes through m numbers,
the ridge coefficients (the book's *closed-form task vector*)

    lambda_hat(S) = (Z Z^T + m tau I_m)^{-1} Z y = R y,      R = (Z Z^T + m tau I_m)^{-1} Z  in R^{m x N},   (B1)

and the target predictor answers an unseen token k with z_k^T lambda_hat(S) (Theorem 2's ``yhat*``). The one-layer
model's predictions are ``yhat = A_tilde^T y``; the unseen-token block ``A_tilde_Q = A_tilde[:, N:]`` factors as
``A_tilde_Q^T = D R + E P_ker`` (:func:`factor_through_lambda_hat`), with ``P_ker`` the projector onto ker(Z) (label
combinations that carry only noise), ``D`` the model's own decoder of lambda_hat and ``E`` what does not factor;
:func:`swap_predictions` is the conflicting-task experiment of Hendel et al. in closed form (it answers the unseen
tokens from lambda_hat(S_B) alone, so it follows B by construction); :func:`transplant_lambda_hat` builds the labels
with which the same experiment runs through a model's own forward pass, and :func:`excess_split` splits the excess
loss of the unseen tokens into a row-space part and a failure to compress.

Notation as in :mod:`icllib.kernels`: ``Z_all`` (m, K) the features of the K dictionary tokens, the first N of them
labelled, ``Z = Z_all[:, :N]``, ``Z_Q = Z_all[:, N:]``, ``tau`` the feature-noise variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from icllib._checks import as_float_tensor, check_float, check_generator, check_int
from icllib.kernels import _labels, _ridge_coefficients

__all__ = [
    "lambda_hat",
    "ridge_encoder",
    "kernel_projector",
    "Factorisation",
    "factor_through_lambda_hat",
    "swap_predictions",
    "same_lambda_hat_labels",
    "transplant_lambda_hat",
    "ExcessSplit",
    "excess_split",
]


def lambda_hat(Z, y, tau: float) -> torch.Tensor:
    """The closed-form task vector (B1): ``lambda_hat(S) = (Z Z^T + m tau I_m)^{-1} Z y``, shape (..., m).

    ``Z`` (m, N) are the features of the labelled tokens in the order of the labels ``y`` (..., N). This is
    :func:`icllib.kernels.ridge_coefficients` with Theorem 2's regularisation ``m tau`` (``tau = 0``: the
    minimum-norm least-squares limit).
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    tau = check_float("tau", tau, minimum=0.0)
    return _lambda_hat(Z, _labels(y, Z.shape[1]), tau)


def _lambda_hat(Z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    return _ridge_coefficients(Z, y, Z.shape[0] * tau)


def ridge_encoder(Z, tau: float) -> torch.Tensor:
    """The linear map of (B1), ``R = (Z Z^T + m tau I_m)^{-1} Z`` (m, N), so that ``lambda_hat = R y``.

    ``tau = 0`` gives the limit ``pinv(Z^T)``. Float64 unless ``Z`` is float32.
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    tau = check_float("tau", tau, minimum=0.0)
    return _ridge_encoder(Z, tau)


def _ridge_encoder(Z: torch.Tensor, tau: float) -> torch.Tensor:
    # The rows of R^T are lambda_hat of the unit label vectors e_1..e_N.
    return _lambda_hat(Z, torch.eye(Z.shape[1], dtype=Z.dtype), tau).T.contiguous()


def kernel_projector(Z, rtol: float = 1e-10) -> torch.Tensor:
    """Orthogonal projector (N, N) onto ker(Z) = {c in R^N : Z c = 0}, the label combinations that no task sees.

    Labels are ``y = Z^T lambda + noise``, so ``P_ker y = P_ker noise``: these N - rank(Z) directions carry noise
    only, and ``R P_ker = 0`` (lambda_hat ignores them). Singular values below ``rtol * sigma_max`` count as zero.
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    rtol = check_float("rtol", rtol, minimum=0.0, maximum=1.0)
    return _kernel_projector(Z, rtol)


def _kernel_projector(Z: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    _, s, Vh = torch.linalg.svd(Z.double(), full_matrices=True)
    rank = int((s > rtol * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    null = Vh[rank:]  # (N - rank, N), orthonormal rows spanning ker(Z)
    return (null.T @ null).to(Z.dtype)


def _unseen_block(A_tilde, Z_all, n_labeled: int, tau: float) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Check ``(A_tilde, Z_all, N, tau)``; A_tilde and Z_all in float64."""
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2)
    m, K = Z_all.shape
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=K - 1)
    A_tilde = as_float_tensor("A_tilde", A_tilde, ndim=2)
    if tuple(A_tilde.shape) != (n_labeled, K):
        raise ValueError(f"A_tilde must have shape (N, K) = ({n_labeled}, {K}), got {tuple(A_tilde.shape)}")
    tau = check_float("tau", tau, minimum=0.0)
    return A_tilde.double(), Z_all.double(), n_labeled, tau


@dataclass
class Factorisation:
    """How a linear predictor's unseen-token block splits into "through lambda_hat" and "around it".

    With ``A_Q = A_tilde[:, N:]`` (N, K - N) and ``R`` of (B1): ``A_Q^T = decoder @ R + rest``, where
    ``decoder = A_Q^T pinv(R)`` (K - N, m) is the model's own read-out of lambda_hat and ``rest = A_Q^T P_ker``
    (K - N, N) the part that acts on the noise-only directions ker(Z) (zero iff the predictions at unseen tokens
    are a function of lambda_hat alone). ``singular_values``: of ``A_Q`` (descending; at most rank(Z) = m of them
    are nonzero iff ``rest = 0``). ``decoder_error``: ``||decoder - Z_Q^T||_F / ||Z_Q^T||_F`` (0 at the target,
    whose decoder is the ridge read-out z_k^T). ``rest_energy``: ``E ||rest y||^2 = m tau ||rest||_F^2`` over
    lambda ~ N(0, I_m) and the noise (the per-prompt squared error that factoring through lambda_hat costs),
    ``signal_energy`` the same expectation for ``A_Q^T y``.
    """

    decoder: torch.Tensor
    rest: torch.Tensor
    singular_values: torch.Tensor
    decoder_error: float
    rest_energy: float
    signal_energy: float

    @property
    def relative_rest(self) -> float:
        """``sqrt(rest_energy / signal_energy)``: the relative size of what bypasses lambda_hat."""
        return math.sqrt(self.rest_energy / self.signal_energy) if self.signal_energy > 0 else float("nan")


def factor_through_lambda_hat(A_tilde, Z_all, n_labeled: int, tau: float) -> Factorisation:
    """Split the unseen-token block of ``yhat = A_tilde^T y`` into a map of lambda_hat plus a remainder.

    ``A_tilde`` (N, K) is the one-layer model's ``attention_matrix()`` (or the target ``kernels.target_matrix``).
    Uses ``E[y y^T] = Z^T Z + m tau I_N`` (lambda ~ N(0, I_m)) for the two energies; see :class:`Factorisation`.
    ``pinv(R) R`` is the projector onto range(Z^T), so ``A_Q^T = decoder R + rest`` holds exactly.
    """
    return _factorise(*_unseen_block(A_tilde, Z_all, n_labeled, tau))


def _factorise(A64: torch.Tensor, Z64: torch.Tensor, N: int, tau: float) -> Factorisation:
    m = Z64.shape[0]
    Z, Z_Q = Z64[:, :N], Z64[:, N:]
    A_Q = A64[:, N:]
    R = _ridge_encoder(Z, tau)
    P_ker = _kernel_projector(Z)
    decoder = A_Q.T @ torch.linalg.pinv(R)
    rest = A_Q.T @ P_ker
    second = Z.T @ Z + m * tau * torch.eye(N, dtype=torch.float64)  # E[y y^T]
    signal = float((A_Q * (second @ A_Q)).sum())
    rest_energy = float((rest.T * (second @ rest.T)).sum())
    return Factorisation(
        decoder=decoder,
        rest=rest,
        singular_values=torch.linalg.svdvals(A_Q),
        decoder_error=float((decoder - Z_Q.T).norm() / Z_Q.norm()),
        rest_energy=rest_energy,
        signal_energy=signal,
    )


def swap_predictions(A_tilde, Z_all, n_labeled: int, tau: float, y_context, y_source) -> torch.Tensor:
    """The conflicting-task experiment in closed form: prompt ``S_A`` (labels ``y_context``), task vector of ``S_B``.

    The predictor ``yhat = A_tilde^T y`` answers the labelled tokens by ``A_tilde[:, :N]^T y`` and the unseen ones
    through lambda_hat, ``yhat_Q = decoder lambda_hat(y)`` (:func:`factor_through_lambda_hat`; exact for the target,
    up to the remainder for a trained model). Patching ``lambda_hat(S_B)`` into the computation for ``S_A`` gives

        labelled tokens: A_tilde[:, :N]^T y_A,      unseen tokens: decoder @ lambda_hat(S_B),

    returned with shape (..., K) for labels (..., N). ``y_context`` and ``y_source`` must broadcast together.
    """
    A64, Z64, N, tau = _unseen_block(A_tilde, Z_all, n_labeled, tau)
    y_context = _labels(y_context, N, "y_context")
    y_source = _labels(y_source, N, "y_source")
    fac = _factorise(A64, Z64, N, tau)
    theta = _lambda_hat(Z64[:, :N], y_source.double(), tau)
    left = y_context.double() @ A64[:, :N]
    right = theta @ fac.decoder.T
    batch = torch.broadcast_shapes(left.shape[:-1], right.shape[:-1])
    out = torch.cat([left.expand(*batch, -1), right.expand(*batch, -1)], dim=-1)
    dtype = torch.float32 if y_context.dtype == torch.float32 and y_source.dtype == torch.float32 else torch.float64
    return out.to(dtype)


def same_lambda_hat_labels(Z, y, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Other prompt labels with the same lambda_hat: ``y' = y + P_ker xi``, ``xi ~ N(0, scale^2 I_N)``.

    Every shown label changes (when N > rank Z), yet ``R y' = R y`` because ``R P_ker = 0``: a predictor that
    factors through lambda_hat answers the unseen tokens of both prompts identically. ``y`` (..., N).
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    y = _labels(y, Z.shape[1])
    check_generator("generator", generator)
    scale = check_float("scale", scale, minimum=0.0)
    xi = torch.randn(*y.shape, generator=generator, dtype=torch.float64) * scale
    return (y.double() + xi @ _kernel_projector(Z.double())).to(y.dtype)


def transplant_lambda_hat(Z, y_context, y_source) -> torch.Tensor:
    """The labels closest to ``y_context`` whose task vector is that of ``y_source``: ``P_ker y_A + (I - P_ker) y_B``.

    ``lambda_hat(y') = R y' = R y_B`` because ``R P_ker = 0``, for every tau; among all label vectors with that
    lambda_hat, ``y'`` is the nearest to ``y_A`` (it keeps A's noise-only component). A model run on ``y'`` sees
    prompt A's labels changed only as much as B's task vector requires: the conflicting-task experiment through
    the model's own forward pass. ``y_context``, ``y_source`` (..., N), broadcast together.
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    y_context = _labels(y_context, Z.shape[1], "y_context")
    y_source = _labels(y_source, Z.shape[1], "y_source")
    P = _kernel_projector(Z.double())
    out = y_source.double() + (y_context.double() - y_source.double()) @ P  # P symmetric
    dtype = torch.float32 if y_context.dtype == torch.float32 and y_source.dtype == torch.float32 else torch.float64
    return out.to(dtype)


@dataclass
class ExcessSplit:
    """The unseen tokens' excess loss ``sum_{k>N} ||Zbar (a_k - A_k)||^2`` (``total``, that is 2K (L - L*) minus
    the labelled tokens' share) split into ``row_space`` = ``sum ||Zbar (I - P_ker)(a_k - A_k)||^2`` (wrong use of
    lambda_hat) and ``kernel`` = ``m tau sum ||P_ker a_k||^2`` (failure to compress); ``row_space + kernel = total``
    up to rounding, because A_k lies in range(Z^T) and M = Zbar^2 acts on ker(Z) as m tau."""

    row_space: float
    kernel: float
    total: float


def excess_split(A_tilde, Z_all, n_labeled: int, tau: float) -> ExcessSplit:
    """Split the excess loss of the unseen-token block of ``A_tilde`` (N, K) along ker(Z) (see :class:`ExcessSplit`)."""
    A64, Z64, N, tau = _unseen_block(A_tilde, Z_all, n_labeled, tau)
    m = Z64.shape[0]
    Z = Z64[:, :N]
    P = _kernel_projector(Z)
    gram = Z.T @ Z + m * tau * torch.eye(N, dtype=torch.float64)
    target_Q = torch.linalg.solve(gram, Z.T @ Z64[:, N:])
    diff = A64[:, N:] - target_Q
    row = diff - P @ diff

    def energy(X: torch.Tensor) -> float:
        return float((X * (gram @ X)).sum())  # sum_k ||Zbar x_k||^2

    return ExcessSplit(row_space=energy(row), kernel=m * tau * float(((P @ A64[:, N:]) ** 2).sum()),
                       total=energy(diff))
