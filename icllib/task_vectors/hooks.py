"""The one hook primitive: :func:`trace` runs chosen submodules with edit functions, like baukit's ``TraceDict``.

``trace(modules, edit_output=fn)`` hooks every module of the mapping ``{key: module}`` for the duration of a
``with`` block; after ``modules[key]`` runs, ``fn(key, output)`` sees its output and may return a replacement.
``edit_input`` sees (and may replace) the positional and keyword arguments before the module runs, so that the
input of any submodule can be read or changed (e.g. the per-head input of an attention output projection);
``forward`` replaces the module's computation altogether (hooks still run). Everything is removed on exit, even
after an exception.

What the task-vector method does with the residual stream after decoder block ``l`` is a small edit function:
:func:`read_last` (store ``h_l[-1]``), :func:`write_last` (replace or add at ``h_l[-1]``), :func:`record_structure`
(what a block returns), :func:`pass_through` (skip a block). :func:`capture_last_position` and
:func:`patch_last_position` are the checked entry points on a model's decoder blocks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from icllib._checks import check_choice, check_int
from icllib.llm import model_parts

__all__ = [
    "trace",
    "read_last",
    "write_last",
    "record_structure",
    "pass_through",
    "capture_last_position",
    "patch_last_position",
    "layer_patches",
]

MODES = ("replace", "add")
Patches = Mapping[int, tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------------------------
# The primitive
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def trace(
    modules: Mapping[Hashable, nn.Module],
    edit_output: Callable | None = None,
    edit_input: Callable | None = None,
    forward: Callable | None = None,
) -> Iterator[None]:
    """Inside the block, every ``modules[key]`` runs with the given edit functions (each may be None).

    - ``edit_input(key, args, kwargs)`` before the module runs: returns None (unchanged) or new ``(args, kwargs)``;
    - ``forward(key, *args, **kwargs)`` instead of the module's own ``forward`` (its hooks still run);
    - ``edit_output(key, output)`` after it: returns None (unchanged) or the output to use instead.
    """
    handles, saved = [], []
    try:
        for key, module in modules.items():
            if edit_input is not None:
                handles.append(module.register_forward_pre_hook(_input_hook(edit_input, key), with_kwargs=True))
            if edit_output is not None:
                handles.append(module.register_forward_hook(_output_hook(edit_output, key)))
            if forward is not None:
                saved.append((module, module.__dict__.get("forward")))  # an instance forward (accelerate) is put back
                module.forward = functools.partial(forward, key)
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, own in saved:
            if own is None:
                del module.forward
            else:
                module.forward = own


def _input_hook(edit: Callable, key: Hashable) -> Callable:
    def hook(module, args, kwargs):
        return edit(key, args, kwargs)

    return hook


def _output_hook(edit: Callable, key: Hashable) -> Callable:
    def hook(module, args, output):
        return edit(key, output)

    return hook


# ----------------------------------------------------------------------------------------------------------------
# Edit functions on a decoder block's output (a hidden-state tensor, or a tuple whose first entry is one)
# ----------------------------------------------------------------------------------------------------------------
def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def read_last(store: dict) -> Callable:
    """An ``edit_output`` that stores ``h[:, -1, :]`` (B, d) of module ``key`` in ``store[key]``."""
    def edit(key, output):
        store[key] = _hidden(output)[:, -1, :].detach().clone()

    return edit


def write_last(patches: Patches, mode: str = "replace") -> Callable:
    """An ``edit_output`` that sets (``"replace"``) or increases (``"add"``) ``h[rows, -1, :]`` by ``vectors``,
    with ``patches[key] = (rows, vectors)``; other rows and positions are untouched."""
    def edit(key, output):
        rows, vectors = patches[key]
        h = _hidden(output).clone()  # a fresh tensor: the block's own output may be referenced elsewhere
        v = vectors.to(device=h.device, dtype=h.dtype)
        r = rows.to(h.device)
        if mode == "replace":
            h[r, -1, :] = v
        else:
            h[r, -1, :] += v
        return (h, *output[1:]) if isinstance(output, tuple) else h

    return edit


def record_structure(structure: dict) -> Callable:
    """An ``edit_output`` that records what module ``key`` returns: 0 for a tensor, else the length of its tuple."""
    def edit(key, output):
        structure[key] = len(output) if isinstance(output, tuple) else 0

    return edit


def pass_through(structure: Mapping) -> Callable:
    """A ``forward`` that returns the block's input hidden state unchanged, shaped like its real output
    (``structure`` from :func:`record_structure`: a tensor, or a tuple whose other entries are None).

    For skipping blocks whose output at the rows that matter is overwritten anyway, with a KV cache that the
    skipped blocks' attention no longer needs (their cache layers are simply not extended)."""
    def forward(key, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        length = structure[key]
        return (hidden, *([None] * (length - 1))) if length else hidden

    return forward


# ----------------------------------------------------------------------------------------------------------------
# Checked entry points on a model's decoder blocks
# ----------------------------------------------------------------------------------------------------------------
def blocks_at(blocks: Sequence[nn.Module], layers) -> dict[int, nn.Module]:
    """``{l: blocks[l]}`` for the given block indices (the ``modules`` argument of :func:`trace`)."""
    return {l: blocks[l] for l in layers}


@contextlib.contextmanager
def capture_last_position(model, layers: Sequence[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, every forward stores block ``l``'s output at position ``-1``: ``store[l]`` is (B, d).

    (``h_l[-1]``, the quantity a task vector is made of; block indices are 0-based, ``l = 0 .. L-1``.)
    """
    parts = model_parts(model)
    layers = range(parts.n_layers) if layers is None else [check_layer(l, parts.n_layers) for l in layers]
    store: dict[int, torch.Tensor] = {}
    with trace(blocks_at(parts.blocks, layers), edit_output=read_last(store)):
        yield store


@contextlib.contextmanager
def patch_last_position(model, patches: Patches, mode: str = "replace") -> Iterator[None]:
    """Inside the block, after block ``l`` the last position of rows ``rows`` gets ``vectors``.

    ``patches[l] = (rows, vectors)`` with ``rows`` a LongTensor (n,) of batch rows and ``vectors`` (n, d).
    ``mode="replace"`` sets ``h_l[-1] = theta`` (the task-vector intervention); ``mode="add"`` sets
    ``h_l[-1] += theta`` (the function-vector intervention of Todd et al. 2024). Other rows and positions are
    untouched, so every later block sees the patched state.
    """
    check_choice("mode", mode, MODES)
    parts = model_parts(model)
    checked = {}
    for layer, (rows, vectors) in patches.items():
        layer = check_layer(layer, parts.n_layers)
        rows = torch.as_tensor(rows, dtype=torch.long)
        if vectors.ndim != 2 or vectors.shape[0] != rows.numel():
            raise ValueError(f"patch at layer {layer}: vectors must be ({rows.numel()}, d), got {tuple(vectors.shape)}")
        checked[layer] = (rows, vectors)
    with trace(blocks_at(parts.blocks, checked), edit_output=write_last(checked, mode)):
        yield


def layer_patches(n_prompts: int, theta: torch.Tensor, layers: Sequence[int]) -> dict[int, tuple[torch.Tensor,
                                                                                                  torch.Tensor]]:
    """The ``patches`` argument of :func:`patch_last_position` for a batch of ``n_prompts * K`` rows.

    Row ``i * K + k`` (prompt ``i`` repeated K = ``len(layers)`` times, adjacent) gets ``theta[i, k]`` at block
    ``layers[k]``: one patched forward evaluates every (prompt, layer) pair of a sweep. ``theta`` is
    (n_prompts, K, d); ``layers`` must not repeat (each block takes one set of rows).
    """
    n_prompts = check_int("n_prompts", n_prompts, minimum=1)
    if not isinstance(theta, torch.Tensor) or theta.ndim != 3:
        shape = f"shape {tuple(theta.shape)}" if isinstance(theta, torch.Tensor) else type(theta).__name__
        raise TypeError(f"theta must be a torch tensor of shape (n_prompts, K, d), got {shape}")
    if isinstance(layers, (int, np.integer)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of block indices, got {type(layers).__name__}")
    layers = [check_int("layers[i]", l, minimum=0) for l in layers]
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be a non-empty list without repeats, got {layers}")
    if tuple(theta.shape[:2]) != (n_prompts, len(layers)):
        raise ValueError(
            f"theta must have shape (n_prompts={n_prompts}, K={len(layers)}, d), got {tuple(theta.shape)}"
        )
    return rows_per_layer(n_prompts, theta, layers)


def rows_per_layer(n_prompts: int, theta: torch.Tensor, layers: Sequence[int]) -> dict:
    """:func:`layer_patches` without the checks (for callers whose arguments are already checked)."""
    base = torch.arange(n_prompts) * len(layers)
    return {layer: (base + k, theta[:, k, :]) for k, layer in enumerate(layers)}


def check_layer(layer, n_layers: int) -> int:
    """A block index ``0 <= layer < n_layers``."""
    return check_int("layer", layer, minimum=0, maximum=n_layers - 1)


def check_layers(layers, n_layers: int) -> list[int]:
    """``None`` (every block), one block index or a list of distinct ones, as a list."""
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    layers = [check_int("layers[i]", l, minimum=0, maximum=n_layers - 1) for l in layers]
    if not layers:
        raise ValueError("layers must name at least one block, got none")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat, got {layers}")
    return layers
