"""Interventions on the causal transformer beyond Part II's residual patch (Chapter 10's positive controls).

Everything here runs through the one hook primitive, :func:`icllib.task_vectors.trace`, with small edit functions
(:mod:`icllib.task_vectors.hooks` keeps its own; the three below are new):

- :func:`keep_last`: like ``read_last``, but keeps the autograd graph (the task-vector-prompting loss of Yang et al.
  2025 back-propagates through the extracted state);
- :func:`read_input_last`: the input of a module at the last position (the concatenated head outputs entering an
  attention block's output projection);
- the edits that write are ``hooks.write_last`` (replace or add at the last position), reused as they are.

On top of them, the two extractions of the controls:

- Dong et al. (2026): the **attention output** (not the whole residual stream) of block l at the last position,
  :func:`attention_states`, written over the bare query's attention output at block l
  (:func:`attention_patched_outputs`); Dong et al. take it after the first block, at the last arrow;
- Saglam et al. (2025): the per-head contributions ``W_O[:, h] o_h`` at the last position
  (:func:`head_contributions`), weighted by learned scalars ``w_{l,h}`` and added to every block's output at the
  bare query's last position (:func:`learned_vector_outputs`; fitted by
  :func:`icllib.bridge.fit_learned_vector`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from icllib._checks import as_float_tensor
from icllib.llm import model_parts
from icllib.task_vectors import trace
from icllib.task_vectors.hooks import check_layers, write_last

__all__ = ["keep_last", "read_input_last", "attention_states", "attention_patched_outputs", "head_contributions",
           "learned_vector_outputs"]


# ----------------------------------------------------------------------------------------------------------------
# Edit functions (for task_vectors.trace)
# ----------------------------------------------------------------------------------------------------------------
def keep_last(store: dict) -> Callable:
    """An ``edit_output`` that stores ``h[:, -1, :]`` (B, d) of module ``key`` in ``store[key]``, graph kept."""
    def edit(key, output):
        store[key] = (output[0] if isinstance(output, tuple) else output)[:, -1, :]

    return edit


def read_input_last(store: dict) -> Callable:
    """An ``edit_input`` that stores the first positional input of module ``key`` at the last position, (B, d)."""
    def edit(key, args, kwargs):
        store[key] = args[0][:, -1, :].detach().clone()

    return edit


# ----------------------------------------------------------------------------------------------------------------
# Checked access to a causal transformer's attention
# ----------------------------------------------------------------------------------------------------------------
def _attention(model: nn.Module) -> list[nn.Module]:
    """The attention module of every block (a block with ``.attn`` whose ``.proj`` is a Linear and ``.n_heads``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        blocks = model_parts(model).blocks
    except ValueError as err:
        raise TypeError(f"model must be a causal transformer whose blocks have attention ({err})") from err
    attention = [getattr(block, "attn", None) for block in blocks]
    if not all(isinstance(getattr(a, "proj", None), nn.Linear) and hasattr(a, "n_heads") for a in attention):
        raise TypeError("model's blocks must each have an attention module .attn with a Linear output projection "
                        ".proj and .n_heads (e.g. icllib.models.causal.CausalTransformer)")
    return attention


def _input_list(name: str, inputs) -> list[torch.Tensor]:
    """One batch (n, T, d_in) or a non-empty list of batches with the same n (one per dummy query)."""
    if isinstance(inputs, torch.Tensor):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ValueError(f"{name} must be an input batch (n, T, d_in) or a non-empty list of them")
    checked = [as_float_tensor(f"{name}[{i}]", x, ndim=3) for i, x in enumerate(inputs)]
    if len({x.shape[0] for x in checked}) != 1:
        raise ValueError(f"{name} must hold batches with the same number of prompts, got "
                         f"{[x.shape[0] for x in checked]}")
    return checked


def _dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def attention_states(model: nn.Module, dummy_inputs, layers: Sequence[int] | int | None = None) -> torch.Tensor:
    """Dong et al.'s task vector: block l's attention output at the last position, averaged over the dummy prompts.

    ``dummy_inputs`` one batch or a list of batches (n, T, d_in) (``[S, x']`` for each dummy ``x'``); ``layers``
    block indices (default all). Returns (n, len(layers), d_model).
    """
    attention = _attention(model)
    layers = check_layers(layers, len(attention))
    batches = _input_list("dummy_inputs", dummy_inputs)
    total = None
    for inputs in batches:
        store: dict = {}
        with torch.no_grad(), trace({l: attention[l] for l in layers}, edit_output=keep_last(store)):
            model(inputs.to(_dtype(model)))
        states = torch.stack([store[l] for l in layers], dim=1)
        total = states if total is None else total + states
    return total / len(batches)


def attention_patched_outputs(model: nn.Module, inputs, vectors, layers: Sequence[int] | int | None = None,
                              mode: str = "replace") -> torch.Tensor:
    """Read-outs at the last position with block l's attention output there replaced (or increased) by
    ``vectors[:, k]``, l = ``layers[k]``, one block at a time: (n, len(layers)).

    ``inputs`` (n, T, d_in) (the bare query, usually); ``vectors`` (n, len(layers), d_model).
    """
    attention = _attention(model)
    layers = check_layers(layers, len(attention))
    inputs = as_float_tensor("inputs", inputs, ndim=3, dtype=_dtype(model))
    vectors = as_float_tensor("vectors", vectors, ndim=3)
    if tuple(vectors.shape[:2]) != (inputs.shape[0], len(layers)):
        raise ValueError(f"vectors must have shape (n={inputs.shape[0]}, len(layers)={len(layers)}, d_model), "
                         f"got {tuple(vectors.shape)}")
    if mode not in ("replace", "add"):
        raise ValueError(f"mode must be 'replace' or 'add', got {mode!r}")
    rows = torch.arange(inputs.shape[0])
    out = []
    for k, layer in enumerate(layers):
        with torch.no_grad(), trace({layer: attention[layer]},
                                    edit_output=write_last({layer: (rows, vectors[:, k])}, mode)):
            out.append(model(inputs)[:, -1, 0])
    return torch.stack(out, dim=1)


def head_contributions(model: nn.Module, dummy_inputs) -> torch.Tensor:
    """Each head's contribution to each block's attention output at the last position, ``W_O[:, h] o_h`` (bias
    left out), averaged over the dummy prompts: (n, L, H, d_model) (Saglam et al.'s head outputs)."""
    attention = _attention(model)
    batches = _input_list("dummy_inputs", dummy_inputs)
    total = None
    for inputs in batches:
        store: dict = {}
        with torch.no_grad(), trace({l: a.proj for l, a in enumerate(attention)}, edit_input=read_input_last(store)):
            model(inputs.to(_dtype(model)))
        per_block = []
        for l, a in enumerate(attention):
            heads = store[l].reshape(store[l].shape[0], a.n_heads, -1)  # (n, H, head_dim)
            weight = a.proj.weight.detach().reshape(a.proj.weight.shape[0], a.n_heads, -1)  # (d, H, head_dim)
            per_block.append(torch.einsum("nhk,dhk->nhd", heads, weight))
        states = torch.stack(per_block, dim=1)
        total = states if total is None else total + states
    return total / len(batches)


def learned_vector_outputs(model: nn.Module, inputs, heads, weights) -> torch.Tensor:
    """Read-outs at the last position of ``inputs`` with ``sum_h weights[l, h] heads[:, l, h]`` added to block l's
    output there, at every block at once: (n,), differentiable in ``weights`` (L, H).

    ``heads`` (n, L, H, d_model) from :func:`head_contributions` (Saglam et al.'s learnable task vector).
    """
    attention = _attention(model)
    inputs = as_float_tensor("inputs", inputs, ndim=3, dtype=_dtype(model))
    heads = as_float_tensor("heads", heads, ndim=4)
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != tuple(heads.shape[1:3]):
        raise ValueError(f"weights must be a tensor (L, H) = {tuple(heads.shape[1:3])}, got {weights!r:.60}")
    if heads.shape[0] != inputs.shape[0] or heads.shape[1] != len(attention):
        raise ValueError(f"heads must have shape (n={inputs.shape[0]}, L={len(attention)}, H, d_model), got "
                         f"{tuple(heads.shape)}")
    return _learned_vector_outputs(model, inputs, heads, weights)


def _learned_vector_outputs(model: nn.Module, inputs, heads, weights) -> torch.Tensor:
    """:func:`learned_vector_outputs` on checked arguments."""
    blocks = model_parts(model).blocks
    vectors = torch.einsum("nlhd,lh->nld", heads, weights.to(heads.dtype))
    rows = torch.arange(inputs.shape[0])
    patches = {l: (rows, vectors[:, l]) for l in range(len(blocks))}
    with trace(dict(enumerate(blocks)), edit_output=write_last(patches, "add")):
        return model(inputs)[:, -1, 0]
