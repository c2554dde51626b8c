"""A small causal sequence transformer for continuous inputs (Part III: task vectors with a closed form).

Read top to bottom, like nanoGPT's ``model.py``: a causal self-attention with rotary position embeddings, the
pre-LayerNorm residual block around it (its MLP is :class:`icllib.models.multilayer.MLP`), then the model: a linear
embedding of each position's input vector, the blocks, a final LayerNorm and a linear read-out at every position.

Inputs are real vectors, not token ids: position t of a sequence is a vector u_t in R^{d_input} (Part III writes a
template-regression prompt as such a sequence, see :mod:`icllib.bridge`). The residual stream is

    h_0 = W_E u_t (+ p_t),      h_l = Block_l(h_{l-1})  (l = 1..L, position t attends to positions <= t),
    out_t = W_R LayerNorm(h_L)_t + b_R,

so ``out_t`` depends on ``u_1..u_t`` only. Positions enter in one of two ways (``positions=``):

- ``"rotary"`` (default): queries and keys are rotated by angles proportional to their position (RoPE, as in
  LLaMA, Pythia and GPT-J, the models of Hendel et al.), so attention scores depend on *relative* positions only.
  This matters for the task-vector method: the bare query ``x ->`` then stands in the same relation to its arrow as
  the query line at the end of a long prompt.
- ``"learned"``: a learned absolute position vector p_t added to h_0 (GPT-2).

The model exposes the parts that the task-vector code of Part II reads and overwrites through
:meth:`CausalTransformer.model_parts` (an :class:`icllib.llm.ModelParts`): the L blocks (block ``l``'s output at
the last position is the task vector theta_l), the final norm and the read-out (which plays the unembedding).
``forward(inputs, attention_mask=None, position_ids=None)`` takes the keywords that :func:`icllib.llm.forward_last`
passes, so left-padded batches work as they do for a language model.
"""

from __future__ import annotations

import torch
from torch import nn

from icllib._checks import as_float_tensor, check_choice, check_float, check_float_dtype, check_generator, check_int
from icllib.llm import ModelParts
from icllib.models.multilayer import MLP, TransformerConfig, gpt2_init, multi_head_attention

__all__ = ["CausalTransformer", "CausalSelfAttention", "CausalBlock", "rotate", "rotary_tables"]

_POSITIONS = ("rotary", "learned")


# --------------------------------------------------------------------------------------------------------------------
# 1. Attention with rotary positions, and the residual block
# --------------------------------------------------------------------------------------------------------------------
def rotary_tables(position_ids: torch.Tensor, head_dim: int, base: float = 10_000.0,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of the rotary angles ``pos * base^(-2i/D)``, i < D/2 = head_dim/2: (T, D/2) for position_ids
    (T,), (B, 1, T, D/2) for (B, T) (broadcast over heads). Computed in float64, returned in ``dtype``."""
    half = head_dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64, device=position_ids.device) / half)
    angles = position_ids.to(torch.float64)[..., None] * freqs  # (T, D/2) or (B, T, D/2)
    if angles.ndim == 3:
        angles = angles[:, None]  # broadcast over heads
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rotate(x: torch.Tensor, position_ids: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    """Rotary position embedding: rotate coordinate pairs (i, i + D/2) of ``x`` (B, H, T, D) by ``pos * base^(-2i/D)``.

    ``position_ids`` is (T,) or (B, T). Then ``<rotate(q, s), rotate(k, t)>`` depends on ``t - s`` only.
    """
    return _apply_rotary(x, *rotary_tables(position_ids, x.shape[-1], base, x.dtype))


class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (n_heads heads of width d_model / n_heads), optionally rotary.

    The heads' arithmetic is :func:`icllib.models.multilayer.multi_head_attention`, shared with the Part I models;
    this class adds the fused query/key/value projection and the rotation of queries and keys.
    """

    def __init__(self, config: TransformerConfig, rotary: bool, rotary_base: float = 10_000.0) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = config.n_heads, config.head_dim, config.dropout
        self.rotary, self.rotary_base = rotary, rotary_base
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # queries, keys and values in one product
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, positions) -> torch.Tensor:
        """``x`` (B, T, d_model); ``attn_mask`` boolean (T, T) or (B, 1, T, T), True = may attend; ``positions``
        the position ids (T,) or (B, T), or their :func:`rotary_tables` ``(cos, sin)`` computed once per forward."""
        q, k, v = self.qkv(x).split(x.shape[-1], dim=-1)
        rotate_qk = None
        if self.rotary:
            cos, sin = positions if isinstance(positions, tuple) else rotary_tables(
                positions, self.head_dim, self.rotary_base, x.dtype)

            def rotate_qk(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return _apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin)

        out = multi_head_attention(q, k, v, self.n_heads, attn_mask, self.dropout if self.training else 0.0,
                                   rotate_qk)
        return self.proj(out)


class CausalBlock(nn.Module):
    """One pre-LayerNorm residual block: x + Attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, config: TransformerConfig, rotary: bool, rotary_base: float = 10_000.0) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config, rotary, rotary_base)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, positions) -> torch.Tensor:
        """``positions``: position ids, or their rotary tables (see :class:`CausalSelfAttention`)."""
        x = x + self.attn(self.ln_attn(x), attn_mask, positions)
        return x + self.mlp(self.ln_mlp(x))


# --------------------------------------------------------------------------------------------------------------------
# 2. The model
# --------------------------------------------------------------------------------------------------------------------
class CausalTransformer(nn.Module):
    """A GPT-style causal transformer on sequences of real vectors, with a linear read-out at every position.

    Args:
        d_input: width of each position's input vector u_t.
        max_len: the longest sequence the model accepts (the size of the position table for ``"learned"``).
        d_model, n_layers, n_heads, d_ff: the body's sizes (:class:`~icllib.models.multilayer.TransformerConfig`);
            ``n_heads`` must divide ``d_model``, and ``d_model / n_heads`` must be even for rotary positions.
        generator: the source of the random initialisation (the global torch seed is neither used nor advanced).
        positions: ``"rotary"`` (default) or ``"learned"`` (module docstring).
        rotary_base: the base of the rotary angles (10,000 as in LLaMA; a small head width over short sequences
            rotates more usefully with a smaller base).
        d_output: width of the read-out (1 for a scalar prediction per position).
        dropout: dropout probability in the blocks (0 in the book's experiments).
        dtype: torch.float32 (default) or torch.float64.

    Calling the model on ``inputs`` of shape (B, T, d_input) returns (B, T, d_output).
    """

    def __init__(
        self,
        d_input: int,
        max_len: int,
        d_model: int = 64,
        n_layers: int = 4,
        n_heads: int = 4,
        d_ff: int = 256,
        *,
        generator: torch.Generator,
        positions: str = "rotary",
        rotary_base: float = 10_000.0,
        d_output: int = 1,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        check_float_dtype("dtype", dtype)
        self.d_input = check_int("d_input", d_input, minimum=1)
        self.max_len = check_int("max_len", max_len, minimum=1)
        self.d_output = check_int("d_output", d_output, minimum=1)
        self.positions = check_choice("positions", positions, _POSITIONS)
        self.rotary_base = check_float("rotary_base", rotary_base, minimum=1.0, strict=True)
        check_generator("generator", generator)
        self.config = TransformerConfig(d_model, n_layers, n_heads, d_ff, dropout)
        if self.positions == "rotary" and self.config.head_dim % 2:
            raise ValueError(
                f"rotary positions need an even head width d_model / n_heads, got {d_model} / {n_heads} = "
                f"{self.config.head_dim}"
            )
        rotary = self.positions == "rotary"
        # nn.Linear draws its default initialisation from the global generator: fork it so that building a model
        # leaves the global state untouched; every weight is then redrawn from ``generator`` by gpt2_init.
        with torch.random.fork_rng(devices=[]):
            self.embed = nn.Linear(self.d_input, d_model)
            self.position_table = nn.Parameter(torch.zeros(self.max_len, d_model)) if not rotary else None
            self.blocks = nn.ModuleList(CausalBlock(self.config, rotary, self.rotary_base) for _ in range(n_layers))
            self.ln_final = nn.LayerNorm(d_model)
            self.readout = nn.Linear(d_model, self.d_output)
        gpt2_init(self, self.config.n_layers, generator)
        self.to(dtype)

    # ----------------------------------------------------------------------------------------------------------------
    # The forward pass, split where the task-vector method needs to reach in
    # ----------------------------------------------------------------------------------------------------------------
    def _check_inputs(self, inputs, attention_mask, position_ids) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = as_float_tensor("inputs", inputs, ndim=3, dtype=self.embed.weight.dtype)
        batch, length, width = inputs.shape
        if width != self.d_input:
            raise ValueError(f"inputs must have shape (B, T, d_input={self.d_input}), got {tuple(inputs.shape)}")
        if length < 1:
            raise ValueError(f"inputs must hold at least one position, got shape {tuple(inputs.shape)}")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != (batch, length):
                raise ValueError(
                    f"attention_mask must be a tensor of shape (B, T) = ({batch}, {length}) (1 = real position, "
                    f"0 = padding), got {attention_mask!r:.80}"
                )
        if position_ids is None:
            if length > self.max_len:
                raise ValueError(f"inputs has {length} positions but the model accepts max_len={self.max_len}")
            if attention_mask is None:
                position_ids = torch.arange(length, device=inputs.device)
            else:  # count positions over real entries only, so that left padding does not shift them
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        elif not isinstance(position_ids, torch.Tensor) or position_ids.shape[-1] != length \
                or position_ids.ndim not in (1, 2):
            raise ValueError(f"position_ids must be a tensor of shape (B, T) or (T,), got {position_ids!r:.80}")
        elif position_ids.is_floating_point() or position_ids.dtype == torch.bool:
            raise TypeError(f"position_ids must be an integer tensor, got dtype {position_ids.dtype}")
        if position_ids.min() < 0 or position_ids.max() >= self.max_len:
            raise ValueError(
                f"position_ids must lie in [0, max_len={self.max_len}), got range [{int(position_ids.min())}, "
                f"{int(position_ids.max())}]"
            )
        return inputs, position_ids

    def attention_mask_for(self, length: int, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask (T, T) or (B, 1, T, T), True where position i may attend to position j.

        Causal (j <= i); with a padding mask (B, T) the padded keys are removed too. A padded position still sees
        itself, so that no row of the softmax is empty (its output is never read).
        """
        causal = torch.ones(length, length, dtype=torch.bool, device=self.embed.weight.device).tril()
        if attention_mask is None:
            return causal
        keys = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        eye = torch.eye(length, dtype=torch.bool, device=causal.device)
        return (causal & keys) | eye

    def _stream(self, inputs, attention_mask, position_ids, keep: bool):
        """Run the blocks; the final stream h_L, and the list h_0..h_L when ``keep``."""
        inputs, position_ids = self._check_inputs(inputs, attention_mask, position_ids)
        mask = self.attention_mask_for(inputs.shape[1], attention_mask)
        x = self.embed(inputs)
        if self.position_table is not None:
            x = x + self.position_table[position_ids]
        states = [x]
        positions = position_ids  # rotary: the tables once for every block
        if self.position_table is None:
            positions = rotary_tables(position_ids, self.config.head_dim, self.rotary_base, x.dtype)
        for block in self.blocks:
            x = block(x, mask, positions)
            if keep:
                states.append(x)
        return x, states

    def forward(self, inputs, attention_mask=None, position_ids=None) -> torch.Tensor:
        """Read-out at every position, (B, T, d_output); position t depends on inputs[:, :t+1] only.

        ``attention_mask`` (B, T): 1 for real positions, 0 for (left) padding; positions then count real entries
        only, unless ``position_ids`` (B, T) or (T,) are given (default 0, 1, ..., T - 1).
        """
        x, _ = self._stream(inputs, attention_mask, position_ids, keep=False)
        return self.readout(self.ln_final(x))

    @torch.no_grad()
    def hidden_states(self, inputs, attention_mask=None, position_ids=None) -> torch.Tensor:
        """The residual stream h_0..h_L at every position, shape (L + 1, B, T, d_model) (h_0: the embedding)."""
        _, states = self._stream(inputs, attention_mask, position_ids, keep=True)
        return torch.stack(states)

    def model_parts(self) -> ModelParts:
        """Blocks, final norm and read-out as an :class:`icllib.llm.ModelParts` (what task-vector code reaches)."""
        return ModelParts(blocks=self.blocks, final_norm=self.ln_final, unembedding=self.readout)

    @property
    def n_layers(self) -> int:
        """Number of blocks L."""
        return self.config.n_layers

    def extra_repr(self) -> str:
        return f"d_input={self.d_input}, max_len={self.max_len}, positions={self.positions!r}"
