"""A standard multi-layer (pre-LayerNorm) transformer for the deeper experiments of Yang et al. (2024).

Read top to bottom, like nanoGPT's ``model.py``: a config dataclass, the three blocks (attention, MLP, the residual
block that joins them), then the in-context regression model built from them.

The book's notation (after the paper): the dictionary holds K tokens v_1..v_K in R^d, the first N of them are
labelled in the prompt with labels y_1..y_N. The model reads the columns of

    E = [ (v_1; y_1) ... (v_N; y_N) | (v_1; 0) ... (v_K; 0) ]  in R^{(d+1) x (N+K)}                   (Figure 2b)

(N prompt columns, then one query column per dictionary token, label slot empty) and predicts yhat_k, the label of
token k, from the last layer's state of query column k.

Who attends to whom. Every position attends to the N prompt columns and to nothing else, i.e. the dense attention
mask is M[i, j] = (j < N). Prompt columns therefore never see the queries, and a query column never sees another
query column: its prediction depends on the prompt and on its own token only (its own token still steers its
attention through its query vector, and reaches the output through the residual stream). Because the keys are
the first N positions, the blocks compute this as attention from all N+K positions to the first ``n_keys = N``
ones: the same numbers as the dense mask, for (N+K) N instead of (N+K)^2 scores.

The blocks also take a general boolean ``attn_mask``, so a causal sequence model can reuse them
(:func:`causal_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from icllib._checks import as_float_tensor, check_float, check_float_dtype, check_generator, check_int

__all__ = ["TransformerConfig", "multi_head_attention", "Attention", "MLP", "Block", "causal_mask", "gpt2_init",
           "MultiLayerTransformer"]


# --------------------------------------------------------------------------------------------------------------------
# 1. Configuration
# --------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransformerConfig:
    """Sizes of the transformer body. Defaults: the paper's 4-layer model (Figure 2b): width 256, MLP 512, 8 heads."""

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    d_ff: int = 512
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_int("d_model", self.d_model, minimum=1)
        check_int("n_layers", self.n_layers, minimum=1)
        check_int("n_heads", self.n_heads, minimum=1)
        check_int("d_ff", self.d_ff, minimum=1)
        check_float("dropout", self.dropout, minimum=0.0)
        if self.dropout >= 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads must divide d_model (each head gets d_model / n_heads coordinates), "
                f"got d_model={self.d_model}, n_heads={self.n_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


# --------------------------------------------------------------------------------------------------------------------
# 2. Blocks
# --------------------------------------------------------------------------------------------------------------------
def causal_mask(length: int) -> torch.Tensor:
    """Boolean (length, length) mask, True where position i may attend to position j, i.e. j <= i."""
    length = check_int("length", length, minimum=1)
    return torch.ones(length, length, dtype=torch.bool).tril()


def _check_mask(attn_mask: torch.Tensor, n_queries: int, n_keys: int) -> None:
    if not isinstance(attn_mask, torch.Tensor) or attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be a boolean torch.Tensor (True = may attend), got {attn_mask!r:.60}")
    if attn_mask.ndim < 2 or tuple(attn_mask.shape[-2:]) != (n_queries, n_keys):
        raise ValueError(
            f"attn_mask must end in shape (L, S) = ({n_queries}, {n_keys}) (positions x keys), "
            f"got {tuple(attn_mask.shape)}"
        )
    # A row with no key left would make its softmax 0/0 = NaN.
    if not attn_mask.any(dim=-1).all():
        raise ValueError("attn_mask leaves some position with no key to attend to (a row of all False)")


def multi_head_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    n_heads: int,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    rotate_qk: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """The attention shared by every transformer here: softmax(q_h k_h^T / sqrt(head_dim)) v_h per head h, heads
    concatenated (the output projection is the caller's).

    ``q`` (B, L, d_model) queries, ``k`` and ``v`` (B, S, d_model) keys and values, already projected; each is split
    into ``n_heads`` heads of width d_model / n_heads. ``attn_mask``: boolean (L, S) or (B, 1, L, S), True = may
    attend. ``rotate_qk(q, k)``, if given, transforms the split queries and keys (B, H, ., head_dim) before the
    scores, e.g. rotary positions. Returns (B, L, d_model).
    """
    batch, length, width = q.shape
    head_dim = width // n_heads

    def heads(t: torch.Tensor) -> torch.Tensor:  # (B, positions, d_model) -> (B, H, positions, head_dim)
        return t.reshape(batch, t.shape[1], n_heads, head_dim).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    if rotate_qk is not None:
        q, k = rotate_qk(q, k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(batch, length, width)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention: n_heads heads of width head_dim = d_model / n_heads.

    softmax(q k^T / sqrt(head_dim)) v per head, heads concatenated and mixed by an output projection. Queries come
    from every position of x; keys and values from its first ``n_keys`` positions (all of them by default).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = config.n_heads, config.head_dim, config.dropout
        self.query = nn.Linear(config.d_model, config.d_model)
        self.key_value = nn.Linear(config.d_model, 2 * config.d_model)  # keys and values in one product
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, n_keys: int | None = None
    ) -> torch.Tensor:
        """``x``: (B, L, d_model). ``attn_mask``: boolean (L, S) or (B, 1, L, S), True = may attend, S = n_keys."""
        length, width = x.shape[1], x.shape[2]
        n_keys = length if n_keys is None else n_keys
        if attn_mask is not None:
            _check_mask(attn_mask, length, n_keys)
        k, v = self.key_value(x[:, :n_keys]).split(width, dim=-1)
        out = multi_head_attention(self.query(x), k, v, self.n_heads, attn_mask,
                                   dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(out))


class MLP(nn.Module):
    """Position-wise feed-forward network d_model -> d_ff -> d_model with a GELU."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_ff)
        self.down = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """One pre-LayerNorm residual block: x + Attention(LN(x)), then x + MLP(LN(x)).

    ``forward(x, attn_mask=None, n_keys=None)``: ``x`` (B, L, d_model); ``attn_mask`` a boolean (L, S) mask with
    True where attention is allowed (e.g. :func:`causal_mask` for a causal language model); ``n_keys`` = S, the
    number of leading positions that serve as keys and values (default: all L).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = Attention(config)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, n_keys: int | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), attn_mask=attn_mask, n_keys=n_keys)
        return x + self.mlp(self.ln_mlp(x))


@torch.no_grad()
def gpt2_init(model: nn.Module, n_layers: int, generator: torch.Generator) -> None:
    """GPT-2's initialisation of every parameter of ``model``, drawn from ``generator`` in ``named_parameters`` order.

    N(0, 0.02^2) weights, zero biases, unit LayerNorm gains (parameters under a name containing ``ln_``), and the two
    projections that write into the residual stream (``attn.proj``, ``mlp.down``) shrunk by 1/sqrt(2 n_layers), so
    the stream's variance does not grow with depth. Shared by the Part I and Part III transformers.
    """
    residual_std = 0.02 / math.sqrt(2 * n_layers)
    for name, param in model.named_parameters():
        if name.endswith("bias"):
            param.zero_()
        elif "ln_" in name:
            param.fill_(1.0)  # LayerNorm gains
        elif name.endswith(("attn.proj.weight", "mlp.down.weight")):
            nn.init.normal_(param, 0.0, residual_std, generator=generator)
        else:
            nn.init.normal_(param, 0.0, 0.02, generator=generator)


# --------------------------------------------------------------------------------------------------------------------
# 3. The in-context regression model
# --------------------------------------------------------------------------------------------------------------------
class MultiLayerTransformer(nn.Module):
    """A standard transformer that predicts the labels of all K dictionary tokens from a prompt (paper, Figure 2b).

    Each column of E (module docstring) is embedded linearly, R^{d+1} -> R^{d_model}, plus a learned role vector
    (one for prompt columns, one for query columns, so that an empty label slot is never confused with a label
    equal to 0). No positional embedding: the token v_k itself says which dictionary entry a column is. Then
    ``n_layers`` :class:`Block` s in which every position attends to the N prompt columns only, a final LayerNorm,
    and a linear read-out of query column k gives yhat_k.

    Args:
        tokens: the dictionary (K, d), rows v_1..v_K; the first ``n_labeled`` rows are the prompt tokens.
        n_labeled: N, the number of labelled tokens, 1 <= N <= K.
        d_model, n_layers, n_heads, d_ff: the body's sizes (:class:`TransformerConfig`); n_heads must divide d_model.
        generator: the source of the random initialisation (the global torch seed is neither used nor advanced).
        dropout: dropout probability in attention and residual branches (0 in the book's experiments).
        dtype: torch.float32 (default) or torch.float64, the dtype of the parameters; inputs of either precision are
            converted to it, and predictions come back in it.

    Calling the model on labels y (..., N) returns yhat (..., K).
    """

    def __init__(
        self,
        tokens,
        n_labeled: int,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 8,
        d_ff: int = 512,
        *,
        generator: torch.Generator,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        check_float_dtype("dtype", dtype)
        tokens = as_float_tensor("tokens", tokens, ndim=2, dtype=dtype)
        n_tokens, dim = tokens.shape
        if n_tokens < 1 or dim < 1:
            raise ValueError(f"tokens must have shape (K, d) with K, d >= 1, got {tuple(tokens.shape)}")
        self.n_labeled = check_int("n_labeled", n_labeled, minimum=1)
        if self.n_labeled > n_tokens:
            raise ValueError(
                f"n_labeled must be <= the number of tokens K={n_tokens} (the prompt labels the first N tokens), "
                f"got n_labeled={self.n_labeled}"
            )
        check_generator("generator", generator)
        self.config = TransformerConfig(d_model, n_layers, n_heads, d_ff, dropout)
        self.n_tokens, self.dim = n_tokens, dim
        self.register_buffer("tokens", tokens.clone())

        # nn.Linear draws its default initialisation from the global generator: fork it so that building a model
        # leaves the global state untouched; every weight is then redrawn from ``generator`` by gpt2_init.
        with torch.random.fork_rng(devices=[]):
            self.embed = nn.Linear(dim + 1, d_model)
            self.role = nn.Parameter(torch.zeros(2, d_model))  # row 0: prompt column, row 1: query column
            self.blocks = nn.ModuleList(Block(self.config) for _ in range(n_layers))
            self.ln_final = nn.LayerNorm(d_model)
            self.readout = nn.Linear(d_model, 1)
        gpt2_init(self, self.config.n_layers, generator)
        self.to(dtype)

    def columns(self, y: torch.Tensor) -> torch.Tensor:
        """The input matrix E, one column per row: (..., N + K, d + 1), prompt columns first (module docstring)."""
        y = self._check_labels(y)
        prompt_tokens = self.tokens[: self.n_labeled].expand(*y.shape[:-1], -1, -1)
        prompt = torch.cat([prompt_tokens, y.unsqueeze(-1)], dim=-1)  # (v_k; y_k), k <= N
        queries = torch.cat([self.tokens, self.tokens.new_zeros(self.n_tokens, 1)], dim=-1)  # (v_k; 0), k <= K
        return torch.cat([prompt, queries.expand(*y.shape[:-1], -1, -1)], dim=-2)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """yhat (..., K), the predicted labels of all K tokens, from the prompt labels ``y`` (..., N)."""
        E = self.columns(y)  # (..., N + K, d + 1)
        batch_shape = E.shape[:-2]
        x = self.embed(E.reshape(-1, *E.shape[-2:]))  # (B, N + K, d_model)
        n = self.n_labeled
        x = x + torch.cat([self.role[:1].expand(n, -1), self.role[1:].expand(self.n_tokens, -1)])
        for block in self.blocks:
            x = block(x, n_keys=n)  # everyone attends to the N prompt columns only
        yhat = self.readout(self.ln_final(x[:, n:])).squeeze(-1)  # (B, K), read from the query columns
        return yhat.reshape(*batch_shape, self.n_tokens)

    def _check_labels(self, y) -> torch.Tensor:
        y = as_float_tensor("y", y, dtype=self.role.dtype)
        if y.ndim < 1 or y.shape[-1] != self.n_labeled:
            raise ValueError(f"y must have shape (..., n_labeled={self.n_labeled}), got {tuple(y.shape)}")
        return y

    def forward_flops(self) -> int:
        """Multiply-add FLOPs (2 per multiply-add) of one forward pass on one prompt, matrix products only.

        Per layer: the query and output projections on all N + K positions (2 d_model^2 each), keys and values on the
        N prompt positions (4 d_model^2), scores and weighted sums 2 (N + K) N d_model each, the MLP on all positions
        (4 d_model d_ff); plus the embedding and the read-out. The count does not depend on the number of heads
        (they split d_model); what does grow with H is the softmax and bookkeeping over H (N + K) N scores, which
        this count leaves out. A training step (forward and backward) costs about three times this per prompt.
        """
        n, length, width, ff = self.n_labeled, self.n_labeled + self.n_tokens, self.config.d_model, self.config.d_ff
        per_layer = length * 2 * width * width * 2 + n * 4 * width * width + 2 * 2 * length * n * width
        per_layer += length * 2 * 2 * width * ff
        embed = length * 2 * (self.dim + 1) * width
        readout = self.n_tokens * 2 * width
        return int(self.config.n_layers * per_layer + embed + readout)

    def extra_repr(self) -> str:
        return f"K={self.n_tokens}, d={self.dim}, N={self.n_labeled}"
