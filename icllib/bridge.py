"""Part III, the bridge: template regression (Yang et al. 2024) meets task vectors (Hendel et al. 2023).

In the setting of Part I a prompt's whole influence on the prediction of an unseen token passes through m numbers,
the ridge coefficients (the book's *closed-form task vector*)

    lambda_hat(S) = (Z Z^T + m tau I_m)^{-1} Z y = R y,      R = (Z Z^T + m tau I_m)^{-1} Z  in R^{m x N},   (B1)

and the target predictor answers an unseen token k with z_k^T lambda_hat(S) (Theorem 2's ``yhat*``). This module
holds what the two Part III chapters compute with it:

1. *Chapter 9, the one-layer model.* Its predictions are ``yhat = A_tilde^T y``; the unseen-token block
   ``A_tilde_Q = A_tilde[:, N:]`` factors as ``A_tilde_Q^T = D R + E P_ker`` (:func:`factor_through_lambda_hat`), with
   ``P_ker`` the projector onto ker(Z) (label combinations that carry only noise), ``D`` the model's own decoder
   of lambda_hat and ``E`` what does not factor; :func:`swap_predictions` is the conflicting-task experiment of
   Hendel et al. in closed form.
2. *Chapter 10, a trained causal transformer.* Prompts written as sequences (:class:`SequenceLayout`,
   :func:`write_sequences`, :func:`sample_sequences`; all with N demonstrations, or batches of every length
   0..N, right-padded, with ``min_demos``), the training loop (:func:`train_sequence_model`) and a thin
   adapter (:func:`sequence_task_vectors`, :func:`sequence_patched_outputs`, :func:`layer_sweep`) that runs the
   task-vector protocol of :mod:`icllib.task_vectors` (dummy queries, extraction at the last position, replacement
   in the bare query, every layer) on continuous inputs, through that module's own hooks
   (:func:`icllib.task_vectors.capture_last_position`, :func:`icllib.task_vectors.patch_last_position`).

Notation as in :mod:`icllib.kernels`: ``Z_all`` (m, K) the features of the K dictionary tokens, the first N of them
labelled, ``Z = Z_all[:, :N]``, ``Z_Q = Z_all[:, N:]``, ``tau`` the feature-noise variance.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from icllib import kernels
from icllib._checks import as_float_tensor, check_float, check_generator, check_int
from icllib.prompts import sample_prompts

__all__ = [
    "lambda_hat",
    "ridge_encoder",
    "kernel_projector",
    "Factorisation",
    "factor_through_lambda_hat",
    "swap_predictions",
    "same_lambda_hat_labels",
    "SequenceLayout",
    "write_sequences",
    "SequenceBatch",
    "sample_sequences",
    "sample_dummy_queries",
    "SequenceHistory",
    "train_sequence_model",
    "sequence_predictions",
    "sequence_task_vectors",
    "sequence_patched_outputs",
    "LayerSweep",
    "layer_sweep",
]


# --------------------------------------------------------------------------------------------------------------------
# 1. The closed-form task vector and the one-layer model (Chapter 9)
# --------------------------------------------------------------------------------------------------------------------
def lambda_hat(Z, y, tau: float) -> torch.Tensor:
    """The closed-form task vector (B1): ``lambda_hat(S) = (Z Z^T + m tau I_m)^{-1} Z y``, shape (..., m).

    ``Z`` (m, N) are the features of the labelled tokens in the order of the labels ``y`` (..., N). This is
    :func:`icllib.kernels.ridge_coefficients` with Theorem 2's regularisation ``m tau`` (``tau = 0``: the
    minimum-norm least-squares limit).
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    tau = check_float("tau", tau, minimum=0.0)
    return kernels.ridge_coefficients(Z, y, Z.shape[0] * tau)


def ridge_encoder(Z, tau: float) -> torch.Tensor:
    """The linear map of (B1), ``R = (Z Z^T + m tau I_m)^{-1} Z`` (m, N), so that ``lambda_hat = R y``.

    ``tau = 0`` gives the limit ``pinv(Z^T)``. Float64 unless ``Z`` is float32.
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    tau = check_float("tau", tau, minimum=0.0)
    # The rows of R^T are lambda_hat of the unit label vectors e_1..e_N.
    return lambda_hat(Z, torch.eye(Z.shape[1], dtype=Z.dtype), tau).T.contiguous()


def kernel_projector(Z, rtol: float = 1e-10) -> torch.Tensor:
    """Orthogonal projector (N, N) onto ker(Z) = {c in R^N : Z c = 0}, the label combinations that no task sees.

    Labels are ``y = Z^T lambda + noise``, so ``P_ker y = P_ker noise``: these N - rank(Z) directions carry noise
    only, and ``R P_ker = 0`` (lambda_hat ignores them). Singular values below ``rtol * sigma_max`` count as zero.
    """
    Z = as_float_tensor("Z", Z, ndim=2)
    rtol = check_float("rtol", rtol, minimum=0.0, maximum=1.0)
    Z64 = Z.double()
    _, s, Vh = torch.linalg.svd(Z64, full_matrices=True)
    rank = int((s > rtol * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    null = Vh[rank:]  # (N - rank, N), orthonormal rows spanning ker(Z)
    return (null.T @ null).to(Z.dtype)


def _unseen_block(A_tilde, Z_all, n_labeled: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2)
    m, K = Z_all.shape
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=K - 1)
    A_tilde = as_float_tensor("A_tilde", A_tilde, ndim=2)
    if tuple(A_tilde.shape) != (n_labeled, K):
        raise ValueError(f"A_tilde must have shape (N, K) = ({n_labeled}, {K}), got {tuple(A_tilde.shape)}")
    return A_tilde.double(), Z_all.double(), n_labeled


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
    A64, Z64, N = _unseen_block(A_tilde, Z_all, n_labeled)
    tau = check_float("tau", tau, minimum=0.0)
    m = Z64.shape[0]
    Z, Z_Q = Z64[:, :N], Z64[:, N:]
    A_Q = A64[:, N:]
    R = ridge_encoder(Z, tau)
    P_ker = kernel_projector(Z)
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
    A64, Z64, N = _unseen_block(A_tilde, Z_all, n_labeled)
    y_context = as_float_tensor("y_context", y_context)
    y_source = as_float_tensor("y_source", y_source)
    for name, value in (("y_context", y_context), ("y_source", y_source)):
        if value.ndim < 1 or value.shape[-1] != N:
            raise ValueError(f"{name} must have shape (..., N) with N = n_labeled = {N}, got {tuple(value.shape)}")
    fac = factor_through_lambda_hat(A64, Z64, N, tau)
    theta = lambda_hat(Z64[:, :N], y_source.double(), tau)
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
    y = as_float_tensor("y", y)
    if y.ndim < 1 or y.shape[-1] != Z.shape[1]:
        raise ValueError(f"y must have shape (..., N) with N = {Z.shape[1]} (columns of Z), got {tuple(y.shape)}")
    check_generator("generator", generator)
    scale = check_float("scale", scale, minimum=0.0)
    xi = torch.randn(*y.shape, generator=generator, dtype=torch.float64) * scale
    return (y.double() + xi @ kernel_projector(Z.double())).to(y.dtype)


# --------------------------------------------------------------------------------------------------------------------
# 2. Template-regression prompts as sequences (Chapter 10)
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequenceLayout:
    """How a template-regression prompt becomes a sequence of real vectors, one per position.

    The prompt ``S = ((x_1, y_1), ..., (x_n, y_n))`` and a query ``x`` are written like the text prompts of Part II
    (``x -> y`` lines, then ``x ->``): an optional BOS position, then three positions per demonstration (the token,
    an arrow, the label) and two for the query (the token, an arrow)::

        [BOS] x_1 -> y_1  x_2 -> y_2  ...  x_n -> y_n  x ->

    Each position is a vector ``[x; y; flags]`` in R^{d_token + 1 + 4}: the token ``x`` in the first ``d_token``
    coordinates (zero elsewhere), the label in the next one (zero elsewhere), and a one-hot flag saying what the
    position is (BOS, token, arrow, label). A model predicts the label of the token before each arrow *at* the arrow,
    so every arrow is a query and the last position is the one whose state is the task vector (Hendel et al.). The
    explicit flags keep an empty label slot from being confused with a label equal to 0.
    """

    d_token: int
    bos: bool = True

    FLAGS = ("bos", "token", "arrow", "label")

    def __post_init__(self) -> None:
        check_int("d_token", self.d_token, minimum=1)
        if not isinstance(self.bos, bool):
            raise TypeError(f"bos must be a bool, got {self.bos!r}")

    @property
    def d_input(self) -> int:
        """Width of one position's vector, d_token + 1 + 4."""
        return self.d_token + 1 + len(self.FLAGS)

    def length(self, n_demos: int) -> int:
        """Number of positions of a prompt with ``n_demos`` demonstrations and one query: 3 n + 2 (+1 with BOS)."""
        n_demos = check_int("n_demos", n_demos, minimum=0)
        return 3 * n_demos + 2 + int(self.bos)

    def arrow_positions(self, n_demos: int) -> torch.Tensor:
        """Positions of the n + 1 arrows (where labels are predicted), the last one being the query's."""
        n_demos = check_int("n_demos", n_demos, minimum=0)
        return int(self.bos) + 1 + 3 * torch.arange(n_demos + 1)

    def flag(self, name: str) -> int:
        """Channel index of a flag (``"bos"``, ``"token"``, ``"arrow"`` or ``"label"``)."""
        if name not in self.FLAGS:
            raise ValueError(f"name must be one of {list(self.FLAGS)}, got {name!r}")
        return self.d_token + 1 + self.FLAGS.index(name)


def _check_index(name: str, index, shape: tuple[int, ...] | None, high: int) -> torch.Tensor:
    if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer torch tensor of token indices, got {index!r:.60}")
    if shape is not None and tuple(index.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(index.shape)}")
    if index.numel() and (index.min() < 0 or index.max() >= high):
        raise ValueError(f"{name} must hold token indices in [0, {high}), got range [{int(index.min())}, "
                         f"{int(index.max())}]")
    return index.long()


def _check_n_shown(n_shown, n: int, N: int) -> torch.Tensor:
    if not isinstance(n_shown, torch.Tensor) or n_shown.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"n_shown must be an integer torch tensor of demonstration counts, got {n_shown!r:.60}")
    if tuple(n_shown.shape) != (n,):
        raise ValueError(f"n_shown must have shape (n,) = ({n},), got {tuple(n_shown.shape)}")
    if n_shown.numel() and (n_shown.min() < 0 or n_shown.max() > N):
        raise ValueError(f"n_shown must hold counts in [0, N={N}], got range [{int(n_shown.min())}, "
                         f"{int(n_shown.max())}]")
    return n_shown.long()


def write_sequences(tokens, demo_index, y, query_index, bos: bool = True, n_shown=None) -> torch.Tensor:
    """Write prompts as sequences (see :class:`SequenceLayout`): shape (n, 3 N + 2 + bos, d + 5).

    ``tokens`` (K, d) is the dictionary; ``demo_index`` (n, N) the token of each demonstration (N = 0 gives the
    bare query ``[BOS] x ->`` that a task vector is patched into); ``y`` (n, N) their labels; ``query_index`` (n,)
    the query token. The output has the dtype of ``tokens``.

    ``n_shown`` (n,) (optional, integers in 0..N): prompt i shows only its first ``n_shown[i]`` demonstrations,
    then its query, then all-zero padding up to the common length 3 N + 2 + bos. Padding sits *after* the query, so
    a causal model's outputs up to the query arrow are those of the unpadded prompt; the arrows stay at
    :meth:`SequenceLayout.arrow_positions` ``(N)``, prompt i's query arrow being number ``n_shown[i]``. With
    ``n_shown[i] = 0`` the row starts with the bare query ``[BOS] x ->``.
    """
    tokens = as_float_tensor("tokens", tokens, ndim=2)
    K, d = tokens.shape
    if not isinstance(demo_index, torch.Tensor) or demo_index.ndim != 2:
        raise ValueError(f"demo_index must be an integer tensor of shape (n, N), got {demo_index!r:.60}")
    n, N = demo_index.shape
    demo_index = _check_index("demo_index", demo_index, (n, N), K)
    query_index = _check_index("query_index", query_index, (n,), K)
    y = as_float_tensor("y", y, ndim=2)
    if tuple(y.shape) != (n, N):
        raise ValueError(f"y must have shape (n, N) = ({n}, {N}) like demo_index, got {tuple(y.shape)}")
    layout = SequenceLayout(d, bos)
    out = tokens.new_zeros(n, layout.length(N), layout.d_input)
    start = int(bos)
    if bos:
        out[:, 0, layout.flag("bos")] = 1.0
    token_pos = start + 3 * torch.arange(N)
    out[:, token_pos, :d] = tokens[demo_index]
    out[:, token_pos, layout.flag("token")] = 1.0
    out[:, token_pos + 1, layout.flag("arrow")] = 1.0
    out[:, token_pos + 2, d] = y.to(tokens.dtype)
    out[:, token_pos + 2, layout.flag("label")] = 1.0
    if n_shown is None:
        out[:, -2, :d] = tokens[query_index]
        out[:, -2, layout.flag("token")] = 1.0
        out[:, -1, layout.flag("arrow")] = 1.0
        return out
    n_shown = _check_n_shown(n_shown, n, N)
    # Blank everything from prompt i's query on (the demonstrations it does not show become padding), then write
    # its query token and arrow where its (n_shown[i] + 1)-th demonstration would start.
    positions = torch.arange(layout.length(N))
    query_pos = start + 3 * n_shown  # (n,)
    out[positions[None, :] >= query_pos[:, None]] = 0.0
    rows = torch.arange(n)
    out[rows, query_pos, :d] = tokens[query_index]
    out[rows, query_pos, layout.flag("token")] = 1.0
    out[rows, query_pos + 1, layout.flag("arrow")] = 1.0
    return out


@dataclass
class SequenceBatch:
    """Sampled template-regression prompts written as sequences, with everything the chapters compare against.

    ``inputs`` (n, T, d + 5) the sequences (:func:`write_sequences`); ``targets`` (n, N + 1) the label to predict at
    each arrow (the N demonstration labels, then the query's own noisy label ``y_q``); ``demo_index`` (n, N) and
    ``query_index`` (n,) token indices; ``y`` (n, N) the shown labels in sequence order; ``y_all`` (n, K) the noisy
    labels of all tokens; ``lam`` (n, m) the tasks; ``lambda_hat`` (n, m) the closed-form task vectors (B1);
    ``ridge`` (n,) Theorem 2's prediction for the query, ``z_q^T lambda_hat``.

    Prompts of different lengths (``n_shown`` (n,), from ``sample_sequences(..., min_demos=...)``): prompt i shows
    its first ``n_shown[i]`` demonstrations and is right-padded (:func:`write_sequences`); ``targets[i, j]`` is
    ``y_j`` for ``j < n_shown[i]``, ``y_q`` at ``j = n_shown[i]`` and 0 (unused, see :attr:`arrow_mask`) after;
    ``lambda_hat`` and ``ridge`` are those of the shown demonstrations. ``n_shown = None``: every prompt shows all.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    demo_index: torch.Tensor
    query_index: torch.Tensor
    y: torch.Tensor
    y_all: torch.Tensor
    lam: torch.Tensor
    lambda_hat: torch.Tensor
    ridge: torch.Tensor
    bos: bool = True
    n_shown: torch.Tensor | None = None

    @property
    def n_prompts(self) -> int:
        return self.inputs.shape[0]

    @property
    def shown(self) -> torch.Tensor:
        """Number of demonstrations each prompt shows, (n,) (all N unless the batch has several lengths)."""
        if self.n_shown is None:
            return torch.full((self.n_prompts,), self.demo_index.shape[1], dtype=torch.long)
        return self.n_shown

    @property
    def arrow_mask(self) -> torch.Tensor:
        """Which arrows hold a real prediction (the shown demonstrations' and the query's), a bool tensor (n, N + 1)."""
        return torch.arange(self.demo_index.shape[1] + 1)[None, :] <= self.shown[:, None]

    @property
    def query_positions(self) -> torch.Tensor:
        """Position of each prompt's query arrow, (n,) (the last position when all prompts show N)."""
        return int(self.bos) + 1 + 3 * self.shown

    def with_queries(self, tokens, query_index) -> torch.Tensor:
        """The same demonstrations with other query tokens ``query_index`` (n,): inputs (n, T, d + 5)."""
        return write_sequences(tokens, self.demo_index, self.y, query_index, self.bos, self.n_shown)

    def bare_queries(self, tokens) -> torch.Tensor:
        """The bare query ``[BOS] x_q ->`` of every prompt (no demonstrations): inputs (n, 2 + bos, d + 5)."""
        empty = self.demo_index[:, :0]
        return write_sequences(tokens, empty, self.y[:, :0], self.query_index, self.bos)


def _check_dictionary(tokens, Z_all) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = as_float_tensor("tokens", tokens, ndim=2)
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2)
    if tokens.shape[0] != Z_all.shape[1]:
        raise ValueError(
            f"tokens (K, d) and Z_all (m, K) must describe the same K tokens, got {tuple(tokens.shape)} and "
            f"{tuple(Z_all.shape)}"
        )
    return tokens, Z_all


def _shown_lambda_hat(Z64, demo_index, y, n_shown, tau: float) -> torch.Tensor:
    """(B1) per prompt with the features of its first ``n_shown[i]`` demonstrations (0 with none), (n, m)."""
    m = Z64.shape[0]
    shown = (torch.arange(demo_index.shape[1])[None, :] < n_shown[:, None]).to(torch.float64)  # (n, N)
    Z_shown = Z64.T[demo_index] * shown[:, :, None]  # (n, N, m) = Z_S^T, hidden demonstrations zeroed
    gram = Z_shown.transpose(1, 2) @ Z_shown + m * tau * torch.eye(m, dtype=torch.float64)
    rhs = Z_shown.transpose(1, 2) @ (y * shown)[:, :, None]
    # tau = 0 with fewer than m demonstrations: the minimum-norm solution, as in ridge_coefficients' limit.
    return (torch.linalg.pinv(gram) @ rhs if tau == 0 else torch.linalg.solve(gram, rhs))[:, :, 0]


def sample_sequences(
    tokens,
    Z_all,
    n_labeled: int,
    tau: float,
    n_prompts: int,
    generator: torch.Generator,
    shuffle: bool = False,
    bos: bool = True,
    distribution="in_domain",
    n_demos: int | None = None,
    min_demos: int | None = None,
) -> SequenceBatch:
    """Draw template-regression prompts (Part I's law) and write them as sequences.

    Labels come from :func:`icllib.prompts.sample_prompts` (``y_k = lambda^T (z_k + eps_k)``); the demonstrations
    are the N labelled tokens of Part I, ``v_1..v_N``, in this order (``shuffle=True``: in a random order per
    prompt), and the query is a token drawn uniformly from the K - N unseen ones. ``n_demos`` (0..N, default N)
    keeps only the first ``n_demos`` demonstrations; ``lambda_hat`` and ``ridge`` are then those of the shown ones
    (0 without any). The output dtype is that of ``tokens``; the closed forms are float64.

    ``min_demos`` (0..n_demos, default None: every prompt shows ``n_demos``): prompts of several lengths in one
    batch. Prompt i shows ``n_i ~ Uniform{min_demos, ..., n_demos}`` demonstrations (drawn after everything else,
    so the labels, orders and queries are those of the fixed-length batch from the same generator state) and is
    right-padded to ``3 n_demos + 2 + bos`` positions (:func:`write_sequences`); ``min_demos = 0`` puts the bare
    query ``[BOS] x ->`` into the sample, where the best prediction is the prior mean 0.
    """
    tokens, Z_all = _check_dictionary(tokens, Z_all)
    m, K = Z_all.shape
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=K - 1)
    tau = check_float("tau", tau, minimum=0.0)
    n_prompts = check_int("n_prompts", n_prompts, minimum=1)
    check_generator("generator", generator)
    for name, value in (("shuffle", shuffle), ("bos", bos)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, got {value!r}")
    n_demos = n_labeled if n_demos is None else check_int("n_demos", n_demos, minimum=0, maximum=n_labeled)
    if min_demos is not None:
        min_demos = check_int("min_demos", min_demos, minimum=0, maximum=n_demos)
    Z64 = Z_all.double()
    prompts = sample_prompts(Z64, n_labeled, tau, n_prompts, generator, distribution=distribution)
    if shuffle:
        demo_index = torch.argsort(torch.rand(n_prompts, n_labeled, generator=generator), dim=1)
    else:
        demo_index = torch.arange(n_labeled).expand(n_prompts, -1).clone()
    demo_index = demo_index[:, :n_demos]
    query_index = torch.randint(n_labeled, K, (n_prompts,), generator=generator)
    y = prompts.y_all.gather(1, demo_index)
    n_shown = None
    if min_demos is not None:
        n_shown = torch.randint(min_demos, n_demos + 1, (n_prompts,), generator=generator)
        theta = _shown_lambda_hat(Z64, demo_index, y, n_shown, tau)
    elif n_demos == n_labeled:
        theta = lambda_hat(Z64[:, :n_labeled], prompts.y, tau)  # order-free: (B1) with Part I's Z
    elif n_demos == 0:
        theta = Z64.new_zeros(n_prompts, m)
    else:  # (B1) with the features of the shown tokens, one small solve per prompt
        theta = _shown_lambda_hat(Z64, demo_index, y, torch.full((n_prompts,), n_demos), tau)
    ridge = (theta * Z64[:, query_index].T).sum(-1)
    y_query = prompts.y_all.gather(1, query_index[:, None])
    targets = torch.cat([y, y_query], dim=1)
    if n_shown is not None:  # prompt i's query label sits at its arrow n_i; later arrows are padding
        arrows = torch.arange(n_demos + 1)[None, :]
        targets = torch.where(arrows < n_shown[:, None], targets, 0.0)
        targets[torch.arange(n_prompts), n_shown] = y_query[:, 0]
    return SequenceBatch(
        inputs=write_sequences(tokens, demo_index, y.to(tokens.dtype), query_index, bos, n_shown),
        targets=targets.to(tokens.dtype),
        demo_index=demo_index,
        query_index=query_index,
        y=y.to(tokens.dtype),
        y_all=prompts.y_all,
        lam=prompts.lam,
        lambda_hat=theta,
        ridge=ridge,
        bos=bos,
        n_shown=n_shown,
    )


def sample_dummy_queries(query_index, n_labeled: int, n_tokens: int, n_dummies: int, generator: torch.Generator):
    """Dummy queries x' for the task vector (Hendel et al.): ``n_dummies`` distinct unseen tokens per prompt, none
    equal to the real query. ``query_index`` (n,); returns (n, n_dummies) token indices in [N, K)."""
    n_tokens = check_int("n_tokens", n_tokens, minimum=2)
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=n_tokens - 1)
    n_dummies = check_int("n_dummies", n_dummies, minimum=1)
    check_generator("generator", generator)
    if not isinstance(query_index, torch.Tensor) or query_index.ndim != 1:
        raise ValueError(f"query_index must be an integer tensor of shape (n,), got {query_index!r:.60}")
    query_index = _check_index("query_index", query_index, None, n_tokens)
    n_unseen = n_tokens - n_labeled
    if n_dummies + 1 > n_unseen:
        raise ValueError(
            f"n_dummies={n_dummies} plus the query need {n_dummies + 1} distinct unseen tokens, but only "
            f"K - N = {n_unseen} exist"
        )
    # Rank the unseen tokens by random keys, the real query pushed last, and keep the first n_dummies.
    keys = torch.rand(len(query_index), n_unseen, generator=generator)
    rows = torch.arange(len(query_index))
    own = query_index - n_labeled
    inside = (own >= 0) & (own < n_unseen)
    keys[rows[inside], own[inside]] = 2.0
    return n_labeled + torch.argsort(keys, dim=1)[:, :n_dummies]


# --------------------------------------------------------------------------------------------------------------------
# 3. Training the causal transformer on sequences
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class SequenceHistory:
    """What :func:`train_sequence_model` recorded at each evaluation (lists of equal length).

    ``train_loss``: mean training objective since the previous evaluation; ``query_mse``: mean squared error of
    the prediction at the query arrow against the query's noisy label ``y_q`` on fixed evaluation prompts;
    ``ridge_mse``: against Theorem 2's prediction ``z_q^T lambda_hat`` (how far the model is from the closed form);
    ``ridge_floor``: the ridge prediction's own error against ``y_q``; ``zero_mse``: that of predicting 0;
    ``bare_mse``: the mean square of the read-out at the bare query ``[BOS] x_q ->`` of the same prompts (its
    distance from the prior mean 0, the best answer without demonstrations).
    """

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    query_mse: list[float] = field(default_factory=list)
    ridge_mse: list[float] = field(default_factory=list)
    bare_mse: list[float] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)
    ridge_floor: float = float("nan")
    zero_mse: float = float("nan")
    config: dict = field(default_factory=dict)


def sequence_predictions(model: nn.Module, inputs, batch_size: int = 4096) -> torch.Tensor:
    """The model's read-out at the last position of every sequence, shape (n,) (the answer to the query)."""
    batch_size = check_int("batch_size", batch_size, minimum=1)
    out = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            out.append(model(inputs[start : start + batch_size])[:, -1, 0])
    return torch.cat(out)


def _arrow_loss(out: torch.Tensor, batch: SequenceBatch, query_weight: float) -> torch.Tensor:
    """(ch10-loss) from the read-outs at the N + 1 arrow positions, (n, N + 1): demonstration arrows and query."""
    if batch.n_shown is None:  # every prompt shows all N: the query is the last arrow
        query_loss = ((out[:, -1] - batch.targets[:, -1]) ** 2).mean()
        demo_loss = ((out[:, :-1] - batch.targets[:, :-1]) ** 2).mean()
        return (1 - query_weight) * demo_loss + query_weight * query_loss
    rows = torch.arange(out.shape[0])
    query_loss = ((out[rows, batch.n_shown] - batch.targets[rows, batch.n_shown]) ** 2).mean()
    demo = batch.arrow_mask.clone()
    demo[rows, batch.n_shown] = False  # the arrows before prompt i's query; padding arrows are never scored
    n_demo = int(demo.sum())
    if n_demo == 0:  # only bare queries in this batch
        return query_weight * query_loss
    demo_loss = (((out - batch.targets) ** 2) * demo).sum() / n_demo
    return (1 - query_weight) * demo_loss + query_weight * query_loss


def train_sequence_model(
    model: nn.Module,
    tokens,
    Z_all,
    n_labeled: int,
    tau: float,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    *,
    generator: torch.Generator,
    query_weight: float = 0.5,
    shuffle: bool = False,
    bos: bool = True,
    min_demos: int | None = None,
    warmup: int = 100,
    weight_decay: float = 0.0,
    eval_every: int = 100,
    n_eval: int = 1000,
    progress: bool = True,
) -> SequenceHistory:
    """Train a causal sequence model (e.g. :class:`icllib.models.causal.CausalTransformer`) on fresh prompts.

    Each step draws ``batch_size`` new prompts (:func:`sample_sequences`) and takes an AdamW step on

        loss = (1 - w) * mean_{i <= N} (out_{arrow_i} - y_i)^2 + w * mean (out_{arrow_q} - y_q)^2,   w = query_weight,

    the squared error at every arrow: the demonstration arrows (predict ``y_i`` from the ``i - 1`` labels before
    it) and the query arrow (predict the unseen token's label from all demonstrations). With ``min_demos`` every
    prompt draws its own number of demonstrations uniformly from ``min_demos..N`` (right-padded batches of
    :func:`sample_sequences`; the mean over demonstration arrows runs over the shown ones, the query term over each
    prompt's own query arrow), so short prompts, down to the bare query ``[BOS] x ->`` (``min_demos = 0``), are
    trained cases too; by default every prompt shows all N. The learning rate warms up linearly over
    ``warmup`` steps, then follows a cosine down to ``lr / 10``. ``n_eval`` fixed full-length prompts (drawn first from
    ``generator``) give the curves of :class:`SequenceHistory`. The model is updated in place.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tokens, Z_all = _check_dictionary(tokens, Z_all)
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=Z_all.shape[1] - 1)
    tau = check_float("tau", tau, minimum=0.0)
    steps = check_int("steps", steps, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    check_generator("generator", generator)
    query_weight = check_float("query_weight", query_weight, minimum=0.0, maximum=1.0)
    warmup = check_int("warmup", warmup, minimum=0)
    if min_demos is not None:
        min_demos = check_int("min_demos", min_demos, minimum=0, maximum=n_labeled)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    eval_every = check_int("eval_every", eval_every, minimum=1)
    n_eval = check_int("n_eval", n_eval, minimum=2)
    dtype = next(model.parameters()).dtype
    tokens = tokens.to(dtype)
    d_input = getattr(model, "d_input", None)
    if d_input is not None and d_input != SequenceLayout(tokens.shape[1], bos).d_input:
        raise ValueError(
            f"model reads vectors of width {d_input} but the sequences have width "
            f"{SequenceLayout(tokens.shape[1], bos).d_input} (d_token + 5); build it with that d_input"
        )

    evaluation = sample_sequences(tokens, Z_all, n_labeled, tau, n_eval, generator, shuffle, bos)
    y_q = evaluation.targets[:, -1].double()
    history = SequenceHistory(
        ridge_floor=float(((evaluation.ridge - y_q) ** 2).mean()),
        zero_mse=float((y_q**2).mean()),
        config={"lr": lr, "batch_size": batch_size, "query_weight": query_weight, "warmup": warmup,
                "weight_decay": weight_decay, "shuffle": shuffle, "bos": bos, "tau": tau,
                "min_demos": min_demos},
    )
    bare_inputs = evaluation.bare_queries(tokens)
    layout = SequenceLayout(tokens.shape[1], bos)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)

    def record(step: int, train_loss: float, elapsed: float) -> None:
        was_training = model.training
        model.eval()
        pred = sequence_predictions(model, evaluation.inputs).double()
        bare = sequence_predictions(model, bare_inputs).double()
        model.train(was_training)
        history.step.append(step)
        history.train_loss.append(train_loss)
        history.query_mse.append(float(((pred - y_q) ** 2).mean()))
        history.ridge_mse.append(float(((pred - evaluation.ridge) ** 2).mean()))
        history.bare_mse.append(float((bare**2).mean()))
        history.elapsed_s.append(elapsed)

    record(0, float("nan"), 0.0)
    model.train()
    elapsed, running, count = 0.0, 0.0, 0
    bar = tqdm(range(steps), disable=not progress, leave=False, desc="causal transformer")
    arrows = layout.arrow_positions(n_labeled)
    for step in bar:
        batch = sample_sequences(tokens, Z_all, n_labeled, tau, batch_size, generator, shuffle, bos,
                                 min_demos=min_demos)
        start = time.perf_counter()
        loss = _arrow_loss(model(batch.inputs)[:, arrows, 0], batch, query_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        elapsed += time.perf_counter() - start
        running, count = running + float(loss.detach()), count + 1
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            record(step + 1, running / count, elapsed)
            bar.set_postfix(query=f"{history.query_mse[-1]:.3f}", ridge=f"{history.ridge_mse[-1]:.3f}",
                            refresh=False)
            running, count = 0.0, 0
    model.eval()
    return history


# --------------------------------------------------------------------------------------------------------------------
# 4. Part II's protocol on sequences of vectors: a thin adapter over icllib.task_vectors' hooks
# --------------------------------------------------------------------------------------------------------------------
def _model_layers(model) -> int:
    from icllib.llm import model_parts

    return model_parts(model).n_layers


def sequence_task_vectors(model: nn.Module, dummy_inputs, layers=None) -> torch.Tensor:
    """``theta_l(S)`` of every prompt at every block: the last-position state after block l, averaged over dummies.

    ``dummy_inputs`` is a list of input batches (n, T, d_in), one per dummy query ``x'`` (the same demonstrations,
    a different query: :meth:`SequenceBatch.with_queries`), or one tensor (n_dummies, n, T, d_in). The states are
    read with :func:`icllib.task_vectors.capture_last_position` (0-based block indices, as in Part II). Returns
    (n, len(layers), d_model) in the model's dtype (all L blocks by default).
    """
    from icllib.task_vectors import capture_last_position

    if isinstance(dummy_inputs, torch.Tensor):
        if dummy_inputs.ndim != 4:
            raise ValueError(f"dummy_inputs must be (n_dummies, n, T, d_in) or a list of (n, T, d_in), "
                             f"got shape {tuple(dummy_inputs.shape)}")
        dummy_inputs = list(dummy_inputs)
    if not isinstance(dummy_inputs, (list, tuple)) or len(dummy_inputs) == 0:
        raise ValueError("dummy_inputs must be a non-empty list of input batches (one per dummy query)")
    n_layers = _model_layers(model)
    layers = list(range(n_layers)) if layers is None else [check_int("layers[i]", l, 0, n_layers - 1) for l in layers]
    total = None
    for inputs in dummy_inputs:
        with torch.no_grad(), capture_last_position(model, layers) as store:
            model(inputs)
        states = torch.stack([store[l] for l in layers], dim=1)
        total = states if total is None else total + states
    return total / len(dummy_inputs)


def sequence_patched_outputs(
    model: nn.Module, inputs, theta, layers=None, mode: str = "replace", max_rows: int = 8192
) -> torch.Tensor:
    """Read-outs at the last position with that position's state replaced after block l: (n, len(layers)).

    ``out[i, k]`` runs ``inputs[i]`` (the bare query, usually) with ``theta[i, k]`` written over the last position
    after block ``layers[k]`` (:func:`icllib.task_vectors.patch_last_position`, ``mode="replace"`` as in Hendel et
    al.; ``"add"`` adds it). ``theta`` is (n, len(layers), d_model) or (n, L, d_model) (all blocks, the ones in
    ``layers`` used). All layers run in one batch: row ``i * len(layers) + k`` is patched at block ``layers[k]``
    (:func:`icllib.task_vectors.layer_patches`), so ``layers`` must not repeat.
    """
    from icllib.task_vectors import layer_patches, patch_last_position

    inputs = as_float_tensor("inputs", inputs, ndim=3)
    n_layers = _model_layers(model)
    layers = list(range(n_layers)) if layers is None else [check_int("layers[i]", l, 0, n_layers - 1) for l in layers]
    max_rows = check_int("max_rows", max_rows, minimum=1)
    theta = as_float_tensor("theta", theta, ndim=3)
    if theta.shape[0] != inputs.shape[0]:
        raise ValueError(f"theta must have one row per input ({inputs.shape[0]}), got {tuple(theta.shape)}")
    if theta.shape[1] == n_layers and len(layers) != n_layers:
        theta = theta[:, layers]
    if theta.shape[1] != len(layers):
        raise ValueError(f"theta must hold len(layers)={len(layers)} or L={n_layers} vectors per row, "
                         f"got {tuple(theta.shape)}")
    n, k_count = inputs.shape[0], len(layers)
    per_chunk = max(1, max_rows // k_count)
    out = []
    for start in range(0, n, per_chunk):
        rows = slice(start, min(start + per_chunk, n))
        x = inputs[rows].repeat_interleave(k_count, 0)
        patches = layer_patches(x.shape[0] // k_count, theta[rows], layers)  # row i * K + k: block layers[k]
        with torch.no_grad(), patch_last_position(model, patches, mode):
            out.append(model(x)[:, -1, 0].reshape(-1, k_count))
    return torch.cat(out)


@dataclass
class LayerSweep:
    """Part II's protocol on one set of prompts: zero-shot, ICL and task-vector predictions at every block.

    ``theta`` (n, L, d_model): task vectors (mean over ``n_dummies`` dummy queries); ``patched`` (n, L): the bare
    query's read-out with ``theta_l`` patched after block l; ``icl`` (n,): the full prompt ``[S, x]``; ``zero_shot``
    (n,): the bare query alone; ``ridge`` (n,): Theorem 2's ``z_q^T lambda_hat``; ``y_query`` (n,): the query's noisy
    label; ``lambda_hat`` (n, m).
    """

    theta: torch.Tensor
    patched: torch.Tensor
    icl: torch.Tensor
    zero_shot: torch.Tensor
    ridge: torch.Tensor
    y_query: torch.Tensor
    lambda_hat: torch.Tensor

    def error(self, predictions, reference: str = "ridge") -> torch.Tensor:
        """Mean squared error of ``predictions`` (n,) or (n, L) against ``"ridge"`` or the noisy label ``"label"``,
        divided by the mean square of the reference (so predicting 0 scores about 1)."""
        if reference not in ("ridge", "label"):
            raise ValueError(f"reference must be 'ridge' or 'label', got {reference!r}")
        ref = (self.ridge if reference == "ridge" else self.y_query).double()
        pred = as_float_tensor("predictions", predictions, ndim=(1, 2)).double()
        if pred.shape[0] != ref.shape[0]:
            raise ValueError(f"predictions must have {ref.shape[0]} rows, got {tuple(pred.shape)}")
        if pred.ndim == 2:
            ref = ref[:, None]
        return ((pred - ref) ** 2).mean(0) / (ref**2).mean()

    @property
    def patched_error(self) -> torch.Tensor:
        """Relative error of the patched predictions against ridge, per block (L,)."""
        return self.error(self.patched)

    @property
    def best_layer(self) -> int:
        """First minimum of :attr:`patched_error` (the paper's first maximum of accuracy)."""
        return int(torch.argmin(self.patched_error))


def layer_sweep(model: nn.Module, tokens, batch: SequenceBatch, dummy_index) -> LayerSweep:
    """Run Part II's protocol on sequence prompts (Hendel et al., Section 3), unchanged, at every block.

    ``batch`` from :func:`sample_sequences`, ``dummy_index`` (n, n_dummies) from :func:`sample_dummy_queries`:
    theta_l(S) is read at the last position of ``[S, x']`` for each dummy ``x'`` and averaged; it replaces the last
    position of the bare query ``[BOS] x ->`` after block l; the read-out there is the task-vector prediction.
    """
    if not isinstance(batch, SequenceBatch):
        raise TypeError(f"batch must be a SequenceBatch (see sample_sequences), got {type(batch).__name__}")
    if not isinstance(dummy_index, torch.Tensor) or dummy_index.ndim != 2 or dummy_index.shape[0] != batch.n_prompts:
        raise ValueError(f"dummy_index must be an integer tensor (n={batch.n_prompts}, n_dummies), "
                         f"got {dummy_index!r:.60}")
    dtype = next(model.parameters()).dtype
    tokens = as_float_tensor("tokens", tokens, ndim=2, dtype=dtype)
    dummies = [batch.with_queries(tokens, dummy_index[:, j]) for j in range(dummy_index.shape[1])]
    theta = sequence_task_vectors(model, dummies)
    bare = batch.bare_queries(tokens)
    return LayerSweep(
        theta=theta,
        patched=sequence_patched_outputs(model, bare, theta),
        icl=sequence_predictions(model, batch.inputs.to(dtype)),
        zero_shot=sequence_predictions(model, bare),
        ridge=batch.ridge,
        y_query=batch.targets[:, -1].double(),
        lambda_hat=batch.lambda_hat,
    )
