"""The quantities in the proofs of Yang, Huang, Liang & Chi (2024), computed so that chapters can check them.

Theorem 1 (linear convergence of gradient descent on the exact loss) rests on three facts, each measurable here:

1. Proposition 1: the head matrices B_k = Zbar (s_k^1, ..., s_k^H) in R^{N x H} have full row rank N when H >= N
   (almost surely at a Gaussian initialisation), and cannot when H < N. :func:`head_matrices` returns them with
   their singular values; zeta_0 = min_k sigma_N(B_k) at initialisation (:func:`zeta`).
2. A Polyak-Lojasiewicz (PL) inequality: since dL/dw_k = (1/K) B_k^T Zbar (a_k - A_{:,k}),
   ``||grad L||^2 >= gamma^2 ||grad_w L||^2 >= (2 gamma^2 zeta^2 / K) (L - L*)``
   with zeta = min_k sigma_N(B_k) at the current point, in the metric where GD with the two step sizes
   (eta_Q, eta_w = gamma^2 eta_Q) is plain GD with step eta_Q (:func:`pl_ratio`, :func:`pl_lower_bound`).
3. Smoothness: GD with step eta_Q <= 1/ell decreases L by at least (eta_Q / 2) ||grad L||^2 (:func:`smoothness_estimate`
   estimates ell along the run by power iteration on Hessian-vector products).

Together: L_{t+1} - L* <= (1 - eta_Q gamma^2 zeta_t^2 / K)(L_t - L*), and the proof keeps zeta_t >= zeta_0 / 2, so the
rate has the form (1 - c eta_Q gamma^2 zeta_0^2 / K)^t with c = 1/4 from this argument
(:func:`predicted_rate`). The paper's own constant is not recovered here; the chapters compare the form with the
measured rate (:func:`fit_linear_rate`) and report the constant c that would match.

Theorem 2's limit is ridge regression with regularisation m tau: compared with the Bayes-best N tau, the model acts
as if the noise level were m tau / N (:func:`effective_tau`). For a fixed Q, the exact loss is least squares in w
(:func:`best_w_given_Q`), which shows why H >= N heads matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from icllib import kernels
from icllib._checks import as_float_tensor, check_float, check_generator, check_int

__all__ = [
    "HeadMatrices",
    "head_matrices",
    "zeta",
    "pl_ratio",
    "pl_lower_bound",
    "smoothness_estimate",
    "RateFit",
    "fit_linear_rate",
    "predicted_rate",
    "rate_constant",
    "effective_tau",
    "label_error",
    "BestW",
    "best_w_given_Q",
]


def _check_one_layer(model) -> None:
    if not isinstance(model, nn.Module) or not all(hasattr(model, a) for a in ("Q", "w", "attention_scores")):
        raise TypeError(
            f"model must be a one-layer model with parameters Q, w and attention_scores() "
            f"(icllib.models.OneLayerMultiHead), got {type(model).__name__}"
        )


def _prompt_features(model, Z) -> torch.Tensor:
    """Z (m, N) from ``Z`` given as (m, N) or as Z_all (m, K)."""
    Z = as_float_tensor("Z", Z, ndim=2, dtype=torch.float64)
    N, K = model.n_labeled, model.n_tokens
    if Z.shape[1] not in (N, K):
        raise ValueError(f"Z must be (m, N) = (m, {N}) or Z_all (m, K) = (m, {K}), got {tuple(Z.shape)}")
    return Z[:, :N]


def _model_dictionary(model, Z_all, tau) -> tuple[torch.Tensor, float]:
    """``(Z_all, tau)`` checked against the model: Z_all (m, K) in float64, tau >= 0."""
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2, dtype=torch.float64)
    if Z_all.shape[1] != model.n_tokens:
        raise ValueError(f"Z_all must have K = {model.n_tokens} columns (one per token), got {tuple(Z_all.shape)}")
    return Z_all, check_float("tau", tau, minimum=0.0)


def _terms(model, Z_all, tau) -> kernels.LossTerms:
    """Lemma 5's constants for the model's dictionary (arguments checked here, once)."""
    Z_all, tau = _model_dictionary(model, Z_all, tau)
    return kernels._loss_terms(Z_all, model.n_labeled, tau)


# --------------------------------------------------------------------------------------------------------------------
# Proposition 1: the head matrices B_k
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class HeadMatrices:
    """B_k = Zbar (s_k^1, ..., s_k^H) for every token k, with their spectra (float64).

    ``B``: (K, N, H). ``singular_values``: (K, min(N, H)), descending. ``rank``: (K,) numerical ranks (relative
    tolerance ``rtol`` of the largest singular value). ``sigma_N``: (K,) the N-th singular value (0 when H < N, where
    B_k cannot have rank N). ``zeta``: min_k sigma_N, the quantity in the PL inequality (zeta_0 at initialisation).
    """

    B: torch.Tensor
    singular_values: torch.Tensor
    rank: torch.Tensor
    sigma_N: torch.Tensor
    zeta: float

    @property
    def full_rank(self) -> bool:
        """True when every B_k has full row rank N."""
        return bool((self.rank == self.B.shape[1]).all())


def head_matrices(model, Z, tau: float, rtol: float = 1e-10) -> HeadMatrices:
    """The head matrices of Proposition 1, B_k = Zbar (s_k^1..s_k^H) in R^{N x H}, Zbar = (Z^T Z + m tau I_N)^{1/2}.

    ``model``: a :class:`~icllib.models.one_layer.OneLayerMultiHead`; ``Z``: prompt features (m, N) or Z_all
    (m, K) (only the first N columns are used); ``tau`` >= 0.
    """
    _check_one_layer(model)
    tau = check_float("tau", tau, minimum=0.0)
    rtol = check_float("rtol", rtol, minimum=0.0)
    return _head_matrices(model, kernels._zbar(_prompt_features(model, Z), tau), rtol)


@torch.no_grad()
def _head_matrices(model, Zbar: torch.Tensor, rtol: float) -> HeadMatrices:
    """:func:`head_matrices` from ``Zbar`` (N, N), float64."""
    S = model.attention_scores().double()  # (H, N, K)
    B = torch.einsum("ij,hjk->kih", Zbar, S)  # (K, N, H)
    sv = torch.linalg.svdvals(B)  # (K, min(N, H))
    N = B.shape[1]
    rank = (sv > rtol * sv[:, :1]).sum(dim=1)
    sigma_N = sv[:, N - 1] if sv.shape[1] >= N else torch.zeros(B.shape[0], dtype=torch.float64)
    return HeadMatrices(B=B, singular_values=sv, rank=rank, sigma_N=sigma_N, zeta=float(sigma_N.min()))


def zeta(model, Z, tau: float) -> float:
    """zeta = min_k sigma_N(B_k) at the model's current parameters (zeta_0 when called at initialisation)."""
    return head_matrices(model, Z, tau).zeta


# --------------------------------------------------------------------------------------------------------------------
# The PL inequality and smoothness
# --------------------------------------------------------------------------------------------------------------------
def _gap_and_grads(model, terms) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gap = kernels.exact_gap(model.attention_matrix(), terms)
    g_Q, g_w = torch.autograd.grad(gap, (model.Q, model.w))
    return gap.detach(), g_Q, g_w


def pl_ratio(model, Z_all, tau: float, gamma2: float = 1.0) -> float:
    """||grad L||^2 / (L - L*) at the current parameters, in the metric of GD with eta_w = gamma^2 eta_Q.

    ||grad L||^2 = ||dL/dQ||^2 + gamma^2 ||dL/dw||^2 (GD with the two step sizes is plain GD in (Q, w / gamma)).
    The PL inequality says this is at least :func:`pl_lower_bound`. Returns NaN when L - L* is exactly 0.
    """
    _check_one_layer(model)
    gamma2 = check_float("gamma2", gamma2, minimum=0.0, strict=True)
    gap, g_Q, g_w = _gap_and_grads(model, _terms(model, Z_all, tau))
    if float(gap) == 0.0:
        return float("nan")
    return float(((g_Q**2).sum() + gamma2 * (g_w**2).sum()) / gap)


def pl_lower_bound(model, Z_all, tau: float, gamma2: float = 1.0) -> float:
    """The PL constant from the proof, 2 gamma^2 zeta^2 / K with zeta = min_k sigma_N(B_k) at the current point."""
    gamma2 = check_float("gamma2", gamma2, minimum=0.0, strict=True)
    return 2 * gamma2 * zeta(model, Z_all, tau) ** 2 / model.n_tokens


def smoothness_estimate(
    model, Z_all, tau: float, generator: torch.Generator, gamma2: float = 1.0, n_iter: int = 30
) -> float:
    """Largest absolute eigenvalue of the Hessian of L at the current point, in the coordinates (Q, w / gamma).

    Power iteration on Hessian-vector products (double backward), ``n_iter`` steps from a random start drawn from
    ``generator``. GD with step eta_Q (and eta_w = gamma^2 eta_Q) is stable near this point when eta_Q < 2 / ell; the
    theorem asks eta_Q <= 1 / ell for ell a bound along the whole path, so this is a local estimate, not a bound.
    """
    _check_one_layer(model)
    check_generator("generator", generator)
    gamma2 = check_float("gamma2", gamma2, minimum=0.0, strict=True)
    n_iter = check_int("n_iter", n_iter, minimum=1)
    terms = _terms(model, Z_all, tau)
    gamma = gamma2**0.5
    params = (model.Q, model.w)
    gap = kernels.exact_gap(model.attention_matrix(), terms)
    grads = torch.autograd.grad(gap, params, create_graph=True)
    vec = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype) for p in params]
    eig = 0.0
    for _ in range(n_iter):
        norm = torch.sqrt(sum((v.double() ** 2).sum() for v in vec))
        vec = [v / norm for v in vec]
        # Hessian in (Q, u = w / gamma): D H D with D = diag(1, gamma).
        scaled = (vec[0], gamma * vec[1])
        hv = torch.autograd.grad(grads, params, grad_outputs=scaled, retain_graph=True)
        hv = [hv[0], gamma * hv[1]]
        eig = float(sum((h.double() * v.double()).sum() for h, v in zip(hv, vec, strict=True)))
        vec = [h.detach() for h in hv]
    return abs(eig)


# --------------------------------------------------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class RateFit:
    """Least-squares fit log(gap_t) = intercept + slope t. ``rate`` = exp(slope), the factor per step (< 1 when the
    gap falls); ``r2`` the coefficient of determination of the fit (1 = a straight line on a log scale)."""

    rate: float
    slope: float
    intercept: float
    r2: float
    n_points: int

    def steps_to(self, factor: float) -> float:
        """Steps for the gap to shrink by ``factor`` (e.g. 10) at the fitted rate."""
        return float(np.log(factor) / -self.slope) if self.slope < 0 else float("inf")


def fit_linear_rate(gaps, steps=None) -> RateFit:
    """Fit a linear (geometric) rate to a sequence of gaps L_t - L* > 0 recorded at ``steps`` (default 0, 1, 2, ...)."""
    gaps = np.asarray(gaps, dtype=float)
    if gaps.ndim != 1 or gaps.size < 3:
        raise ValueError(f"gaps must be a 1-d sequence of at least 3 values, got shape {gaps.shape}")
    if not np.all(np.isfinite(gaps)) or np.any(gaps <= 0):
        raise ValueError("gaps must be finite and > 0 (take a window before the gap reaches rounding level)")
    steps = np.arange(gaps.size, dtype=float) if steps is None else np.asarray(steps, dtype=float)
    if steps.shape != gaps.shape:
        raise ValueError(f"steps must have the same shape as gaps {gaps.shape}, got {steps.shape}")
    if np.ptp(steps) == 0:
        raise ValueError("steps must not all be equal")
    log_gaps = np.log(gaps)
    slope, intercept = np.polyfit(steps, log_gaps, 1)
    residual = log_gaps - (intercept + slope * steps)
    total = ((log_gaps - log_gaps.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    return RateFit(rate=float(np.exp(slope)), slope=float(slope), intercept=float(intercept), r2=float(r2),
                   n_points=int(gaps.size))


def predicted_rate(eta_Q: float, gamma2: float, zeta: float, n_tokens: int, c: float = 0.25) -> float:
    """Theorem 1's form of the factor per step, 1 - c eta_Q gamma^2 zeta^2 / K.

    c = 1/4 is what the PL + smoothness argument gives with zeta_t >= zeta_0 / 2 (use c = 1 with the current zeta);
    the paper's exact constant is not recovered here.
    """
    eta_Q = check_float("eta_Q", eta_Q, minimum=0.0, strict=True)
    gamma2 = check_float("gamma2", gamma2, minimum=0.0, strict=True)
    zeta = check_float("zeta", zeta, minimum=0.0)
    n_tokens = check_int("n_tokens", n_tokens, minimum=1)
    c = check_float("c", c, minimum=0.0, strict=True)
    return 1.0 - c * eta_Q * gamma2 * zeta**2 / n_tokens


def rate_constant(rate: float, eta_Q: float, gamma2: float, zeta: float, n_tokens: int) -> float:
    """The c for which 1 - c eta_Q gamma^2 zeta^2 / K equals a measured ``rate`` (inverse of :func:`predicted_rate`)."""
    rate = check_float("rate", rate, minimum=0.0)
    eta_Q = check_float("eta_Q", eta_Q, minimum=0.0, strict=True)
    gamma2 = check_float("gamma2", gamma2, minimum=0.0, strict=True)
    zeta = check_float("zeta", zeta, minimum=0.0, strict=True)
    n_tokens = check_int("n_tokens", n_tokens, minimum=1)
    return (1.0 - rate) * n_tokens / (eta_Q * gamma2 * zeta**2)


def effective_tau(m: int, tau: float, n_labeled: int) -> float:
    """The noise level the trained transformer acts on: ridge with m tau is the N tau' rule at tau' = m tau / N.

    Best when N ~ m (tau' = tau); with N < m it over-regularises (small-norm lambda, underfit), with N > m it
    under-regularises (fits the noise).
    """
    m = check_int("m", m, minimum=1)
    tau = check_float("tau", tau, minimum=0.0)
    n_labeled = check_int("n_labeled", n_labeled, minimum=1)
    return m * tau / n_labeled


def label_error(Z_all, n_labeled: int, tau: float, reg: float, lambda_moment=None) -> float:
    """Expected squared error of ridge predictions to the noise-free labels of the unseen tokens (closed form).

    The predictor is lambda_hat = (Z Z^T + reg I_m)^{-1} Z y (reg = m tau: the trained transformer, Theorem 2;
    reg = N tau: the paper's "best" predictor), so yhat_k = a_k^T y with a_k = (Z^T Z + reg I_N)^{-1} Z^T z_k
    (pinv(Z) z_k at reg = 0). With y_n = lambda^T (z_n + eps_n) and C = E[lambda lambda^T]
    (``lambda_moment``, default I_m, the training law),

        E (yhat_k - lambda^T z_k)^2 = (Z a_k - z_k)^T C (Z a_k - z_k) + tau tr(C) ||a_k||^2,

    averaged over the K - N unseen tokens k > N. For C = I_m the minimiser over a_k is reg = m tau exactly.
    """
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2, dtype=torch.float64)
    m, K = Z_all.shape
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=K - 1)
    tau = check_float("tau", tau, minimum=0.0)
    reg = check_float("reg", reg, minimum=0.0)
    if lambda_moment is None:
        C = torch.eye(m, dtype=torch.float64)
    else:
        C = as_float_tensor("lambda_moment", lambda_moment, ndim=2, dtype=torch.float64)
        if tuple(C.shape) != (m, m):
            raise ValueError(f"lambda_moment must have shape (m, m) = ({m}, {m}), got {tuple(C.shape)}")
    Z, Z_Q = Z_all[:, :n_labeled], Z_all[:, n_labeled:]
    A_Q = kernels._ridge_matrix(Z_all, n_labeled, reg)[:, n_labeled:]  # a_k = (Z^T Z + reg I)^{-1} Z^T z_k, k > N
    bias = Z @ A_Q - Z_Q  # (m, K - N)
    per_token = (bias * (C @ bias)).sum(0) + tau * torch.trace(C) * (A_Q**2).sum(0)
    return float(per_token.mean())


# --------------------------------------------------------------------------------------------------------------------
# For fixed Q the loss is least squares in w
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class BestW:
    """The best output weights for the current Q: ``w`` (H, K) and ``gap`` = min_w L(Q, w) - L*."""

    w: torch.Tensor
    gap: float


@torch.no_grad()
def best_w_given_Q(model, Z_all, tau: float) -> BestW:
    """min over w of L(Q, w) - L* with Q frozen: one least-squares problem per token.

    L - L* = (1/2K) sum_k ||Zbar (S_k w_k - A_{:,k})||^2 = (1/2K) sum_k ||B_k w_k - Zbar A_{:,k}||^2, with S_k the
    (N, H) matrix of the heads' scores for token k, so w_k is a least-squares solution (minimum norm when H > N).
    With H >= N and B_k of full rank the minimum is 0; with H < N it is not, whatever w. The model is not changed.
    """
    _check_one_layer(model)
    Z_all, tau = _model_dictionary(model, Z_all, tau)
    terms = kernels._loss_terms(Z_all, model.n_labeled, tau)
    Zbar = kernels._zbar(Z_all[:, : model.n_labeled], tau)
    heads = _head_matrices(model, Zbar, 1e-10)
    rhs = (Zbar @ terms.target).T.unsqueeze(-1)  # (K, N, 1)
    # gelsd (SVD based) on CPU copes with the rank-deficient and nearly singular B_k that H ~ N produces.
    driver = "gelsd" if heads.B.device.type == "cpu" else None
    w = torch.linalg.lstsq(heads.B, rhs, driver=driver).solution.squeeze(-1)  # (K, H)
    residual = heads.B @ w.unsqueeze(-1) - rhs
    gap = float((residual**2).sum() / (2 * terms.n_tokens))
    return BestW(w=w.T.contiguous(), gap=gap)
