"""Patched predictions: the greedy next token with ``h_l[-1]`` replaced by (or increased by) a vector, for many layers.

The layer sweep (one patched prediction per query and layer) has three equivalent implementations
(``method=``): ``"kv"`` runs each query's prompt once without its last token, keeps the KV cache, repeats it for
all layers, and recomputes only the last position with row ``(query, l)`` patched at block ``l`` (the last position
is the only one the patch changes, so the cache is shared; Hugging Face models only); a replacement at block ``l``
also makes blocks ``0 .. l`` of that row's last position useless, so they are skipped (about half the work of the
last-position pass); ``"batched"`` runs the whole query prompt once per layer in one batch (any model);
``"naive"`` runs one forward per (query, layer), the baseline of ``benchmarks/bench_task_vectors.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from icllib._checks import check_bool, check_choice, check_int
from icllib.llm import forward_last, is_hf_model, model_device, model_parts
from icllib.task_vectors.formats import PromptFormat, check_format
from icllib.task_vectors.forward import batches, check_prompts, repeat_cache, tokenize
from icllib.task_vectors.hooks import (MODES, blocks_at, check_layers, pass_through, record_structure,
                                       rows_per_layer, trace, write_last)

__all__ = ["patched_predictions", "METHODS"]

#: The implementations of the layer sweep (see the module docstring).
METHODS = ("kv", "batched", "naive")


def patched_predictions(
    model,
    tokenizer,
    prompts: Sequence[str],
    theta: torch.Tensor,
    layers: Sequence[int] | int | None = None,
    fmt: PromptFormat | str = "example",
    mode: str = "replace",
    method: str = "auto",
    max_rows: int = 512,
    progress: bool = False,
    return_logits: bool = False,
) -> torch.Tensor:
    """Greedy next-token ids with the last position patched after block ``l``: (n_prompts, len(layers)).

    ``out[i, k] = argmax f(prompts[i]; theta[i, k] at block layers[k])``. ``theta`` is (n_prompts, K, d) with one
    vector per prompt and layer (K = len(layers)), or (n_prompts, L, d) holding all blocks (the ones in
    ``layers`` are used), or (n_prompts, d) for a single layer. ``method`` is ``"kv"``, ``"batched"`` or ``"naive"``
    (see the module docstring); ``"auto"`` picks ``"kv"`` for Hugging Face models and ``"batched"`` otherwise.
    ``max_rows`` bounds the rows of one forward (prompts x layers). ``return_logits=True`` returns the float32
    next-token logits (n_prompts, len(layers), V) instead of their argmax.
    """
    fmt = check_format(fmt)
    check_choice("mode", mode, MODES)
    check_choice("method", method, ("auto", *METHODS))
    max_rows = check_int("max_rows", max_rows, minimum=1)
    prompts = check_prompts(prompts)
    parts = model_parts(model)
    layers = check_layers(layers, parts.n_layers)
    theta = _check_theta(theta, len(prompts), layers, parts.n_layers, parts.hidden_size)
    method = check_method(model, method)
    return_logits = check_bool("return_logits", return_logits)
    return _patched(model, tokenizer, prompts, theta, layers, fmt, mode, method, max_rows, progress, return_logits)


def check_method(model, method: str) -> str:
    """``method`` for this model: ``"auto"`` becomes ``"kv"`` for Hugging Face models, ``"batched"`` otherwise."""
    check_choice("method", method, ("auto", *METHODS))
    if method == "auto":
        return "kv" if is_hf_model(model) else "batched"
    if method == "kv" and not is_hf_model(model):
        raise ValueError("method='kv' needs a Hugging Face model (KV caches); use method='batched'")
    return method


def _check_theta(theta, n_prompts: int, layers: list[int], n_layers: int, hidden: int) -> torch.Tensor:
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise TypeError(f"theta must be a floating-point torch tensor, got {type(theta).__name__}")
    if theta.ndim == 2:
        if len(layers) != 1:
            raise ValueError(f"theta of shape {tuple(theta.shape)} holds one layer but layers={layers}")
        theta = theta[:, None, :]
    if theta.ndim != 3 or theta.shape[0] != n_prompts or theta.shape[2] != hidden:
        raise ValueError(
            f"theta must be ({n_prompts}, K, {hidden}) or ({n_prompts}, {hidden}), got {tuple(theta.shape)}"
        )
    if theta.shape[1] == len(layers):
        return theta
    if theta.shape[1] == n_layers:
        return theta[:, layers, :]
    raise ValueError(f"theta has {theta.shape[1]} layers; expected len(layers)={len(layers)} or L={n_layers}")


def _patched(model, tokenizer, prompts, theta, layers, fmt, mode, method, max_rows=512, progress=False,
             return_logits=False) -> torch.Tensor:
    """:func:`patched_predictions` on checked arguments (``theta`` (n, K, d), ``method`` not ``"auto"``)."""
    device = model_device(model)
    # what is kept of each forward's logits: (rows, V) would be 0.2 MB a row for a 49k vocabulary
    keep = (lambda logits: logits.float().cpu()) if return_logits else (lambda logits: logits.argmax(-1).cpu())
    if method == "naive":
        per_chunk = 1
    elif method == "kv" and mode == "replace" and not return_logits:
        per_chunk = max_rows  # the block-skipping sweep groups layers itself (at most max_rows rows a forward)
    else:
        per_chunk = max(1, max_rows // len(layers))
    out = None
    for chunk in tqdm(list(batches(len(prompts), per_chunk)), desc=f"patched sweep ({method})",
                      disable=not progress, leave=False):
        batch = tokenize(tokenizer, prompts[chunk], fmt, device)
        if method == "kv" and batch["attention_mask"].sum(-1).min() >= 2:
            got = _sweep_kv(model, batch, theta[chunk], layers, mode, keep, max_rows=max_rows)
        elif method == "naive":
            got = keep(_sweep_naive(model, batch, theta[chunk], layers, mode))
        else:  # "batched", or "kv" with a one-token prompt (no prefix to cache)
            rows = max(1, max_rows // len(layers))
            got = torch.cat([keep(_sweep_batched(model, {k: v[part] for k, v in batch.items()}, theta[chunk][part],
                                                 layers, mode))
                             for part in batches(len(theta[chunk]), rows)])
        if out is None:
            out = torch.empty((len(prompts), *got.shape[1:]), dtype=got.dtype)
        out[chunk] = got
    return out


def _patching(model, patches, mode: str):
    """Inside the block, ``patches`` (:func:`rows_per_layer`) are written at the last position."""
    return trace(blocks_at(model_parts(model).blocks, patches), edit_output=write_last(patches, mode))


def _sweep_batched(model, batch, theta, layers, mode) -> torch.Tensor:
    k_count = len(layers)
    ids = batch["input_ids"].repeat_interleave(k_count, 0)
    mask = batch["attention_mask"].repeat_interleave(k_count, 0)
    with _patching(model, rows_per_layer(len(theta), theta, layers), mode):
        logits, _ = forward_last(model, ids, mask)
    return logits.view(len(theta), k_count, -1)


def _sweep_kv(model, batch, theta, layers, mode, keep: Callable[[torch.Tensor], torch.Tensor],
              min_rows: int = 128, max_rows: int = 512) -> torch.Tensor:
    """The KV-cached sweep: the bare prompts' prefix once, then only the last position, block by block.

    Replacing ``h_l[-1]`` by ``theta`` discards everything blocks ``0 .. l`` computed at the last position, and
    positions before it are the same in every row (their keys and values are the cached prefix). So row
    ``(prompt, l)`` needs only blocks ``l + 1 .. L - 1`` at one position: layers are taken in groups of ``g``
    consecutive sweep layers (``g * n_prompts`` rows, at least ``min_rows`` when there are enough layers, at most
    ``max_rows``) and each group skips the blocks up to its first layer; rows of a later layer in the group run a
    few blocks whose output their own patch then overwrites. About half the work of running every row through
    all L blocks. ``mode="add"`` needs the unpatched ``h_l[-1]`` of each row, so it runs every block
    (:func:`_sweep_kv_all_blocks`).
    """
    if mode != "replace":
        return keep(_sweep_kv_all_blocks(model, batch, theta, layers, mode))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n, k_count = len(theta), len(layers)
    blocks = model_parts(model).blocks
    structure: dict[int, int] = {}
    with trace(blocks_at(blocks, range(len(blocks))), edit_output=record_structure(structure)):
        _, prefix_cache = forward_last(model, ids[:, :-1], mask[:, :-1], use_cache=True, logits=False)
    order = sorted(range(k_count), key=lambda k: layers[k])
    group = max(1, min(k_count, -(-min_rows // n), max_rows // n))
    out = None
    for start in range(0, k_count, group):
        members = order[start:start + group]
        g = len(members)
        cache = repeat_cache(copy.deepcopy(prefix_cache), g)  # the forward appends to its cache: use a copy
        patches = rows_per_layer(n, theta[:, members, :], [layers[k] for k in members])
        # blocks 0 .. (first layer of the group) return their input: every row's output there is overwritten
        with trace(blocks_at(blocks, range(layers[members[0]] + 1)), forward=pass_through(structure)), \
                _patching(model, patches, mode):
            logits, _ = forward_last(model, ids[:, -1:].repeat_interleave(g, 0), mask.repeat_interleave(g, 0),
                                     past_key_values=cache)
        got = keep(logits.view(n, g, -1))  # (n, g) ids or (n, g, V) logits
        if out is None:
            out = torch.empty((n, k_count, *got.shape[2:]), dtype=got.dtype)
        out[:, members] = got
    return out


def _sweep_kv_all_blocks(model, batch, theta, layers, mode) -> torch.Tensor:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    k_count = len(layers)
    # The patch changes only the last position, so positions 0..T-2 (and their keys/values) are the same for every
    # layer: compute them once, then recompute the last token for all (prompt, layer) rows at once.
    _, cache = forward_last(model, ids[:, :-1], mask[:, :-1], use_cache=True, logits=False)
    cache = repeat_cache(cache, k_count)
    last = ids[:, -1:].repeat_interleave(k_count, 0)
    full_mask = mask.repeat_interleave(k_count, 0)
    with _patching(model, rows_per_layer(len(theta), theta, layers), mode):
        logits, _ = forward_last(model, last, full_mask, past_key_values=cache)
    return logits.view(len(theta), k_count, -1)


def _sweep_naive(model, batch, theta, layers, mode) -> torch.Tensor:
    out = []
    for i in range(len(theta)):
        keep = batch["attention_mask"][i].bool()
        ids, mask = batch["input_ids"][i:i + 1, keep], batch["attention_mask"][i:i + 1, keep]
        for k, layer in enumerate(layers):
            with _patching(model, {layer: (torch.tensor([0]), theta[i:i + 1, k, :])}, mode):
                logits, _ = forward_last(model, ids, mask)
            out.append(logits[0])
    return torch.stack(out).view(len(theta), len(layers), -1)
