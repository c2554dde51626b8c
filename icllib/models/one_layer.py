"""The one-layer multi-head softmax-attention transformer of Yang, Huang, Liang & Chi (2024).

Read top to bottom: the general form of one attention layer (every head has its own W_Q, W_K, W_V, an output matrix
W^O mixes them), then the parameterisation the paper analyses and trains (:class:`OneLayerMultiHead`), and the map
that writes the second as an instance of the first.

Notation (the book's, after the paper): the dictionary holds K tokens v_1..v_K in R^d, the first N of them are
labelled in the prompt, V = (v_1..v_N) in R^{d x N}, y in R^N are their labels. A head h with key-query matrix
Q_h in R^{d x d} attends from token v_k to the prompt with the weights

    s_k^h = softmax(V^T Q_h v_k) in R^N                                  (softmax over the N prompt positions)

and the layer predicts the label of every token k = 1..K as

    yhat_k = y^T a_k,    a_k = sum_h w_{h,k} s_k^h,                      (paper, eq. for the model; Section 2)

so yhat = A_tilde(theta)^T y with A_tilde = (a_1..a_K) in R^{N x K}. Trainable: theta = (Q_1..Q_H, w_1..w_H).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icllib._checks import as_float_tensor, check_float, check_float_dtype, check_generator, check_int

__all__ = ["GeneralFormWeights", "OneLayerMultiHead", "general_form_predictions"]


# --------------------------------------------------------------------------------------------------------------------
# 1. The general form of one multi-head softmax attention layer
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class GeneralFormWeights:
    """Weights of one attention layer in its general form, acting on columns of E = [v; y] in R^{d+1}.

    ``W_Q``, ``W_K``, ``W_V``: (H, d+1, d+1), one matrix per head. ``W_O``: (K, H (d+1)), the output matrix applied to
    the stacked heads. There is no 1/sqrt(d) scaling (the paper's choice: the scale lives in W_Q).
    """

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor


def general_form_predictions(
    weights: GeneralFormWeights, tokens: torch.Tensor, y: torch.Tensor, n_labeled: int
) -> torch.Tensor:
    """Predictions of the general one-layer transformer, T(E) = W^O [head_1(E); ...; head_H(E)].

    With the prompt E_P = [V; y^T] in R^{(d+1) x N} and the queries E_Q = [v_1..v_K; 0] in R^{(d+1) x K},

        head_h(E) = W_V^h E_P softmax((W_K^h E_P)^T W_Q^h E_Q)      in R^{(d+1) x K},  softmax over the N rows,

    T(E) = W^O [head_1; ...; head_H] in R^{K x K}, and the prediction for token k is the diagonal entry T(E)_{k,k}
    (the output row k of W^O reads the query column k). ``tokens``: (K, d); ``y``: (..., N). Returns (..., K).
    """
    tokens = as_float_tensor("tokens", tokens, ndim=2)
    n_tokens, dim = tokens.shape
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=n_tokens - 1)
    y = as_float_tensor("y", y, dtype=tokens.dtype)
    if y.ndim < 1 or y.shape[-1] != n_labeled:
        raise ValueError(f"y must have shape (..., n_labeled={n_labeled}), got {tuple(y.shape)}")
    if not isinstance(weights, GeneralFormWeights):
        raise TypeError(f"weights must be a GeneralFormWeights, got {type(weights).__name__}")
    W_Q, W_K, W_V = (as_float_tensor(f"weights.{n}", getattr(weights, n), ndim=3, dtype=tokens.dtype)
                     for n in ("W_Q", "W_K", "W_V"))
    W_O = as_float_tensor("weights.W_O", weights.W_O, ndim=2, dtype=tokens.dtype)
    n_heads = W_Q.shape[0]
    for name, mat in (("W_Q", W_Q), ("W_K", W_K), ("W_V", W_V)):
        if tuple(mat.shape) != (n_heads, dim + 1, dim + 1):
            raise ValueError(f"weights.{name} must have shape {(n_heads, dim + 1, dim + 1)}, got {tuple(mat.shape)}")
    if tuple(W_O.shape) != (n_tokens, n_heads * (dim + 1)):
        raise ValueError(f"weights.W_O must have shape {(n_tokens, n_heads * (dim + 1))}, got {tuple(W_O.shape)}")

    batch = y.shape[:-1]
    V = tokens[:n_labeled]  # (N, d)
    E_P = torch.cat([V.expand(*batch, -1, -1), y.unsqueeze(-1)], dim=-1).transpose(-1, -2)  # (..., d+1, N)
    E_Q = torch.cat([tokens, tokens.new_zeros(n_tokens, 1)], dim=1).T  # (d+1, K): the query label slot is empty
    # Head-major batch: (..., H, d+1, N) for keys and values, (H, d+1, K) for the queries.
    K_P = torch.einsum("hij,...jn->...hin", W_K, E_P)
    V_P = torch.einsum("hij,...jn->...hin", W_V, E_P)
    Q_Q = torch.einsum("hij,jk->hik", W_Q, E_Q)
    scores = torch.einsum("...hin,hik->...hnk", K_P, Q_Q)  # (..., H, N, K)
    heads = V_P @ torch.softmax(scores, dim=-2)  # (..., H, d+1, K)
    stacked = heads.reshape(*batch, n_heads * (dim + 1), n_tokens)  # [head_1; ...; head_H]
    # Diagonal of W^O @ stacked without forming the K x K matrix.
    return torch.einsum("kj,...jk->...k", W_O, stacked)


# --------------------------------------------------------------------------------------------------------------------
# 2. The parameterisation the paper analyses and trains
# --------------------------------------------------------------------------------------------------------------------
class OneLayerMultiHead(nn.Module):
    """One softmax-attention layer with H heads, predicting the labels of all K dictionary tokens (Yang et al. 2024).

    Parameters ``Q`` (H, d, d) and ``w`` (H, K). Initialisation as in the paper's Theorem 1: w = 0 (so the first
    predictions are 0) and Q with i.i.d. N(0, beta^2) entries, ``beta = init_scale``. Calling the model on labels
    y (..., N) returns yhat (..., K) = y @ A_tilde(theta).

    Args:
        tokens: the dictionary (K, d), rows v_1..v_K; the first ``n_labeled`` rows are the prompt tokens.
        n_labeled: N, the number of labelled tokens (1 <= N < K).
        n_heads: H >= 1 (the theory needs H >= N for full-rank head matrices B_k).
        generator: the source of the random initialisation of Q.
        init_scale: beta > 0, the standard deviation of the entries of Q at initialisation.
        dtype: float64 (default; the convergence chapters need it) or float32.
    """

    def __init__(
        self,
        tokens,
        n_labeled: int,
        n_heads: int,
        generator: torch.Generator,
        init_scale: float = 1.0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        check_float_dtype("dtype", dtype)
        tokens = as_float_tensor("tokens", tokens, ndim=2, dtype=dtype)
        n_tokens, dim = tokens.shape
        if n_tokens < 2:
            raise ValueError(f"tokens must hold at least 2 tokens (K >= 2), got K={n_tokens}")
        self.n_labeled = check_int("n_labeled", n_labeled, minimum=1)
        if self.n_labeled >= n_tokens:
            raise ValueError(
                f"n_labeled must be < the number of tokens K={n_tokens} (some tokens must be unlabelled), "
                f"got n_labeled={self.n_labeled}"
            )
        self.n_heads = check_int("n_heads", n_heads, minimum=1)
        self.init_scale = check_float("init_scale", init_scale, minimum=0.0, strict=True)
        check_generator("generator", generator)
        self.n_tokens, self.dim = n_tokens, dim
        self.register_buffer("tokens", tokens.clone())
        Q = torch.randn(self.n_heads, dim, dim, generator=generator, dtype=torch.float64) * self.init_scale
        self.Q = nn.Parameter(Q.to(dtype))
        self.w = nn.Parameter(torch.zeros(self.n_heads, n_tokens, dtype=dtype))

    def attention_scores(self) -> torch.Tensor:
        """s_k^h = softmax(V^T Q_h v_k) for every head and token, shape (H, N, K) (column k sums to 1)."""
        V = self.tokens[: self.n_labeled]  # (N, d)
        # (V^T Q_h) first: H N d^2 + H N d K flops, cheaper than Q_h v_k first when N < K.
        logits = (V @ self.Q) @ self.tokens.T  # (H, N, K)
        return torch.softmax(logits, dim=1)

    def attention_matrix(self) -> torch.Tensor:
        """A_tilde(theta) = (a_1..a_K) in R^{N x K}, a_k = sum_h w_{h,k} s_k^h, so that yhat = A_tilde^T y."""
        return torch.einsum("hk,hnk->nk", self.w, self.attention_scores())

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """yhat_k = y^T a_k for k = 1..K; ``y``: labels of the N prompt tokens, shape (..., N). Returns (..., K)."""
        y = as_float_tensor("y", y, dtype=self.Q.dtype)
        if y.ndim < 1 or y.shape[-1] != self.n_labeled:
            raise ValueError(f"y must have shape (..., n_labeled={self.n_labeled}), got {tuple(y.shape)}")
        return y @ self.attention_matrix()

    def extra_repr(self) -> str:
        return f"K={self.n_tokens}, d={self.dim}, N={self.n_labeled}, H={self.n_heads}, beta={self.init_scale}"

    # ----------------------------------------------------------------------------------------------------------------
    # 3. The same layer written in the general form
    # ----------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def to_general_form(self) -> GeneralFormWeights:
        """The general-form weights that give the same predictions (checked in the tests).

        W_Q^h = [[Q_h, 0], [0, 0]] and W_K^h = I_{d+1}, so that (W_K^h E_P)^T W_Q^h E_Q = V^T Q_h (v_1..v_K): the
        label row does not enter the attention scores. W_V^h = e_{d+1} e_{d+1}^T copies the label row, so head h's
        column k is (0, .., 0, y^T s_k^h). W^O puts w_{h,k} on the label coordinate of head h in output row k.
        """
        H, d, K = self.n_heads, self.dim, self.n_tokens
        W_Q = self.Q.new_zeros(H, d + 1, d + 1)
        W_Q[:, :d, :d] = self.Q
        W_K = torch.eye(d + 1, dtype=self.Q.dtype).expand(H, -1, -1).clone()
        W_V = self.Q.new_zeros(H, d + 1, d + 1)
        W_V[:, d, d] = 1.0
        W_O = self.Q.new_zeros(K, H, d + 1)
        W_O[:, :, d] = self.w.T
        return GeneralFormWeights(W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=W_O.reshape(K, H * (d + 1)))
