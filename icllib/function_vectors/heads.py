"""Attention heads as Todd et al. (2024) read them: the input of each block's attention output projection, per head.

Block ``l``'s attention output is ``W_O^l [a_{l1}; ...; a_{lH}] (+ b_l)``: the H heads' value-weighted outputs
``a_{lj}`` (width D each) concatenated and mixed by the output projection ``W_O^l`` (``o_proj`` in Llama, ``c_proj`` in
GPT-2, ``dense`` in GPT-NeoX, ``out_proj`` in GPT-J and OPT). The paper's head activation is ``a_{lj}`` at the last
token; its contribution to the residual stream is ``W_O^l[:, j] a_{lj}`` (the slice of the projection that head ``j``
feeds, their Eqs. 11-12).

:func:`attention_outputs` finds the projections by the model's structure, not its name: in each decoder block the
first submodule whose class is an attention module, and in it the last linear map (``nn.Linear`` or GPT-2's
``Conv1D``) that writes the residual width. The head count comes from the model's configuration (or the attention
module's own ``n_heads``/``num_heads``), the head width from the projection's input width.

The edit functions for :func:`icllib.task_vectors.trace` (``edit_input`` on the projections): :func:`read_heads`
stores ``a_{lj}`` at the last position, :func:`write_heads` overwrites chosen heads of chosen batch rows there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from icllib._checks import check_int
from icllib.llm import forward_last, model_device, model_parts
from icllib.task_vectors import PromptFormat, check_format, trace
from icllib.task_vectors.forward import batches, check_prompts, tokenize, token_rows
from icllib.task_vectors.hooks import blocks_at, read_last

__all__ = ["AttentionOutputs", "attention_outputs", "read_heads", "write_heads", "head_activations",
           "head_outputs", "function_vector", "top_heads"]

# Head patches of one projection: (batch rows (n,), head indices (n,), values (n, D)).
HeadPatches = Mapping[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class AttentionOutputs:
    """The attention output projection ``W_O^l`` of every block and the split of its input into heads.

    ``projections[l]`` is block ``l``'s projection, ``names[l]`` its path in the model (``model.layers.3.self_attn.
    o_proj``); its input has width ``n_heads * head_dim``, head ``j`` owning ``[j * head_dim, (j + 1) * head_dim)``.
    """

    projections: tuple[nn.Module, ...]
    names: tuple[str, ...]
    n_heads: int
    head_dim: int

    @property
    def n_layers(self) -> int:
        """Number of blocks L."""
        return len(self.projections)

    def modules(self, layers: Sequence[int] | None = None) -> dict[int, nn.Module]:
        """``{l: W_O^l}`` for the given blocks (all by default): the ``modules`` argument of ``trace``."""
        chosen = range(self.n_layers) if layers is None else layers
        return {l: self.projections[l] for l in chosen}


def _widths(module: nn.Module) -> tuple[int, int] | None:
    """``(input width, output width)`` of a linear map without children (``nn.Linear`` or ``Conv1D``), else None."""
    weight = getattr(module, "weight", None)
    if next(module.children(), None) is not None or not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(getattr(module, "nf", None), int):  # transformers' Conv1D (GPT-2): weight (in, out)
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def _attention(block: nn.Module, l: int) -> tuple[str, nn.Module]:
    for name, module in block.named_modules():
        if name and "attention" in type(module).__name__.lower():
            return name, module
    raise ValueError(f"block {l} ({type(block).__name__}) has no attention submodule (a module whose class name "
                     "contains 'Attention'); function vectors need one per block")


def _n_heads(model: nn.Module, attention: nn.Module) -> int:
    config = getattr(model, "config", None)
    for owner, name in ((config, "num_attention_heads"), (attention, "num_heads"), (attention, "n_heads")):
        value = getattr(owner, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell the number of attention heads of {type(model).__name__}: neither "
                     "config.num_attention_heads nor the attention module's num_heads/n_heads is set")


def attention_outputs(model) -> AttentionOutputs:
    """The attention output projections of ``model`` and their head split (see :class:`AttentionOutputs`)."""
    parts = model_parts(model)
    hidden, names, projections, n_heads = parts.hidden_size, [], [], None
    paths = {id(m): n for n, m in model.named_modules()}
    for l, block in enumerate(parts.blocks):
        attention_name, attention = _attention(block, l)
        n_heads = n_heads or _n_heads(model, attention)
        found = [m for _, m in attention.named_modules() if (_widths(m) or (0, 0))[1] == hidden]
        if not found:
            raise ValueError(f"block {l}: the attention module {attention_name!r} has no linear map to width {hidden}")
        projection = found[-1]  # registered last: the projection applied to the concatenated heads
        width = _widths(projection)[0]
        if width % n_heads:
            raise ValueError(f"block {l}: output projection input width {width} is not a multiple of {n_heads} heads")
        projections.append(projection)
        names.append(paths[id(projection)])
    return AttentionOutputs(tuple(projections), tuple(names), n_heads, width // n_heads)


# ----------------------------------------------------------------------------------------------------------------
# Edit functions (edit_input of trace, on the projections)
# ----------------------------------------------------------------------------------------------------------------
def _first(args, kwargs) -> torch.Tensor:
    if args:
        return args[0]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def _replace_first(args, kwargs, x: torch.Tensor):
    if args:
        return (x, *args[1:]), kwargs
    key = next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    return args, {**kwargs, key: x}


def read_heads(store: dict, n_heads: int) -> Callable:
    """An ``edit_input`` that stores the last position of module ``key``'s input split per head: (B, H, D)."""
    def edit(key, args, kwargs):
        x = _first(args, kwargs)[:, -1, :]
        store[key] = x.detach().reshape(x.shape[0], n_heads, -1).clone()

    return edit


def write_heads(patches: HeadPatches, n_heads: int) -> Callable:
    """An ``edit_input`` that sets head ``heads[i]`` of batch row ``rows[i]`` at the last position to ``values[i]``
    (``patches[key] = (rows, heads, values)``); other heads, rows and positions are untouched."""
    def edit(key, args, kwargs):
        rows, heads, values = patches[key]
        x = _first(args, kwargs)
        x = x.clone().reshape(*x.shape[:-1], n_heads, x.shape[-1] // n_heads)  # a fresh tensor, viewed per head
        x[rows.to(x.device), -1, heads.to(x.device)] = values.to(device=x.device, dtype=x.dtype)
        return _replace_first(args, kwargs, x.flatten(-2))

    return edit


# ----------------------------------------------------------------------------------------------------------------
# Activations, head outputs, the function vector
# ----------------------------------------------------------------------------------------------------------------
def head_activations(
    model, tokenizer, prompts: Sequence[str], fmt: PromptFormat | str = "example", batch_size: int = 16,
    with_states: bool = False, progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``a_{lj}(p)[-1]`` of every prompt, block and head: float32 (n_prompts, L, H, D).

    The mean over clean ICL prompts of one task is the paper's ``abar_{lj}`` (its Section 2.2; the last token only,
    as its function vectors use). With ``with_states`` also the residual states ``h_l(p)[-1]`` (n_prompts, L, d)
    of the same forwards, i.e. Hendel et al.'s ``theta_l(S)`` read from ``[S, x']`` with one dummy query ``x'``.
    """
    fmt, batch_size = check_format(fmt), check_int("batch_size", batch_size, minimum=1)
    return _activations(model, tokenizer, check_prompts(prompts), fmt, batch_size, with_states, progress)


def _activations(model, tokenizer, prompts, fmt: PromptFormat, batch_size: int, with_states: bool = False,
                 progress: bool = False):
    outputs, parts = attention_outputs(model), model_parts(model)
    lengths = [len(r) for r in token_rows(tokenizer, prompts, fmt)]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    heads = torch.empty((len(prompts), outputs.n_layers, outputs.n_heads, outputs.head_dim))
    states = torch.empty((len(prompts), parts.n_layers, parts.hidden_size)) if with_states else None
    head_store, state_store = {}, {}
    for chunk in tqdm(list(batches(len(prompts), batch_size)), desc="head activations", disable=not progress,
                      leave=False):
        members = torch.tensor(order[chunk])
        batch = tokenize(tokenizer, [prompts[i] for i in members.tolist()], fmt, model_device(model))
        with trace(outputs.modules(), edit_input=read_heads(head_store, outputs.n_heads)), \
                trace(blocks_at(parts.blocks, range(parts.n_layers) if with_states else []),
                      edit_output=read_last(state_store)):
            forward_last(model, **batch, logits=False)
        heads[members] = torch.stack([head_store[l] for l in range(outputs.n_layers)], 1).float().cpu()
        if with_states:
            states[members] = torch.stack([state_store[l] for l in range(parts.n_layers)], 1).float().cpu()
    return (heads, states) if with_states else heads


def head_outputs(model, activations: torch.Tensor) -> torch.Tensor:
    """Each head's contribution to the residual stream, ``W_O^l[:, j] a_{lj}``: (..., L, H, d) float32.

    ``activations`` (..., L, H, D), e.g. the mean ``abar`` (L, H, D) or per-prompt activations (n, L, H, D). The
    projection's bias (GPT-2, GPT-NeoX, OPT) belongs to no head and is left out: the H outputs of a block plus the
    bias sum to its attention output. (The reference code applies the whole projection, bias included, to each
    zero-padded head; the two agree on GPT-J and Llama, which have no bias.)
    """
    outputs = attention_outputs(model)
    if not isinstance(activations, torch.Tensor) or not activations.is_floating_point():
        raise TypeError(f"activations must be a floating-point torch tensor, got {type(activations).__name__}")
    expected = (outputs.n_layers, outputs.n_heads, outputs.head_dim)
    if activations.ndim < 3 or tuple(activations.shape[-3:]) != expected:
        raise ValueError(f"activations must have shape (..., {', '.join(map(str, expected))}), "
                         f"got {tuple(activations.shape)}")
    return _head_outputs(outputs, activations)


def _head_outputs(outputs: AttentionOutputs, activations: torch.Tensor) -> torch.Tensor:
    lead, (n_layers, n_heads, head_dim) = activations.shape[:-3], activations.shape[-3:]
    flat = activations.reshape(-1, n_layers, n_heads, head_dim)
    eye = torch.eye(n_heads, dtype=flat.dtype)
    out = []
    for l, projection in enumerate(outputs.projections):
        weight = next(projection.parameters())
        # row (i, j) holds head j's activation of item i in head j's slice and zeros elsewhere
        padded = (eye[None, :, :, None] * flat[:, l, None, :, :]).reshape(-1, n_heads * head_dim)
        padded = padded.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            mapped = projection(padded) - projection(torch.zeros_like(padded[:1]))
        out.append(mapped.float().cpu().reshape(len(flat), n_heads, -1))
    return torch.stack(out, 1).reshape(*lead, n_layers, n_heads, -1)


def top_heads(effects, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads ``(block, head)`` with the largest average indirect effect, largest first (the paper's set A).

    ``effects`` (L, H), e.g. from :func:`icllib.function_vectors.head_effects` (averaged over tasks for a set that
    serves every task, as in the paper).
    """
    effects = torch.as_tensor(effects) if not isinstance(effects, torch.Tensor) else effects
    if effects.ndim != 2 or not effects.is_floating_point():
        raise ValueError(f"effects must be a floating-point (n_blocks, n_heads) array, "
                         f"got shape {tuple(effects.shape)}")
    k = check_int("k", k, minimum=1, maximum=effects.numel())
    order = torch.argsort(effects.reshape(-1).double(), descending=True, stable=True)[:k]
    return [(int(i) // effects.shape[1], int(i) % effects.shape[1]) for i in order]


def function_vector(model, mean_activations: torch.Tensor, heads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The function vector ``v_t = sum_{(l, j) in A} W_O^l[:, j] abar_{lj}`` (the paper's Eq. 5): float32 (d,).

    ``mean_activations`` (L, H, D) of one task (:func:`head_activations` averaged over clean prompts); ``heads`` the
    set A as ``(block, head)`` pairs (:func:`top_heads`).
    """
    outputs = attention_outputs(model)
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence) or not heads:
        raise ValueError(f"heads must be a non-empty list of (block, head) pairs, got {heads!r}")
    checked = []
    for i, pair in enumerate(heads):
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"heads[{i}] must be a (block, head) pair, got {pair!r}")
        checked.append((check_int(f"heads[{i}][0]", pair[0], minimum=0, maximum=outputs.n_layers - 1),
                        check_int(f"heads[{i}][1]", pair[1], minimum=0, maximum=outputs.n_heads - 1)))
    per_head = head_outputs(model, mean_activations)
    if per_head.ndim != 3:
        raise ValueError(f"mean_activations must have shape (L, H, D), got {tuple(mean_activations.shape)}")
    return torch.stack([per_head[l, j] for l, j in checked]).sum(0)
