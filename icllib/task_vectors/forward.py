"""Unpatched forwards in batches: last-position states ``h_l[-1]``, task vectors ``theta_l(S)``, greedy predictions.

Every batch is left padded, so position ``-1`` is the last token of every row. Prompts are run shortest first (a
batch pads as little as possible) and results come back in the prompts' order. Prompts that share a prefix (the
demonstrations of one set) run the prefix once and reuse its KV cache (:func:`grouped_last_states`).

The public functions check their arguments once; the private ``_cores`` they call trust them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from icllib._checks import check_int
from icllib.llm import encode, forward_last, is_hf_model, model_device, model_parts, tokenize_left_padded
from icllib.task_vectors.formats import PromptFormat, check_format
from icllib.task_vectors.hooks import blocks_at, read_last, trace

__all__ = ["last_position_states", "grouped_last_states", "extract_task_vectors", "predict"]

Pair = tuple[str, str]


# ----------------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------------
def last_position_states(
    model, tokenizer, prompts: Sequence[str], fmt: PromptFormat | str = "example", batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """``h_l(prompt)[-1]`` for every prompt and every block: a float32 tensor (n_prompts, L, d)."""
    fmt, batch_size = check_format(fmt), check_int("batch_size", batch_size, minimum=1)
    states, _ = _forward_sorted(model, tokenizer, check_prompts(prompts), fmt, batch_size, progress, capture=True,
                                desc="hidden states")
    return states


def predict(
    model, tokenizer, prompts: Sequence[str], fmt: PromptFormat | str = "example", batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Greedy next-token ids (n_prompts,) of the unpatched model (ICL with ``[S, x]``, zero-shot with ``[x]``)."""
    fmt, batch_size = check_format(fmt), check_int("batch_size", batch_size, minimum=1)
    return _predict(model, tokenizer, check_prompts(prompts), fmt, batch_size, progress)


def grouped_last_states(
    model, tokenizer, groups: Sequence[Sequence[str]], fmt: PromptFormat | str = "example", batch_size: int = 32,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_l(prompt)[-1]`` for every block and the greedy next token, for groups of prompts sharing a prefix.

    All groups hold the same number c of prompts (e.g. ``[S, x'_1], [S, x'_2], [S, x]`` of one demonstration
    set). The token prefix a group shares is run once and its KV cache reused for the c continuations, which
    roughly halves the cost of extracting theta(S) (the demonstrations dominate the prompt). Returns
    ``states`` (G, c, L, d) and ``next_ids`` (G, c). Identical to running every prompt alone (up to float
    rounding); models without KV caches (non-Hugging-Face) are run prompt by prompt in batches.
    """
    fmt, batch_size = check_format(fmt), check_int("batch_size", batch_size, minimum=1)
    if isinstance(groups, str) or len(groups) == 0:
        raise ValueError("groups must be a non-empty list of lists of prompts")
    sizes = {len(g) for g in groups}
    if len(sizes) != 1 or 0 in sizes or any(isinstance(g, str) for g in groups):
        raise ValueError(
            f"every group must be a non-empty list of prompts of the same length, got sizes {sorted(sizes)}"
        )
    return _grouped_states(model, tokenizer, groups, fmt, batch_size, progress)


def extract_task_vectors(
    model, tokenizer, demo_sets: Sequence[Sequence[Pair]], dummy_queries: Sequence[Sequence[str]],
    fmt: PromptFormat | str = "example", batch_size: int = 32, progress: bool = False,
) -> torch.Tensor:
    """``theta_l(S)`` for every demonstration set and every block: (n_sets, L, d), float32.

    ``theta_l(S) = mean over x' in dummy_queries[i] of h_l([S_i, x'])[-1]`` (the paper averages over 2 dummies x',
    inputs of the task that are neither in S nor the test query). Every set needs the same number of dummies.
    """
    if len(demo_sets) != len(dummy_queries):
        raise ValueError(f"demo_sets ({len(demo_sets)}) and dummy_queries ({len(dummy_queries)}) differ in length")
    if len(demo_sets) == 0:
        raise ValueError("demo_sets must hold at least one demonstration set")
    fmt, batch_size = check_format(fmt), check_int("batch_size", batch_size, minimum=1)
    for i, dummies in enumerate(dummy_queries):
        if isinstance(dummies, str) or len(dummies) == 0:
            raise ValueError(f"dummy_queries[{i}] must be a non-empty list of inputs, got {dummies!r}")
    if len({len(dummies) for dummies in dummy_queries}) != 1:
        raise ValueError(f"dummy_queries must hold the same number of dummies for every set (same length), got "
                         f"{sorted({len(dummies) for dummies in dummy_queries})}")
    return _extract(model, tokenizer, demo_sets, dummy_queries, fmt, batch_size, progress)


def check_prompts(prompts) -> list[str]:
    """A non-empty list of prompt strings."""
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    return prompts


# ----------------------------------------------------------------------------------------------------------------
# Cores (arguments already checked)
# ----------------------------------------------------------------------------------------------------------------
def _predict(model, tokenizer, prompts, fmt: PromptFormat, batch_size: int, progress: bool = False) -> torch.Tensor:
    _, ids = _forward_sorted(model, tokenizer, prompts, fmt, batch_size, progress, capture=False, desc="predict")
    return ids


def _extract(model, tokenizer, demo_sets, dummy_queries, fmt: PromptFormat, batch_size: int,
             progress: bool = False) -> torch.Tensor:
    groups = [[fmt.prompt(demos, dummy) for dummy in dummies] for demos, dummies in zip(demo_sets, dummy_queries)]
    states, _ = _grouped_states(model, tokenizer, groups, fmt, batch_size, progress)
    return states.mean(dim=1)


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` out of ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def tokenize(tokenizer, prompts: Sequence[str], fmt: PromptFormat, device) -> dict[str, torch.Tensor]:
    """A left-padded batch of ``prompts`` (BOS first when ``fmt.bos``)."""
    return tokenize_left_padded(tokenizer, list(prompts), add_bos=fmt.bos, device=device)


def _reading(parts, store: dict):
    """Inside the block, ``store[l]`` is block ``l``'s output at the last position (every block)."""
    return trace(blocks_at(parts.blocks, range(parts.n_layers)), edit_output=read_last(store))


def _last_states(parts, store) -> torch.Tensor:
    """The captured ``h_l[-1]`` of every block as float32 on the CPU: (B, L, d)."""
    return torch.stack([store[l] for l in range(parts.n_layers)], dim=1).float().cpu()


def _forward_sorted(
    model, tokenizer, prompts: Sequence[str], fmt: PromptFormat, batch_size: int, progress: bool, capture: bool,
    desc: str,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One forward per batch of prompts, shortest first: ``(h_l[-1] (n, L, d) or None, greedy next ids (n,))``.

    The batching behind :func:`last_position_states` and :func:`predict` (and both at once, in one pass, for
    :func:`grouped_last_states` on models without KV caches).
    """
    parts = model_parts(model)
    device = model_device(model)
    order = _by_length(tokenizer, prompts, fmt)
    states = torch.empty((len(prompts), parts.n_layers, parts.hidden_size)) if capture else None
    ids = torch.empty(len(prompts), dtype=torch.long)
    store: dict[int, torch.Tensor] = {}
    for chunk in tqdm(list(batches(len(prompts), batch_size)), desc=desc, disable=not progress, leave=False):
        members = torch.tensor(order[chunk])
        batch = tokenize(tokenizer, [prompts[i] for i in members.tolist()], fmt, device)
        with _reading(parts, store) if capture else contextlib.nullcontext():
            logits, _ = forward_last(model, **batch)
        if capture:
            states[members] = _last_states(parts, store)
        ids[members] = logits.argmax(-1).cpu()
    return states, ids


def _by_length(tokenizer, prompts: Sequence[str], fmt: PromptFormat) -> list[int]:
    """Prompt indices sorted by token count, so that a batch pads as little as possible."""
    lengths = [len(r) for r in token_rows(tokenizer, prompts, fmt)]
    return sorted(range(len(prompts)), key=lambda i: lengths[i])


def token_rows(tokenizer, prompts: Sequence[str], fmt: PromptFormat) -> list[list[int]]:
    """Each prompt's token ids exactly as :func:`tokenize_left_padded` would produce them (BOS included)."""
    bos = [tokenizer.bos_token_id] if fmt.bos else []
    return [bos + encode(tokenizer, p) for p in prompts]


# ----------------------------------------------------------------------------------------------------------------
# Groups of prompts that share a prefix: the prefix once, its KV cache repeated
# ----------------------------------------------------------------------------------------------------------------
def _grouped_states(model, tokenizer, groups, fmt: PromptFormat, batch_size: int, progress: bool = False):
    """:func:`grouped_last_states` on checked arguments."""
    c, n_groups = len(groups[0]), len(groups)
    if not is_hf_model(model):
        flat = [p for g in groups for p in g]
        states, ids = _forward_sorted(model, tokenizer, flat, fmt, batch_size, progress, capture=True,
                                      desc="prompts")
        return states.view(n_groups, c, *states.shape[1:]), ids.view(n_groups, c)
    parts = model_parts(model)
    rows = [token_rows(tokenizer, g, fmt) for g in groups]
    prefix_len = [_shared_prefix(group_rows) for group_rows in rows]
    order = sorted(range(n_groups), key=lambda g: (prefix_len[g], max(len(r) for r in rows[g])))  # less padding
    states = torch.empty((n_groups, c, parts.n_layers, parts.hidden_size))
    next_ids = torch.empty((n_groups, c), dtype=torch.long)
    for chunk in tqdm(list(batches(n_groups, max(1, batch_size // c))), desc="prompts", disable=not progress,
                      leave=False):
        members = order[chunk]
        got, logits = _group_forward(model, parts, [rows[g] for g in members], [prefix_len[g] for g in members],
                                     int(tokenizer.pad_token_id))
        index = torch.tensor(members)
        states[index] = got.view(len(members), c, parts.n_layers, parts.hidden_size)
        next_ids[index] = logits.argmax(-1).cpu().view(len(members), c)
    return states, next_ids


def _shared_prefix(group_rows: list[list[int]]) -> int:
    """The longest common token prefix, leaving at least one token of each prompt to run with the cache."""
    n = min(len(r) for r in group_rows) - 1
    for i in range(n):
        if any(r[i] != group_rows[0][i] for r in group_rows[1:]):
            return i
    return n


def _group_forward(model, parts, rows: list[list[list[int]]], prefix_len: list[int], pad: int):
    """One batch of groups: ``(h_l[-1] (G*c, L, d) float32 on the CPU, next-token logits (G*c, V))``.

    Row ``j * c + k`` holds prompt ``k`` of group ``j``: its prefix right-aligned at ``p_max`` and its continuation
    right-aligned at the end. The prefixes run once per group (rows ``j * c``) and their cache is repeated ``c`` times.
    """
    c = len(rows[0])
    p_max = max(prefix_len)
    cont = [r[p:] for group_rows, p in zip(rows, prefix_len) for r in group_rows]
    c_max = max(len(r) for r in cont)
    full_ids = torch.full((len(rows) * c, p_max + c_max), pad, dtype=torch.long)
    mask = torch.zeros_like(full_ids)
    for j, (group_rows, p) in enumerate(zip(rows, prefix_len)):
        for k, r in enumerate(group_rows):
            row = j * c + k
            full_ids[row, p_max - p:p_max] = torch.tensor(r[:p], dtype=torch.long)
            mask[row, p_max - p:p_max] = 1
            tail = r[p:]
            full_ids[row, p_max + c_max - len(tail):] = torch.tensor(tail, dtype=torch.long)
            mask[row, p_max + c_max - len(tail):] = 1
    device = model_device(model)
    full_ids, mask = full_ids.to(device), mask.to(device)
    cache = None
    if p_max > 0:
        _, cache = forward_last(model, full_ids[::c, :p_max], mask[::c, :p_max], use_cache=True, logits=False)
        cache = repeat_cache(cache, c)
    store: dict[int, torch.Tensor] = {}
    with _reading(parts, store):
        logits, _ = forward_last(model, full_ids[:, p_max:], mask, past_key_values=cache)
    return _last_states(parts, store), logits


def repeat_cache(cache, repeats: int):
    """Each row of a KV cache repeated ``repeats`` times, adjacent (row i -> rows i*repeats .. i*repeats+r-1)."""
    if hasattr(cache, "batch_repeat_interleave"):  # transformers >= 4.36 Cache objects (DynamicCache in 5.x)
        cache.batch_repeat_interleave(repeats)
        return cache
    if isinstance(cache, tuple):  # legacy tuple-of-tuples caches (the reference code's assumption)
        return tuple(tuple(t.repeat_interleave(repeats, 0) for t in layer) for layer in cache)
    raise TypeError(f"unsupported KV cache type {type(cache).__name__}")
