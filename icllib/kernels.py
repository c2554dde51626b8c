"""Closed forms for template regression (Yang et al. 2024): ridge over the basis, the target matrix A and the exact
population loss of the one-layer model (Lemma 5).

Notation (the book's, following the paper): ``Z_all = (z_1, ..., z_K)`` of shape ``(m, K)`` holds the features of
the K dictionary tokens, ``Z = Z_all[:, :N]`` those of the N labelled prompt tokens and ``Z_Q = Z_all[:, N:]``
those of the K - N unseen ones; ``tau`` is the variance of the feature noise; ``y`` (shape ``(..., N)``) are the
prompt labels. The model predicts ``yhat = A_tilde^T y`` with ``A_tilde = (a_1, ..., a_K)`` of shape ``(N, K)``.

With ``M = Z^T Z + m tau I_N`` (so ``Zbar = M^{1/2}``) the population loss is (Lemma 5)

    L(A_tilde) = (1/2K) sum_k ||Zbar (a_k - A_{:,k})||^2 + L*,
    A = M^{-1} (Z^T Z_all + m tau [I_N, 0]),
    L* = (1/2K) sum_{k > N} ( ||Z A_{:,k} - z_k||^2 + m tau ||A_{:,k}||^2 + m tau ).

The columns of A are ``e_k`` for k <= N (copy the shown label) and the ridge weights ``M^{-1} Z^T z_k`` for k > N,
so ``A^T y`` is the ridge prediction with regularisation ``m tau`` (Theorem 2's target ``yhat*``). At ``tau = 0``
the book uses the limit ``tau -> 0+``: ``A = [I_N, pinv(Z) Z_Q]`` (exact recovery when N >= m).

Inputs may be numpy arrays or torch tensors, float32 or float64; results are torch tensors, float32 when every
array input is float32 and float64 otherwise. Linear solves and the loss are computed in float64 internally
(cheap at these sizes, and it keeps ``L - L*`` accurate down to ~1e-12 relative) and cast back at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icllib._checks import as_float_tensor, check_float, check_generator, check_int
from icllib.prompts import _check_distribution, _sample_prompts

__all__ = [
    "ridge_coefficients",
    "ridge_predictions",
    "bayes_coefficients",
    "bayes_predictions",
    "ridge_gap",
    "target_matrix",
    "zbar",
    "LossTerms",
    "loss_terms",
    "exact_gap",
    "population_loss",
    "optimal_loss",
    "population_loss_grad",
    "monte_carlo_loss",
    "inference_loss",
]


# --------------------------------------------------------------------------------------------- validation


def _out_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float32 if all(t.dtype == torch.float32 for t in tensors) else torch.float64


def _dictionary(Z_all, n_labeled, tau) -> tuple[torch.Tensor, int, float]:
    """Validate ``(Z_all, N, tau)``; Z_all returned as given (not yet cast)."""
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2)
    m, K = Z_all.shape
    if m < 1 or K < 2:
        raise ValueError(f"Z_all must have shape (m, K) with m >= 1 and K >= 2, got {tuple(Z_all.shape)}")
    n_labeled = check_int("n_labeled", n_labeled, minimum=1)
    if n_labeled >= K:
        raise ValueError(
            f"n_labeled must be smaller than the number of tokens K={K} (some tokens must stay unlabelled), "
            f"got n_labeled={n_labeled}"
        )
    tau = check_float("tau", tau, minimum=0.0)
    return Z_all, n_labeled, tau


def _labels(y, n_labeled: int, name: str = "y") -> torch.Tensor:
    y = as_float_tensor(name, y)
    if y.ndim < 1 or y.shape[-1] != n_labeled:
        raise ValueError(
            f"{name} must have shape (..., N) with N = n_labeled = {n_labeled} prompt labels, got {tuple(y.shape)}"
        )
    return y


def _coefficient_matrix(A_tilde, N: int, K: int, name: str = "A_tilde") -> torch.Tensor:
    A_tilde = as_float_tensor(name, A_tilde)
    if A_tilde.ndim < 2 or tuple(A_tilde.shape[-2:]) != (N, K):
        raise ValueError(f"{name} must have shape (..., N, K) = (..., {N}, {K}), got {tuple(A_tilde.shape)}")
    return A_tilde


# --------------------------------------------------------------------------------------------- ridge


def ridge_coefficients(Z, y, reg: float) -> torch.Tensor:
    """Ridge estimate of the task: ``lambda_hat = (Z Z^T + reg I_m)^{-1} Z y``, shape ``(..., m)``.

    ``Z`` is ``(m, N)`` (features of the labelled tokens), ``y`` is ``(..., N)``. The N x N or the m x m system is
    solved, whichever is smaller (push-through identity ``(Z Z^T + r I)^{-1} Z = Z (Z^T Z + r I)^{-1}``).
    ``reg = 0`` gives the limit ``reg -> 0+``: the minimum-norm least-squares solution ``pinv(Z^T) y``.
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    y = _labels(y, Z.shape[1])
    reg = check_float("reg", reg, minimum=0.0)
    return _ridge_coefficients(Z, y, reg)


def _ridge_coefficients(Z: torch.Tensor, y: torch.Tensor, reg: float) -> torch.Tensor:
    """:func:`ridge_coefficients` on checked arguments (float32 only when Z and y both are)."""
    m, N = Z.shape
    out = _out_dtype(Z, y)
    Z64, y64 = Z.double(), y.double()
    if reg == 0.0:
        lam = y64 @ torch.linalg.pinv(Z64)  # (pinv(Z^T) y)^T = y^T pinv(Z)
    elif N <= m:
        gram = Z64.T @ Z64 + reg * torch.eye(N, dtype=torch.float64)
        lam = torch.linalg.solve(gram, y64.reshape(-1, N).T).T.reshape(y.shape) @ Z64.T
    else:
        gram = Z64 @ Z64.T + reg * torch.eye(m, dtype=torch.float64)
        lam = torch.linalg.solve(gram, Z64 @ y64.reshape(-1, N).T).T.reshape(*y.shape[:-1], m)
    return lam.to(out)


def _predictions(Z_all, y, n_labeled, tau, reg_factor: str) -> torch.Tensor:
    Z_all, N, tau = _dictionary(Z_all, n_labeled, tau)
    y = _labels(y, N)
    reg = (Z_all.shape[0] if reg_factor == "m" else N) * tau
    return _ridge_predict(Z_all, y, N, reg)


def _ridge_predict(Z_all: torch.Tensor, y: torch.Tensor, N: int, reg: float) -> torch.Tensor:
    """``(y, lambda_hat^T Z_Q)`` with ridge regularisation ``reg``, on checked arguments."""
    lam = _ridge_coefficients(Z_all[:, :N].double(), y.double(), reg)
    yhat = torch.cat([y.double(), lam @ Z_all[:, N:].double()], dim=-1)
    return yhat.to(_out_dtype(Z_all, y))


def ridge_predictions(Z_all, y, n_labeled: int, tau: float) -> torch.Tensor:
    """Theorem 2's target ``yhat* = (y_1, ..., y_N, lambda_hat^T Z_Q)``, shape ``(..., K)``.

    ``lambda_hat = (Z Z^T + m tau I_m)^{-1} Z y`` (regularisation ``m tau``); equals ``y @ target_matrix(...)``.
    """
    return _predictions(Z_all, y, n_labeled, tau, "m")


def bayes_coefficients(Z, y, tau: float) -> torch.Tensor:
    """The paper's best predictor's task estimate ``lambda_tau = (Z Z^T + N tau I_m)^{-1} Z y``, shape ``(..., m)``.

    Regularisation ``N tau``: it minimises ``E_eps ||(Z + E)^T lambda - y||^2`` over lambda, the prompt's squared
    error averaged over fresh feature noise ``E`` (N columns, each ``N(0, tau I_m)``).
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    tau = check_float("tau", tau, minimum=0.0)
    return _ridge_coefficients(Z, _labels(y, Z.shape[1]), Z.shape[1] * tau)


def bayes_predictions(Z_all, y, n_labeled: int, tau: float) -> torch.Tensor:
    """``yhat_best = (y_1, ..., y_N, lambda_tau^T Z_Q)`` with :func:`bayes_coefficients` (reg ``N tau``)."""
    return _predictions(Z_all, y, n_labeled, tau, "N")


def _ridge_matrix(Z_all64: torch.Tensor, N: int, reg: float) -> torch.Tensor:
    """``[I_N, (Z^T Z + reg I)^{-1} Z^T Z_Q]`` (``pinv(Z) Z_Q`` at reg = 0), float64, shape (N, K)."""
    Z, Z_Q = Z_all64[:, :N], Z_all64[:, N:]
    if reg == 0.0:
        right = torch.linalg.pinv(Z) @ Z_Q
    else:
        right = torch.linalg.solve(Z.T @ Z + reg * torch.eye(N, dtype=torch.float64), Z.T @ Z_Q)
    # The first N columns are M^{-1} M = I exactly; set them so rather than carry rounding.
    return torch.cat([torch.eye(N, dtype=torch.float64), right], dim=1)


def ridge_gap(Z_all, n_labeled: int, tau: float, y=None, lambda_moment=None) -> torch.Tensor:
    """Gap between the transformer's target and the best predictor, ``(1/K) ||yhat* - yhat_best||^2`` (Figure 3).

    Both predictors are linear in the prompt labels, ``yhat* = A^T y`` and ``yhat_best = B^T y`` (``B`` the same
    as ``A`` with regularisation ``N tau`` in place of ``m tau``), so with ``D = A - B``:

    - ``y=None`` (default): the exact expectation over lambda and the noise,
      ``(1/K) tr(D^T E[y y^T] D)`` with ``E[y y^T] = Z^T C Z + tau tr(C) I_N`` and ``C = E[lambda lambda^T]``
      (``lambda_moment``, default ``I_m``, the paper's ``lambda ~ N(0, I_m)``: then ``E[y y^T] = M``);
    - ``y`` of shape ``(..., N)``: the gap on those prompts, averaged over them.

    Returns a scalar tensor.
    """
    Z_all, N, tau = _dictionary(Z_all, n_labeled, tau)
    m, K = Z_all.shape
    Z64 = Z_all.double()
    D = _ridge_matrix(Z64, N, m * tau) - _ridge_matrix(Z64, N, N * tau)
    tensors = [Z_all]
    if y is not None:
        if lambda_moment is not None:
            raise ValueError("give either y (gap on sampled prompts) or lambda_moment (expected gap), not both")
        y = _labels(y, N)
        tensors.append(y)
        gap = ((y.double() @ D) ** 2).sum(-1).mean() / K
    else:
        Z = Z64[:, :N]
        if lambda_moment is None:
            second = Z.T @ Z + m * tau * torch.eye(N, dtype=torch.float64)
        else:
            C = as_float_tensor("lambda_moment", lambda_moment, ndim=2).double()
            if tuple(C.shape) != (m, m):
                raise ValueError(f"lambda_moment must have shape (m, m) = ({m}, {m}), got {tuple(C.shape)}")
            second = Z.T @ C @ Z + tau * torch.trace(C) * torch.eye(N, dtype=torch.float64)
        gap = (D * (second @ D)).sum() / K
    return gap.to(_out_dtype(*tensors))


# --------------------------------------------------------------------------------------------- Lemma 5


def target_matrix(Z_all, n_labeled: int, tau: float) -> torch.Tensor:
    """The target ``A = (Z^T Z + m tau I_N)^{-1} (Z^T Z_all + m tau [I_N, 0])``, shape ``(N, K)`` (Lemma 5).

    ``A[:, :N] = I_N`` exactly; at ``tau = 0`` the limit ``[I_N, pinv(Z) Z_Q]`` is returned.
    """
    Z_all, N, tau = _dictionary(Z_all, n_labeled, tau)
    return _ridge_matrix(Z_all.double(), N, Z_all.shape[0] * tau).to(_out_dtype(Z_all))


def zbar(Z, tau: float) -> torch.Tensor:
    """``Zbar = (Z^T Z + m tau I_N)^{1/2}``, the symmetric positive semi-definite square root, shape ``(N, N)``.

    ``Z`` is ``(m, N)``, the features of the labelled tokens. Computed by an eigendecomposition in float64
    (eigenvalues clipped at 0 against rounding).
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    tau = check_float("tau", tau, minimum=0.0)
    return _zbar(Z, tau)


def _zbar(Z: torch.Tensor, tau: float) -> torch.Tensor:
    """:func:`zbar` on checked arguments."""
    m, N = Z.shape
    Z64 = Z.double()
    evals, evecs = torch.linalg.eigh(Z64.T @ Z64 + m * tau * torch.eye(N, dtype=torch.float64))
    root = (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T
    return ((root + root.T) / 2).to(Z.dtype)


@dataclass
class LossTerms:
    """The constants of Lemma 5 for one dictionary, computed once (float64).

    ``gram`` = ``M = Z^T Z + m tau I_N`` (N, N); ``target`` = A (N, K); ``optimal`` = L* (0-d tensor);
    ``n_tokens`` = K; ``dtype`` that of Z_all. ``loss(A_tilde)`` and ``grad(A_tilde)`` then cost two small matrix
    products: use this in training loops. Results are float32 only when both A_tilde and Z_all are.
    """

    gram: torch.Tensor
    target: torch.Tensor
    optimal: torch.Tensor
    n_tokens: int
    dtype: torch.dtype = torch.float64

    def _out(self, A_tilde: torch.Tensor) -> torch.dtype:
        return torch.float32 if A_tilde.dtype == torch.float32 and self.dtype == torch.float32 else torch.float64

    def loss(self, A_tilde: torch.Tensor) -> torch.Tensor:
        """``L(A_tilde) = (1/2K) tr((A_tilde - A)^T M (A_tilde - A)) + L*``; batch dims allowed, autograd-safe."""
        A_tilde = _coefficient_matrix(A_tilde, *self.target.shape)
        diff = A_tilde.double() - self.target
        excess = (diff * (self.gram @ diff)).sum(dim=(-2, -1)) / (2 * self.n_tokens)
        return (excess + self.optimal).to(self._out(A_tilde))

    def grad(self, A_tilde) -> torch.Tensor:
        """``dL/dA_tilde = (1/K) M (A_tilde - A)``."""
        A_tilde = _coefficient_matrix(A_tilde, *self.target.shape)
        return (self.gram @ (A_tilde.double() - self.target) / self.n_tokens).to(self._out(A_tilde))


def loss_terms(Z_all, n_labeled: int, tau: float) -> LossTerms:
    """Precompute ``M``, ``A`` and ``L*`` of Lemma 5 (float64) for repeated loss evaluations."""
    Z_all, N, tau = _dictionary(Z_all, n_labeled, tau)
    return _loss_terms(Z_all, N, tau)


def _loss_terms(Z_all: torch.Tensor, N: int, tau: float) -> LossTerms:
    """:func:`loss_terms` on checked arguments."""
    m, K = Z_all.shape
    Z64 = Z_all.double()
    Z, Z_Q = Z64[:, :N], Z64[:, N:]
    A = _ridge_matrix(Z64, N, m * tau)
    gram = Z.T @ Z + m * tau * torch.eye(N, dtype=torch.float64)
    # L*: the minimum of ||Z a - z_k||^2 + m tau ||a||^2 + m tau at a = A_k, a sum of non-negative terms
    # (no cancellation); the prompt tokens k <= N contribute 0.
    A_Q = A[:, N:]
    optimal = (((Z @ A_Q - Z_Q) ** 2).sum() + m * tau * (A_Q**2).sum() + m * tau * (K - N)) / (2 * K)
    return LossTerms(gram=gram, target=A, optimal=optimal, n_tokens=K, dtype=Z_all.dtype)


def exact_gap(A_tilde: torch.Tensor, terms: LossTerms) -> torch.Tensor:
    """L(theta) - L* = (1/2K) tr((A_tilde - A)^T M (A_tilde - A)), M = Zbar^2 = Z^T Z + m tau I (Lemma 5).

    Computed directly rather than as L - L*, which would lose the gap in rounding once it falls below ~1e-16 L*.
    Differentiable in ``A_tilde`` (N, K); float64. No checks: the training loops call it at every step.
    """
    diff = A_tilde.double() - terms.target
    return (diff * (terms.gram @ diff)).sum() / (2 * terms.n_tokens)


def population_loss(A_tilde, Z_all, n_labeled: int, tau: float) -> torch.Tensor:
    """Exact population loss ``L = (1/2K) E sum_k (a_k^T y - y_k)^2`` over ``lambda ~ N(0, I_m)`` and the noise.

    Lemma 5: ``L(A_tilde) = (1/2K) sum_k ||Zbar (a_k - A_{:,k})||^2 + L*`` with ``A`` = :func:`target_matrix`.
    ``A_tilde`` is ``(N, K)`` (or ``(..., N, K)``, one loss per leading index); the result is a tensor
    differentiable with respect to ``A_tilde`` by autograd (float32 only when A_tilde and Z_all both are).
    Only the second moment of lambda enters, so any lambda with independent mean-0 variance-1 entries gives the
    same value.
    """
    terms = loss_terms(Z_all, n_labeled, tau)
    return terms.loss(A_tilde)


def optimal_loss(Z_all, n_labeled: int, tau: float) -> torch.Tensor:
    """``L* = min L = (1/2K) sum_{k>N} (||Z A_k - z_k||^2 + m tau ||A_k||^2 + m tau)`` (0-d tensor).

    Equivalently ``(1/2K) sum_{k>N} (||z_k||^2 + m tau - z_k^T Z M^{-1} Z^T z_k)``: the unseen tokens' targets keep
    their own feature noise, hence the ``m tau`` per unseen token.
    """
    Z_all, N, tau = _dictionary(Z_all, n_labeled, tau)
    return _loss_terms(Z_all, N, tau).optimal.to(_out_dtype(Z_all))


def population_loss_grad(A_tilde, Z_all, n_labeled: int, tau: float) -> torch.Tensor:
    """Closed-form gradient ``dL/dA_tilde = (1/K) (Z^T Z + m tau I_N)(A_tilde - A)``, same shape as A_tilde."""
    return loss_terms(Z_all, n_labeled, tau).grad(A_tilde)


def monte_carlo_loss(
    A_tilde,
    Z_all,
    n_labeled: int,
    tau: float,
    n_prompts: int,
    generator: torch.Generator,
    distribution="in_domain",
    chunk_size: int = 8192,
    return_stderr: bool = False,
):
    """The definition ``L = (1/2K) E sum_k (a_k^T y - y_k)^2``, averaged over ``n_prompts`` sampled prompts.

    Prompts come from :func:`icllib.prompts.sample_prompts` (in chunks of ``chunk_size``, float64). Returns a float,
    or ``(mean, standard_error)`` with ``return_stderr=True`` (standard error over prompts), to check Lemma 5.
    """
    Z_all, N, tau = _dictionary(Z_all, n_labeled, tau)
    K = Z_all.shape[1]
    A_tilde = _coefficient_matrix(A_tilde, N, K)
    if A_tilde.ndim != 2:
        raise ValueError(f"A_tilde must have shape (N, K) = ({N}, {K}) here, got {tuple(A_tilde.shape)}")
    n_prompts = check_int("n_prompts", n_prompts, minimum=2)
    check_generator("generator", generator)
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    _check_distribution(distribution, Z_all.shape[0])
    A64, Z64 = A_tilde.detach().double(), Z_all.double()
    per_prompt = []
    done = 0
    while done < n_prompts:
        n = min(chunk_size, n_prompts - done)
        batch = _sample_prompts(Z64, N, tau, n, generator, distribution)
        per_prompt.append(((batch.y @ A64 - batch.y_all) ** 2).sum(dim=1) / (2 * K))
        done += n
    values = torch.cat(per_prompt)
    mean = float(values.mean())
    if return_stderr:
        return mean, float(values.std() / n_prompts**0.5)
    return mean


def inference_loss(yhat, yhat_star) -> torch.Tensor:
    """The paper's inference metric ``(1/K) ||yhat - yhat*||^2``, averaged over prompts (0-d tensor).

    ``yhat`` and ``yhat_star`` have the same shape ``(..., K)``.
    """
    yhat = as_float_tensor("yhat", yhat)
    yhat_star = as_float_tensor("yhat_star", yhat_star)
    if yhat.ndim < 1 or yhat.shape != yhat_star.shape:
        raise ValueError(
            f"yhat and yhat_star must have the same shape (..., K), got {tuple(yhat.shape)} and "
            f"{tuple(yhat_star.shape)}"
        )
    out = _out_dtype(yhat, yhat_star)
    return ((yhat.to(out) - yhat_star.to(out)) ** 2).mean()
