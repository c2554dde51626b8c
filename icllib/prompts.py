"""Template-regression prompts (Yang et al. 2024, Section 2).

A prompt is drawn as follows, with the dictionary features ``Z_all = (z_1, ..., z_K)`` (shape ``(m, K)``) fixed:

1. a task ``lambda`` in R^m, drawn afresh per prompt (training: ``lambda ~ N(0, I_m)``);
2. noisy labels of all K tokens, ``y_k = lambda^T (z_k + eps_k)`` with ``eps_k ~ N(0, tau I_m)`` i.i.d. over
   prompts and tokens (the noise lives in feature space and ``tau`` is its *variance*);
3. the prompt shows the first N tokens with their labels ``y = (y_1, ..., y_N)``; the model must predict all K.

Sampling shortcut: given ``lambda``, the label noise ``lambda^T eps_k`` is N(0, tau ||lambda||^2), independent over
k, so :func:`sample_prompts` draws this scalar directly (the joint law of ``(lambda, y_all)`` is exactly that of
the definition) and never builds the ``(n, K, m)`` noise tensor unless asked to (``feature_noise=True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icllib._checks import as_float_tensor, check_bool, check_float, check_float_dtype, check_generator, check_int

__all__ = ["sample_lambda", "PromptBatch", "sample_prompts", "LAMBDA_DISTRIBUTIONS"]

#: The named task distributions, the paper's training (in-domain) law and its out-of-domain test law.
LAMBDA_DISTRIBUTIONS = {
    "in_domain": "lambda ~ N(0, I_m)",
    "out_of_domain": "lambda ~ N(1_m, 4 I_m)",
}


def sample_lambda(
    n_prompts: int,
    m: int,
    generator: torch.Generator,
    distribution="in_domain",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Draw ``n_prompts`` task vectors ``lambda`` in R^m, shape ``(n_prompts, m)``.

    ``distribution`` is one of

    - ``"in_domain"``: ``N(0, I_m)`` (training and the paper's in-domain test set);
    - ``"out_of_domain"``: ``N(1_m, 4 I_m)`` (mean one, standard deviation 2: the paper's task shift);
    - a callable ``(n, m, generator) -> Tensor`` of shape ``(n, m)``;
    - a ``torch.distributions.Distribution`` whose samples are vectors of length m (``event_shape == (m,)``, or
      ``batch_shape == (m,)`` with scalar events, e.g. ``Normal(torch.zeros(m), torch.ones(m))``). Such objects
      draw from torch's global generator, so the draw runs inside ``torch.random.fork_rng`` seeded from
      ``generator``: reproducible, and the global random state is left untouched.
    """
    n_prompts = check_int("n_prompts", n_prompts, minimum=1)
    m = check_int("m", m, minimum=1)
    check_generator("generator", generator)
    check_float_dtype("dtype", dtype)
    _check_distribution(distribution, m)
    return _sample_lambda(n_prompts, m, generator, distribution).to(dtype)


def _check_distribution(distribution, m: int) -> None:
    if isinstance(distribution, str):
        if distribution not in LAMBDA_DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {list(LAMBDA_DISTRIBUTIONS)}, a callable (n, m, generator) -> Tensor "
                f"or a torch.distributions.Distribution, got {distribution!r}"
            )
    elif isinstance(distribution, torch.distributions.Distribution):
        shape = tuple(distribution.batch_shape) + tuple(distribution.event_shape)
        if shape != (m,):
            raise ValueError(
                f"distribution must produce vectors of length m={m} (batch_shape + event_shape == ({m},)), "
                f"got batch_shape {tuple(distribution.batch_shape)} and event_shape {tuple(distribution.event_shape)}"
            )
    elif not callable(distribution):
        raise TypeError(
            "distribution must be 'in_domain', 'out_of_domain', a callable (n, m, generator) -> Tensor or a "
            f"torch.distributions.Distribution, got {type(distribution).__name__}"
        )


def _sample_lambda(n_prompts: int, m: int, generator: torch.Generator, distribution) -> torch.Tensor:
    """The draw of :func:`sample_lambda` (arguments checked by the caller; a callable's output is checked here)."""
    if isinstance(distribution, str):
        lam = torch.randn(n_prompts, m, generator=generator, dtype=torch.float64)
        return lam if distribution == "in_domain" else 1.0 + 2.0 * lam  # out of domain: N(1_m, 4 I_m)
    if isinstance(distribution, torch.distributions.Distribution):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lam = distribution.sample((n_prompts,))
        return as_float_tensor("distribution sample", lam)
    lam = distribution(n_prompts, m, generator)
    if not isinstance(lam, torch.Tensor):
        raise TypeError(f"distribution callable must return a torch.Tensor, got {type(lam).__name__}")
    if tuple(lam.shape) != (n_prompts, m):
        raise ValueError(
            f"distribution callable must return shape (n_prompts, m) = ({n_prompts}, {m}), got {tuple(lam.shape)}"
        )
    return as_float_tensor("distribution callable output", lam)


@dataclass
class PromptBatch:
    """A batch of n prompts over a dictionary of K tokens, the first ``n_labeled`` (= N) of them labelled.

    ``lam`` ``(n, m)`` the tasks lambda; ``y_all`` ``(n, K)`` noisy labels of all K tokens (the targets);
    ``y`` ``(n, N)`` = ``y_all[:, :N]``, the labels shown in the prompt; ``eps`` ``(n, K, m)`` the feature noise,
    kept only when sampled with ``feature_noise=True`` (else ``None``).
    """

    lam: torch.Tensor
    y_all: torch.Tensor
    y: torch.Tensor
    n_labeled: int
    eps: torch.Tensor | None = None

    @property
    def n_prompts(self) -> int:
        return self.y_all.shape[0]

    @property
    def n_tokens(self) -> int:
        """K, the dictionary size."""
        return self.y_all.shape[1]


def sample_prompts(
    Z_all,
    n_labeled: int,
    tau: float,
    n_prompts: int,
    generator: torch.Generator,
    distribution="in_domain",
    feature_noise: bool = False,
) -> PromptBatch:
    """Sample template-regression prompts: ``y_k = lambda^T (z_k + eps_k)``, ``eps_k ~ N(0, tau I_m)``.

    Parameters
    ----------
    Z_all:
        Features of the dictionary, shape ``(m, K)`` (numpy or torch, float32 or float64; the output keeps it).
    n_labeled:
        N, the number of labelled tokens (the first N columns of ``Z_all``), ``1 <= N < K``.
    tau:
        Variance of the feature noise, ``tau >= 0``.
    n_prompts, generator, distribution:
        Number of prompts, source of randomness, law of ``lambda`` (see :func:`sample_lambda`).
    feature_noise:
        Draw ``eps`` explicitly (memory ``n K m``) and keep it in the batch; by default the scalar noise
        ``lambda^T eps_k ~ N(0, tau ||lambda||^2)`` is drawn instead, which gives labels with the same law.
    """
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2)
    m, K = Z_all.shape
    if K < 2:
        raise ValueError(f"Z_all must have shape (m, K) with K >= 2 tokens, got {tuple(Z_all.shape)}")
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=K - 1)
    tau = check_float("tau", tau, minimum=0.0)
    n_prompts = check_int("n_prompts", n_prompts, minimum=1)
    check_generator("generator", generator)
    check_bool("feature_noise", feature_noise)
    _check_distribution(distribution, m)
    return _sample_prompts(Z_all, n_labeled, tau, n_prompts, generator, distribution, feature_noise)


def _sample_prompts(Z_all: torch.Tensor, n_labeled: int, tau: float, n_prompts: int, generator: torch.Generator,
                    distribution="in_domain", feature_noise: bool = False) -> PromptBatch:
    """The draw of :func:`sample_prompts`, for callers that have checked its arguments (training loops)."""
    m, K = Z_all.shape
    Z64 = Z_all.double()
    lam = _sample_lambda(n_prompts, m, generator, distribution).double()
    eps = None
    if feature_noise:
        eps = tau**0.5 * torch.randn(n_prompts, K, m, generator=generator, dtype=torch.float64)
        y_all = lam @ Z64 + torch.einsum("nm,nkm->nk", lam, eps)
    else:
        noise = torch.randn(n_prompts, K, generator=generator, dtype=torch.float64)
        y_all = lam @ Z64 + tau**0.5 * lam.norm(dim=1, keepdim=True) * noise
    dtype = Z_all.dtype
    y_all = y_all.to(dtype)
    return PromptBatch(
        lam=lam.to(dtype),
        y_all=y_all,
        y=y_all[:, :n_labeled],
        n_labeled=n_labeled,
        eps=None if eps is None else eps.to(dtype),
    )
