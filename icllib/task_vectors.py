"""Task vectors (Hendel, Geva & Globerson 2023): ICL as a hypothesis class ``T([S, x]) = f(x; theta(S))``.

The paper's claim is that a causal LM reading a prompt of demonstrations ``S`` and a query ``x`` first compresses
``S`` into one vector ``theta(S)``, the residual stream after decoder block ``L`` at the prompt's last token, and
then computes the answer as a function of the query and that vector alone. The test (Section 3, their Eq. 2):

1. *extract*: run ``[S, x']`` for dummy queries ``x'`` (not the real ``x``) and read block ``l``'s output at the
   last position; average over the dummies: ``theta_l(S) = mean_{x'} h_l([S, x'])[-1]``;
2. *patch*: run the bare query ``[x]`` and, after block ``L``, **replace** its last-position state by
   ``theta_L(S)``; the argmax next token is the task-vector prediction ``f(x; theta_L(S))``;
3. *choose* ``L`` on dev demonstration sets (first maximum of dev accuracy over layers), report test accuracy beside
   zero-shot (``[x]`` alone) and ICL (``[S, x]``).

The functions here take any causal LM that :mod:`icllib.llm` can take apart (Hugging Face or a model with
``model_parts()``), any tokenizer-like object, and any list of ``(x, y)`` string pairs. Every prompt batch is left
padded, so position ``-1`` is the last token of every row.

The layer sweep (one patched prediction per query and layer) has three equivalent implementations
(``method=``): ``"kv"`` runs each query's prompt once without its last token, keeps the KV cache, repeats it for
all layers, and recomputes only the last position with row ``(query, l)`` patched at block ``l`` (the last position
is the only one the patch changes, so the cache is shared; Hugging Face models only); a replacement at block ``l``
also makes blocks ``0 .. l`` of that row's last position useless, so they are skipped (about half the work of the
last-position pass); ``"batched"`` runs the whole query prompt once per layer in one batch (any model);
``"naive"`` runs one forward per (query, layer), the baseline of ``benchmarks/bench_task_vectors.py``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from icllib._checks import check_choice, check_int, check_pairs
from icllib.llm import (encode, forward_last, is_hf_model, model_device, model_parts,
                        tokenize_left_padded)

__all__ = [
    "PromptFormat",
    "FORMATS",
    "DEFAULT_FORMAT",
    "format_prompt",
    "capture_last_position",
    "patch_last_position",
    "last_position_states",
    "extract_task_vectors",
    "predict",
    "patched_predictions",
    "layer_patches",
    "grouped_last_states",
    "task_vectors_for",
    "TaskVectorResult",
    "evaluate",
    "evaluate_task",
    "format_for_task",
    "ConflictResult",
    "conflicting_tasks",
    "project_to_vocabulary",
    "exact_match",
    "PAPER_AVERAGES",
    "PAPER_CATEGORIES",
    "PAPER_LAYER_PEAKS",
]

Pair = tuple[str, str]
Scorer = Callable[[str, str, str], bool]

#: Mean (baseline, task vector, ICL) accuracy over the 18 tasks per model in Hendel et al. (2023), 5 demonstrations.
PAPER_AVERAGES: dict[str, tuple[float, float, float]] = {
    "LLaMA 7B": (0.13, 0.78, 0.86),
    "LLaMA 13B": (0.15, 0.79, 0.87),
    "LLaMA 30B": (0.16, 0.78, 0.90),
    "GPT-J 6B": (0.12, 0.68, 0.81),
    "Pythia 2.8B": (0.13, 0.72, 0.83),
    "Pythia 6.9B": (0.11, 0.71, 0.82),
    "Pythia 12B": (0.11, 0.73, 0.82),
}
#: The same, per task category, over all 7 models.
PAPER_CATEGORIES: dict[str, tuple[float, float, float]] = {
    "algorithmic": (0.16, 0.80, 0.89),
    "translation": (0.13, 0.61, 0.76),
    "linguistic": (0.13, 0.81, 0.89),
    "knowledge": (0.08, 0.72, 0.82),
}
#: Peak of the mean dev-accuracy layer curve (tasks whose best accuracy > 0.75) as (accuracy, block, number of
#: blocks), read from the paper's Figure 3 and released tables (approximate for the Pythia models and GPT-J).
PAPER_LAYER_PEAKS: dict[str, tuple[float, int, int]] = {
    "LLaMA 7B": (0.86, 14, 32),
    "LLaMA 13B": (0.80, 15, 40),
    "LLaMA 30B": (0.77, 18, 60),
    "GPT-J 6B": (0.65, 12, 28),
    "Pythia 2.8B": (0.75, 13, 32),
    "Pythia 6.9B": (0.78, 13, 32),
    "Pythia 12B": (0.80, 12, 36),
}

_METHODS = ("kv", "batched", "naive")
_MODES = ("replace", "add")


# ----------------------------------------------------------------------------------------------------------------
# Prompt formats
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptFormat:
    """How ``S = ((x_1, y_1), ..., (x_k, y_k))`` and a query ``x`` become one string.

    Each demonstration is ``prefix + x_i + arrow + (" " if output_space) + y_i``; demonstrations are joined by
    ``separator``; the query line is ``prefix + x + arrow`` (the model's next token is the answer). ``bos`` puts the
    tokenizer's BOS token first. The reference code's format is ``example:x->y`` lines (``prefix="example:"``,
    ``arrow="->"``); the paper's figures write ``x -> y``.
    """

    prefix: str = "example:"
    arrow: str = "->"
    separator: str = "\n"
    output_space: bool = True
    bos: bool = False

    def __post_init__(self) -> None:
        for name in ("prefix", "arrow", "separator"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not self.arrow:
            raise ValueError("arrow must be a non-empty string (it ends every query line), got ''")
        for name in ("output_space", "bos"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def demo(self, x: str, y: str) -> str:
        """One demonstration line."""
        return f"{self.prefix}{x}{self.arrow}{' ' if self.output_space else ''}{y}"

    def query(self, x: str) -> str:
        """The query line (also the whole zero-shot and task-vector prompt)."""
        return f"{self.prefix}{x}{self.arrow}"


#: The formats compared in Chapter 6 (the prompt-format ablation).
FORMATS: dict[str, PromptFormat] = {
    "bare": PromptFormat(prefix="", arrow=" ->"),
    "bare+bos": PromptFormat(prefix="", arrow=" ->", bos=True),
    "example": PromptFormat(prefix="example:", arrow="->"),
    "example+bos": PromptFormat(prefix="example:", arrow="->", bos=True),
    "qa+bos": PromptFormat(prefix="Q: ", arrow="\nA:", separator="\n\n", bos=True),
}


#: The book's default, the reference code's ``example:x->y`` (Chapter 6 compares the formats on dev data).
DEFAULT_FORMAT = "example"


def _check_format(fmt) -> PromptFormat:
    if isinstance(fmt, str):
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be a PromptFormat or one of {list(FORMATS)}, got {fmt!r}")
        return FORMATS[fmt]
    if not isinstance(fmt, PromptFormat):
        raise TypeError(f"fmt must be a PromptFormat or one of {list(FORMATS)}, got {type(fmt).__name__}")
    return fmt


def format_prompt(demos: Sequence[Pair], x: str, fmt: PromptFormat | str = "example") -> str:
    """The ICL prompt ``[S, x]`` as text (without BOS, which tokenisation adds when ``fmt.bos``).

    With no demonstrations it is the zero-shot prompt ``[x]``, the one the task vector is patched into.
    """
    fmt = _check_format(fmt)
    if not isinstance(x, str):
        raise TypeError(f"x must be a string, got {type(x).__name__}")
    lines = [fmt.demo(dx, dy) for dx, dy in check_pairs("demos", demos, allow_empty=True)]
    return fmt.separator.join([*lines, fmt.query(x)])


# ----------------------------------------------------------------------------------------------------------------
# Reading and writing the residual stream at the last position
# ----------------------------------------------------------------------------------------------------------------
def _hidden(out):
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def capture_last_position(model, layers: Sequence[int] | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, every forward stores block ``l``'s output at position ``-1``: ``store[l]`` is (B, d).

    (``h_l[-1]``, the quantity a task vector is made of; block indices are 0-based, ``l = 0 .. L-1``.)
    """
    parts = model_parts(model)
    layers = range(parts.n_layers) if layers is None else [_check_layer(l, parts.n_layers) for l in layers]
    store: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):
        def hook(module, args, out):
            store[layer] = _hidden(out)[:, -1, :].detach().clone()

        return hook

    handles = [parts.blocks[l].register_forward_hook(make_hook(l)) for l in layers]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def patch_last_position(
    model, patches: Mapping[int, tuple[torch.Tensor, torch.Tensor]], mode: str = "replace"
) -> Iterator[None]:
    """Inside the block, after block ``l`` the last position of rows ``rows`` gets ``vectors``.

    ``patches[l] = (rows, vectors)`` with ``rows`` a LongTensor (n,) of batch rows and ``vectors`` (n, d).
    ``mode="replace"`` sets ``h_l[-1] = theta`` (the task-vector intervention); ``mode="add"`` sets
    ``h_l[-1] += theta`` (the function-vector intervention of Todd et al. 2024). Other rows and positions are
    untouched, so every later block sees the patched state.
    """
    check_choice("mode", mode, _MODES)
    parts = model_parts(model)
    checked = {}
    for layer, (rows, vectors) in patches.items():
        layer = _check_layer(layer, parts.n_layers)
        rows = torch.as_tensor(rows, dtype=torch.long)
        if vectors.ndim != 2 or vectors.shape[0] != rows.numel():
            raise ValueError(f"patch at layer {layer}: vectors must be ({rows.numel()}, d), got {tuple(vectors.shape)}")
        checked[layer] = (rows, vectors)

    def make_hook(rows: torch.Tensor, vectors: torch.Tensor):
        def hook(module, args, out):
            h = _hidden(out).clone()  # a fresh tensor: the block's own output may be referenced elsewhere
            v = vectors.to(device=h.device, dtype=h.dtype)
            r = rows.to(h.device)
            if mode == "replace":
                h[r, -1, :] = v
            else:
                h[r, -1, :] += v
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    handles = [parts.blocks[l].register_forward_hook(make_hook(r, v)) for l, (r, v) in checked.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_layer(layer, n_layers: int) -> int:
    return check_int("layer", layer, minimum=0, maximum=n_layers - 1)


def _check_layers(layers, n_layers: int) -> list[int]:
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


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _tokenize(tokenizer, prompts: Sequence[str], fmt: PromptFormat, device) -> dict[str, torch.Tensor]:
    return tokenize_left_padded(tokenizer, list(prompts), add_bos=fmt.bos, device=device)


def last_position_states(
    model, tokenizer, prompts: Sequence[str], fmt: PromptFormat | str = "example", batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """``h_l(prompt)[-1]`` for every prompt and every block: a float32 tensor (n_prompts, L, d)."""
    states, _ = _forward_sorted(model, tokenizer, prompts, fmt, batch_size, progress, capture=True,
                                desc="hidden states")
    return states


def _forward_sorted(
    model, tokenizer, prompts: Sequence[str], fmt, batch_size: int, progress: bool, capture: bool, desc: str,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One forward per batch of prompts, shortest first: ``(h_l[-1] (n, L, d) or None, greedy next ids (n,))``.

    The batching behind :func:`last_position_states` and :func:`predict` (and both at once, in one pass, for
    :func:`grouped_last_states` on models without KV caches). Prompts are sorted by token count so that a
    left-padded batch pads as little as possible; outputs are in the prompts' order.
    """
    fmt = _check_format(fmt)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    parts = model_parts(model)
    device = model_device(model)
    order = _by_length(tokenizer, prompts, fmt)
    states = torch.empty((len(prompts), parts.n_layers, parts.hidden_size)) if capture else None
    ids = torch.empty(len(prompts), dtype=torch.long)
    for chunk in tqdm(list(_batches(len(prompts), batch_size)), desc=desc, disable=not progress, leave=False):
        members = torch.tensor(order[chunk])
        batch = _tokenize(tokenizer, [prompts[i] for i in members.tolist()], fmt, device)
        with capture_last_position(model) if capture else contextlib.nullcontext({}) as store:
            logits, _ = forward_last(model, **batch)
        if capture:
            states[members] = torch.stack([store[l] for l in range(parts.n_layers)], dim=1).float().cpu()
        ids[members] = logits.argmax(-1).cpu()
    return states, ids


def _by_length(tokenizer, prompts: Sequence[str], fmt: PromptFormat) -> list[int]:
    """Prompt indices sorted by token count, so that a batch pads as little as possible."""
    lengths = [len(r) for r in _token_rows(tokenizer, prompts, fmt)]
    return sorted(range(len(prompts)), key=lambda i: lengths[i])


def _token_rows(tokenizer, prompts: Sequence[str], fmt: PromptFormat) -> list[list[int]]:
    """Each prompt's token ids exactly as :func:`tokenize_left_padded` would produce them (BOS included)."""
    bos = [tokenizer.bos_token_id] if fmt.bos else []
    return [bos + encode(tokenizer, p) for p in prompts]


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
    fmt = _check_format(fmt)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if isinstance(groups, str) or len(groups) == 0:
        raise ValueError("groups must be a non-empty list of lists of prompts")
    sizes = {len(g) for g in groups}
    if len(sizes) != 1 or 0 in sizes or any(isinstance(g, str) for g in groups):
        raise ValueError(
            f"every group must be a non-empty list of prompts of the same length, got sizes {sorted(sizes)}"
        )
    c = sizes.pop()
    parts = model_parts(model)
    n_groups = len(groups)
    if not is_hf_model(model):
        flat = [p for g in groups for p in g]
        states, ids = _forward_sorted(model, tokenizer, flat, fmt, batch_size, progress, capture=True,
                                      desc="prompts")
        return states.view(n_groups, c, *states.shape[1:]), ids.view(n_groups, c)
    device = model_device(model)
    pad = int(tokenizer.pad_token_id)
    rows = [_token_rows(tokenizer, g, fmt) for g in groups]
    prefix_len = []
    for group_rows in rows:
        # longest common token prefix, leaving at least one token of each prompt to run with the cache
        n = min(len(r) for r in group_rows) - 1
        for i in range(n):
            if any(r[i] != group_rows[0][i] for r in group_rows[1:]):
                n = i
                break
        prefix_len.append(n)
    order = sorted(range(n_groups), key=lambda g: (prefix_len[g], max(len(r) for r in rows[g])))  # less padding
    states = torch.empty((n_groups, c, parts.n_layers, parts.hidden_size))
    next_ids = torch.empty((n_groups, c), dtype=torch.long)
    per_batch = max(1, batch_size // c)
    for chunk in tqdm(list(_batches(n_groups, per_batch)), desc="prompts", disable=not progress, leave=False):
        members = order[chunk]
        p_max = max(prefix_len[g] for g in members)
        cont = [r[prefix_len[g]:] for g in members for r in rows[g]]
        c_max = max(len(r) for r in cont)
        full_ids = torch.full((len(members) * c, p_max + c_max), pad, dtype=torch.long)
        mask = torch.zeros_like(full_ids)
        for j, g in enumerate(members):
            for k, r in enumerate(rows[g]):
                row = j * c + k
                p = prefix_len[g]
                full_ids[row, p_max - p:p_max] = torch.tensor(r[:p], dtype=torch.long)
                mask[row, p_max - p:p_max] = 1
                tail = r[p:]
                full_ids[row, p_max + c_max - len(tail):] = torch.tensor(tail, dtype=torch.long)
                mask[row, p_max + c_max - len(tail):] = 1
        full_ids, mask = full_ids.to(device), mask.to(device)
        cache = None
        if p_max > 0:
            # the prefix once per group (rows j*c), then its cache repeated for the group's c prompts
            _, cache = forward_last(model, full_ids[::c, :p_max], mask[::c, :p_max], use_cache=True, logits=False)
            cache = _repeat_cache(cache, c)
        with capture_last_position(model) as store:
            logits, _ = forward_last(model, full_ids[:, p_max:], mask, past_key_values=cache)
        got = torch.stack([store[l] for l in range(parts.n_layers)], dim=1).float().cpu()
        index = torch.tensor(members)
        states[index] = got.view(len(members), c, parts.n_layers, parts.hidden_size)
        next_ids[index] = logits.argmax(-1).cpu().view(len(members), c)
    return states, next_ids


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
    fmt = _check_format(fmt)
    for i, dummies in enumerate(dummy_queries):
        if isinstance(dummies, str) or len(dummies) == 0:
            raise ValueError(f"dummy_queries[{i}] must be a non-empty list of inputs, got {dummies!r}")
    groups = [[format_prompt(demos, dummy, fmt) for dummy in dummies]
              for demos, dummies in zip(demo_sets, dummy_queries)]
    states, _ = grouped_last_states(model, tokenizer, groups, fmt, batch_size, progress)
    return states.mean(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Predictions: plain, and patched at one or many layers
# ----------------------------------------------------------------------------------------------------------------
def predict(
    model, tokenizer, prompts: Sequence[str], fmt: PromptFormat | str = "example", batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Greedy next-token ids (n_prompts,) of the unpatched model (ICL with ``[S, x]``, zero-shot with ``[x]``)."""
    _, ids = _forward_sorted(model, tokenizer, prompts, fmt, batch_size, progress, capture=False, desc="predict")
    return ids


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
    fmt = _check_format(fmt)
    check_choice("mode", mode, _MODES)
    check_choice("method", method, ("auto", *_METHODS))
    max_rows = check_int("max_rows", max_rows, minimum=1)
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    parts = model_parts(model)
    layers = _check_layers(layers, parts.n_layers)
    theta = _check_theta(theta, len(prompts), layers, parts.n_layers, parts.hidden_size)
    if method == "auto":
        method = "kv" if is_hf_model(model) else "batched"
    if method == "kv" and not is_hf_model(model):
        raise ValueError("method='kv' needs a Hugging Face model (KV caches); use method='batched'")
    device = model_device(model)
    if not isinstance(return_logits, bool):
        raise TypeError(f"return_logits must be a bool, got {return_logits!r}")
    # what is kept of each forward's logits: (rows, V) would be 0.2 MB a row for a 49k vocabulary
    keep = (lambda logits: logits.float().cpu()) if return_logits else (lambda logits: logits.argmax(-1).cpu())
    if method == "naive":
        per_chunk = 1
    elif method == "kv" and mode == "replace" and not return_logits:
        per_chunk = max_rows  # the block-skipping sweep groups layers itself (at most max_rows rows a forward)
    else:
        per_chunk = max(1, max_rows // len(layers))
    out = None
    for chunk in tqdm(list(_batches(len(prompts), per_chunk)), desc=f"patched sweep ({method})",
                      disable=not progress, leave=False):
        batch = _tokenize(tokenizer, prompts[chunk], fmt, device)
        if method == "kv" and batch["attention_mask"].sum(-1).min() >= 2:
            got = _sweep_kv(model, batch, theta[chunk], layers, mode, keep, max_rows=max_rows)
        elif method == "naive":
            got = keep(_sweep_naive(model, batch, theta[chunk], layers, mode))
        else:  # "batched", or "kv" with a one-token prompt (no prefix to cache)
            rows = max(1, max_rows // len(layers))
            got = torch.cat([keep(_sweep_batched(model, {k: v[part] for k, v in batch.items()}, theta[chunk][part],
                                                 layers, mode))
                             for part in _batches(len(theta[chunk]), rows)])
        if out is None:
            out = torch.empty((len(prompts), *got.shape[1:]), dtype=got.dtype)
        out[chunk] = got
    return out


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


def layer_patches(
    n_prompts: int, theta: torch.Tensor, layers: Sequence[int]
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The ``patches`` argument of :func:`patch_last_position` for a batch of ``n_prompts * K`` rows.

    Row ``i * K + k`` (prompt ``i`` repeated K = ``len(layers)`` times, adjacent) gets ``theta[i, k]`` at block
    ``layers[k]``: one patched forward evaluates every (prompt, layer) pair of a sweep. ``theta`` is
    (n_prompts, K, d); ``layers`` must not repeat (each block takes one set of rows).
    """
    n_prompts = check_int("n_prompts", n_prompts, minimum=1)
    if not isinstance(theta, torch.Tensor) or theta.ndim != 3:
        raise TypeError(f"theta must be a torch tensor of shape (n_prompts, K, d), got {_describe(theta)}")
    if isinstance(layers, (int, np.integer)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of block indices, got {type(layers).__name__}")
    layers = [check_int("layers[i]", l, minimum=0) for l in layers]
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be a non-empty list without repeats, got {layers}")
    if tuple(theta.shape[:2]) != (n_prompts, len(layers)):
        raise ValueError(
            f"theta must have shape (n_prompts={n_prompts}, K={len(layers)}, d), got {tuple(theta.shape)}"
        )
    k_count = len(layers)
    base = torch.arange(n_prompts) * k_count
    return {layer: (base + k, theta[:, k, :]) for k, layer in enumerate(layers)}


_layer_patches = layer_patches  # the old private name, kept for callers that used it


def _describe(value) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _sweep_batched(model, batch, theta, layers, mode) -> torch.Tensor:
    k_count = len(layers)
    ids = batch["input_ids"].repeat_interleave(k_count, 0)
    mask = batch["attention_mask"].repeat_interleave(k_count, 0)
    with patch_last_position(model, layer_patches(len(theta), theta, layers), mode):
        logits, _ = forward_last(model, ids, mask)
    return logits.view(len(theta), k_count, -1)


def _repeat_cache(cache, repeats: int):
    """Each row of a KV cache repeated ``repeats`` times, adjacent (row i -> rows i*repeats .. i*repeats+r-1)."""
    if hasattr(cache, "batch_repeat_interleave"):  # transformers >= 4.36 Cache objects (DynamicCache in 5.x)
        cache.batch_repeat_interleave(repeats)
        return cache
    if isinstance(cache, tuple):  # legacy tuple-of-tuples caches (the reference code's assumption)
        return tuple(tuple(t.repeat_interleave(repeats, 0) for t in layer) for layer in cache)
    raise TypeError(f"unsupported KV cache type {type(cache).__name__}")


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
    parts = model_parts(model)
    with _record_block_outputs(parts.blocks) as structure:
        _, prefix_cache = forward_last(model, ids[:, :-1], mask[:, :-1], use_cache=True, logits=False)
    order = sorted(range(k_count), key=lambda k: layers[k])
    group = max(1, min(k_count, -(-min_rows // n), max_rows // n))
    out = None
    for start in range(0, k_count, group):
        members = order[start:start + group]
        g = len(members)
        cache = _repeat_cache(copy.deepcopy(prefix_cache), g)  # the forward appends to its cache: use a copy
        patches = layer_patches(n, theta[:, members, :], [layers[k] for k in members])
        with _skip_blocks(parts.blocks, layers[members[0]] + 1, structure), \
                patch_last_position(model, patches, mode):
            logits, _ = forward_last(model, ids[:, -1:].repeat_interleave(g, 0), mask.repeat_interleave(g, 0),
                                     past_key_values=cache)
        got = keep(logits.view(n, g, -1))  # (n, g) ids or (n, g, V) logits
        if out is None:
            out = torch.empty((n, k_count, *got.shape[2:]), dtype=got.dtype)
        out[:, members] = got
    return out


@contextlib.contextmanager
def _record_block_outputs(blocks) -> Iterator[dict[int, int]]:
    """Inside the block, ``structure[l]`` is 0 when block ``l`` returns a tensor, else the length of its tuple."""
    structure: dict[int, int] = {}

    def make_hook(layer: int):
        def hook(module, args, out):
            structure[layer] = len(out) if isinstance(out, tuple) else 0

        return hook

    handles = [block.register_forward_hook(make_hook(l)) for l, block in enumerate(blocks)]
    try:
        yield structure
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _skip_blocks(blocks, n_skip: int, structure: Mapping[int, int]) -> Iterator[None]:
    """Inside the block, blocks ``0 .. n_skip - 1`` return their input hidden state unchanged (nothing computed).

    Hooks registered on a skipped block still run (the patch of the last skipped block sets the state the next
    block reads). Each skipped block returns what it returned in a real call (``structure`` from
    :func:`_record_block_outputs`): a tensor, or a tuple whose other entries are None (the callers only read
    ``[0]``). Only for rows whose skipped outputs are all overwritten, and with a KV cache that the skipped blocks'
    attention no longer needs (their cache layers are simply not extended).
    """
    saved = []

    def make_skip(length: int):
        def skip(*args, **kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden, *([None] * (length - 1))) if length else hidden

        return skip

    try:
        for l in range(n_skip):
            block = blocks[l]
            saved.append((block, block.__dict__.get("forward")))  # an instance forward (accelerate) is put back
            block.forward = make_skip(structure[l])
        yield
    finally:
        for block, own in saved:
            if own is None:
                del block.forward
            else:
                block.forward = own


def _sweep_kv_all_blocks(model, batch, theta, layers, mode) -> torch.Tensor:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    k_count = len(layers)
    # The patch changes only the last position, so positions 0..T-2 (and their keys/values) are the same for every
    # layer: compute them once, then recompute the last token for all (prompt, layer) rows at once.
    _, cache = forward_last(model, ids[:, :-1], mask[:, :-1], use_cache=True, logits=False)
    cache = _repeat_cache(cache, k_count)
    last = ids[:, -1:].repeat_interleave(k_count, 0)
    full_mask = mask.repeat_interleave(k_count, 0)
    with patch_last_position(model, layer_patches(len(theta), theta, layers), mode):
        logits, _ = forward_last(model, last, full_mask, past_key_values=cache)
    return logits.view(len(theta), k_count, -1)


def _sweep_naive(model, batch, theta, layers, mode) -> torch.Tensor:
    out = []
    for i in range(len(theta)):
        keep = batch["attention_mask"][i].bool()
        ids, mask = batch["input_ids"][i:i + 1, keep], batch["attention_mask"][i:i + 1, keep]
        for k, layer in enumerate(layers):
            with patch_last_position(model, {layer: (torch.tensor([0]), theta[i:i + 1, k, :])}, mode):
                logits, _ = forward_last(model, ids, mask)
            out.append(logits[0])
    return torch.stack(out).view(len(theta), len(layers), -1)


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------
def exact_match(x: str, y: str, prediction: str) -> bool:
    """The default scorer: the stripped decoded token equals the stripped answer ``y``."""
    return prediction.strip() == y.strip()


def _decode_all(tokenizer, ids: torch.Tensor) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids.reshape(-1).tolist()]


def _accuracy(scorer: Scorer, queries: Sequence[Pair], predictions: Sequence[str]) -> float:
    return float(np.mean([bool(scorer(x, y, p)) for (x, y), p in zip(queries, predictions)]))


# ----------------------------------------------------------------------------------------------------------------
# The whole evaluation (the paper's Table / Figure 3 for one task)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TaskVectorResult:
    """Accuracies of one task: zero-shot ``baseline``, ``icl`` (``[S, x]``), ``tv`` (``f(x; theta_L(S))``).

    ``dev_curve[l]`` is the dev accuracy of patching at block ``l`` (NaN for blocks not swept), ``best_layer``
    its first maximum (0-based block index), used for ``tv``. ``theta_test`` holds ``theta_L(S)`` of every test
    set (n_test, d); ``predictions`` the decoded test predictions ``{"baseline", "icl", "tv"}``.
    """

    baseline: float
    icl: float
    tv: float
    best_layer: int
    dev_curve: np.ndarray
    n_layers: int
    layers: tuple[int, ...]
    fmt: PromptFormat
    n_demos: int
    n_dev: int
    n_test: int
    n_baseline: int
    test_queries: list[Pair] = field(default_factory=list)
    baseline_queries: list[Pair] = field(default_factory=list)
    predictions: dict[str, list[str]] = field(default_factory=dict)
    theta_test: np.ndarray | None = None

    @property
    def depth(self) -> float:
        """``(best_layer + 1) / L``: the relative depth of the chosen block (1 = the last block)."""
        return (self.best_layer + 1) / self.n_layers


def _draw_sets(pairs: list[Pair], n_sets: int, n_demos: int, n_dummies: int, rng: np.random.Generator):
    from icllib.lang_tasks import sample_demonstrations, sample_dummy_queries

    sets = sample_demonstrations(pairs, n_sets, n_demos, rng)
    dummies = [[x for x, _ in sample_dummy_queries(pairs, [*demos, query], n_dummies, rng)] for demos, query in sets]
    return sets, dummies


def evaluate(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    n_demos: int = 5,
    n_dev: int = 50,
    n_test: int = 50,
    n_baseline: int = 100,
    seed: int = 41,
    scorer: Scorer | None = None,
    fmt: PromptFormat | str = "example",
    layers: Sequence[int] | None = None,
    n_dummies: int = 2,
    method: str = "auto",
    batch_size: int = 32,
    progress: bool = True,
) -> TaskVectorResult:
    """Zero-shot, ICL and task-vector accuracy of one task, with the layer chosen on dev sets (paper, Section 3).

    Draws (seeded by ``seed``) ``n_dev`` dev and ``n_test`` test demonstration sets of ``n_demos`` pairs, each with
    a query not in the set and ``n_dummies`` dummy queries for ``theta(S)``; ``n_baseline`` zero-shot queries.
    Dev: ``theta_l(S)`` patched into ``[x]`` at every block in ``layers`` (default all) gives ``dev_curve``;
    ``best_layer`` is its first maximum. Test: ``tv`` patches ``theta_{best_layer}(S)``; ``icl`` runs ``[S, x]``;
    ``baseline`` runs ``[x]``. A prediction is one greedy token, decoded and judged by
    ``scorer(x, y, prediction)`` (default :func:`exact_match`; pass e.g. ``lambda x, y, p: task.score(p, x)``).
    The paper's counts are the defaults (5 demonstrations, 50 + 50 sets, 100 baseline queries, seed 41).
    """
    pairs = check_pairs("pairs", pairs)
    n_demos = check_int("n_demos", n_demos, minimum=1)
    n_dev = check_int("n_dev", n_dev, minimum=1)
    n_test = check_int("n_test", n_test, minimum=1)
    n_baseline = check_int("n_baseline", n_baseline, minimum=1)
    n_dummies = check_int("n_dummies", n_dummies, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if len({x for x, _ in pairs}) != len(pairs):
        raise ValueError("pairs must have unique inputs x")
    if n_demos + 1 + n_dummies > len(pairs):
        raise ValueError(
            f"n_demos={n_demos} plus a query and n_dummies={n_dummies} dummy queries need "
            f"{n_demos + 1 + n_dummies} distinct pairs, but pairs holds only {len(pairs)}"
        )
    if scorer is None:
        scorer = exact_match
    elif not callable(scorer):
        raise TypeError(f"scorer must be a callable (x, y, prediction) -> bool, got {type(scorer).__name__}")
    fmt = _check_format(fmt)
    parts = model_parts(model)
    layers = _check_layers(layers, parts.n_layers)

    rng = np.random.default_rng(seed)
    dev_sets, dev_dummies = _draw_sets(pairs, n_dev, n_demos, n_dummies, rng)
    test_sets, test_dummies = _draw_sets(pairs, n_test, n_demos, n_dummies, rng)
    baseline_queries = [pairs[i] for i in rng.choice(len(pairs), size=n_baseline, replace=n_baseline > len(pairs))]

    steps = tqdm(total=5, desc="task vectors", disable=not progress, leave=False)
    # dev: the layer sweep
    theta_dev = extract_task_vectors(model, tokenizer, [d for d, _ in dev_sets], dev_dummies, fmt, batch_size)
    steps.update()
    dev_queries = [q for _, q in dev_sets]
    dev_ids = patched_predictions(model, tokenizer, [format_prompt([], x, fmt) for x, _ in dev_queries],
                                  theta_dev, layers, fmt, method=method)
    steps.update()
    dev_curve = np.full(parts.n_layers, np.nan)
    for k, layer in enumerate(layers):
        dev_curve[layer] = _accuracy(scorer, dev_queries, _decode_all(tokenizer, dev_ids[:, k]))
    best_layer = int(layers[int(np.argmax([dev_curve[l] for l in layers]))])  # first maximum on ties

    # test: the chosen layer, ICL and zero-shot
    # theta(S) from [S, x'_1], [S, x'_2] and the ICL prediction from [S, x] share S: one grouped pass
    groups = [[format_prompt(demos, dummy, fmt) for dummy in dummies] + [format_prompt(demos, query[0], fmt)]
              for (demos, query), dummies in zip(test_sets, test_dummies)]
    states, next_ids = grouped_last_states(model, tokenizer, groups, fmt, batch_size)
    theta_test, icl_ids = states[:, :-1].mean(dim=1), next_ids[:, -1]
    steps.update()
    test_queries = [q for _, q in test_sets]
    tv_ids = patched_predictions(model, tokenizer, [format_prompt([], x, fmt) for x, _ in test_queries],
                                 theta_test[:, best_layer, :], [best_layer], fmt, method=method)[:, 0]
    steps.update()
    unique = sorted({x for x, _ in baseline_queries})  # small tasks repeat queries: run each prompt once
    unique_ids = predict(model, tokenizer, [format_prompt([], x, fmt) for x in unique], fmt, batch_size)
    lookup = dict(zip(unique, unique_ids.tolist()))
    base_ids = torch.tensor([lookup[x] for x, _ in baseline_queries])
    steps.update()
    steps.close()

    predictions = {"tv": _decode_all(tokenizer, tv_ids), "icl": _decode_all(tokenizer, icl_ids),
                   "baseline": _decode_all(tokenizer, base_ids)}
    return TaskVectorResult(
        baseline=_accuracy(scorer, baseline_queries, predictions["baseline"]),
        icl=_accuracy(scorer, test_queries, predictions["icl"]),
        tv=_accuracy(scorer, test_queries, predictions["tv"]),
        best_layer=best_layer,
        dev_curve=dev_curve,
        n_layers=parts.n_layers,
        layers=tuple(layers),
        fmt=fmt,
        n_demos=n_demos,
        n_dev=n_dev,
        n_test=n_test,
        n_baseline=n_baseline,
        test_queries=test_queries,
        baseline_queries=baseline_queries,
        predictions=predictions,
        theta_test=theta_test[:, best_layer, :].float().numpy(),
    )


def format_for_task(task, fmt: PromptFormat | str = "example") -> PromptFormat:
    """``fmt`` with ``output_space`` set the way ``lang_tasks.filter_single_token`` found the task's answers.

    (A filtered task whose answers are single tokens only without a leading space gets ``output_space=False``.)
    """
    fmt = _check_format(fmt)
    leading_space = getattr(task, "leading_space", None)
    return replace(fmt, output_space=leading_space is not False)


def evaluate_task(
    model,
    tokenizer,
    task,
    model_id: str | None = None,
    fmt: PromptFormat | str = "example",
    cache: bool = True,
    **kwargs,
) -> TaskVectorResult:
    """:func:`evaluate` on one of the book's 18 tasks (a name or an ``icllib.lang_tasks.Task``), cached on disk.

    The task is filtered to single-token answers (``lang_tasks.filter_single_token``), scored by its own rule
    (``Task.score``: exact, prefix or synonym), and the format's ``output_space`` follows the filter's finding.
    With ``cache=True`` the result is stored by ``icllib.cache.cached`` under a key made of ``model_id`` (the
    model's name; ``None`` = the offline default), the task's pairs, the format and every keyword argument.
    """
    from icllib import lang_tasks
    from icllib.cache import cached

    if isinstance(task, str):
        task = lang_tasks.load_task(task)
    if not isinstance(task, lang_tasks.Task):
        raise TypeError(f"task must be a task name or an icllib.lang_tasks.Task, got {type(task).__name__}")
    if model_id is not None and not isinstance(model_id, str):
        raise TypeError(f"model_id must be None or a string, got {type(model_id).__name__}")
    fmt = _check_format(fmt)
    task = lang_tasks.filter_single_token(task, tokenizer)
    fmt = format_for_task(task, fmt)

    def scorer(x: str, y: str, prediction: str) -> bool:
        return task.score(prediction, x)

    def compute() -> TaskVectorResult:
        return evaluate(model, tokenizer, list(task.pairs), scorer=scorer, fmt=fmt, **kwargs)

    if not cache:
        return compute()
    # every argument of evaluate that changes the result, defaults filled in, so equal runs share one entry
    bound = inspect.signature(evaluate).bind_partial(**kwargs)
    bound.apply_defaults()
    progress_free = {k: v for k, v in bound.arguments.items()
                     if k not in ("model", "tokenizer", "pairs", "scorer", "fmt", "progress", "method", "batch_size")}
    config = {
        "model": model_id or "smollm2-135m-instruct",
        "task": task.name,
        "scoring": task.scoring,
        "pairs": _digest(task.pairs, task.synonyms),
        "fmt": asdict(fmt),
        "n_layers": model_parts(model).n_layers,
        "dtype": str(next(model.parameters()).dtype),
        **{k: (list(v) if isinstance(v, (tuple, range)) else v) for k, v in progress_free.items()},
    }
    return cached("task_vectors", config, compute)


def task_vectors_for(
    model,
    tokenizer,
    tasks: Sequence,
    n_sets: int = 50,
    n_demos: int = 5,
    layers: Sequence[int] | int | None = None,
    seed: int = 41,
    fmt: PromptFormat | str = "example",
    n_dummies: int = 2,
    model_id: str | None = None,
    cache: bool = True,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """``theta_l(S)`` of ``n_sets`` fresh demonstration sets of every task in ``tasks``, cached on disk.

    For each task in order (a name of the book's 18 tasks or an ``icllib.lang_tasks.Task``), filtered to
    single-token answers like :func:`evaluate_task`, with the format's ``output_space`` following the filter
    (:func:`format_for_task`): ``n_sets`` sets of ``n_demos`` pairs and a query
    (``lang_tasks.sample_demonstrations``), ``n_dummies`` dummy queries outside each set, and
    ``theta_l(S) = mean_{x'} h_l([S, x'])[-1]`` (the paper's Eq. 2 extraction, :func:`extract_task_vectors`).
    One ``numpy`` generator seeded by ``seed`` draws the sets of all tasks in turn, so a task's sets depend on the
    tasks before it (the same draws as Chapters 7 and 8 made by hand).

    Returns float32 ``(n_tasks, n_sets, K, d)`` for a list of ``layers`` (K = its length; ``None`` = all L blocks)
    or ``(n_tasks, n_sets, d)`` for a single int layer. With ``cache=True`` the result is stored by
    ``icllib.cache.cached`` under ``model_id`` (``None`` = the offline default), the tasks' pairs and every
    argument that changes it.
    """
    from icllib import lang_tasks
    from icllib.cache import cached

    if isinstance(tasks, (str, lang_tasks.Task)) or not isinstance(tasks, Sequence):
        raise TypeError(f"tasks must be a list of task names or icllib.lang_tasks.Task objects, got {tasks!r}")
    if len(tasks) == 0:
        raise ValueError("tasks must name at least one task, got an empty list")
    loaded = []
    for i, task in enumerate(tasks):
        if isinstance(task, str):
            task = lang_tasks.load_task(task)
        if not isinstance(task, lang_tasks.Task):
            raise TypeError(f"tasks[{i}] must be a task name or an icllib.lang_tasks.Task, got {type(task).__name__}")
        loaded.append(lang_tasks.filter_single_token(task, tokenizer))
    n_sets = check_int("n_sets", n_sets, minimum=1)
    n_demos = check_int("n_demos", n_demos, minimum=1)
    n_dummies = check_int("n_dummies", n_dummies, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if model_id is not None and not isinstance(model_id, str):
        raise TypeError(f"model_id must be None or a string, got {type(model_id).__name__}")
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be a bool, got {cache!r}")
    fmt = _check_format(fmt)
    n_layers = model_parts(model).n_layers
    single = isinstance(layers, (int, np.integer)) and not isinstance(layers, bool)
    chosen = _check_layers(layers, n_layers)
    for task in loaded:
        if n_demos + 1 + n_dummies > len(task.pairs):
            raise ValueError(
                f"n_demos={n_demos} plus a query and n_dummies={n_dummies} dummy queries need "
                f"{n_demos + 1 + n_dummies} distinct pairs, but task {task.name!r} holds only {len(task.pairs)}"
            )

    def compute() -> torch.Tensor:
        rng = np.random.default_rng(seed)
        out = []
        for task in tqdm(loaded, desc="task vectors", disable=not progress, leave=False):
            sets = lang_tasks.sample_demonstrations(task, n_sets, n_demos, rng)
            dummies = [[x for x, _ in lang_tasks.sample_dummy_queries(task, [*demos, query], n_dummies, rng)]
                       for demos, query in sets]
            theta = extract_task_vectors(model, tokenizer, [demos for demos, _ in sets], dummies,
                                         format_for_task(task, fmt), batch_size)
            out.append(theta[:, chosen, :].float())
        return torch.stack(out)

    if cache:
        config = {
            "model": model_id or "smollm2-135m-instruct",
            "tasks": [task.name for task in loaded],
            "pairs": _digest([task.pairs for task in loaded]),
            "n_sets": n_sets, "n_demos": n_demos, "layers": chosen, "seed": seed, "fmt": asdict(fmt),
            "n_dummies": n_dummies, "n_layers": n_layers, "dtype": str(next(model.parameters()).dtype),
        }
        thetas = cached("task_vectors_for", config, compute)
    else:
        thetas = compute()
    return thetas[:, :, 0, :] if single else thetas


def _digest(*objects) -> str:
    text = json.dumps(objects, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Conflicting tasks (paper, Section 5)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ConflictResult:
    """Demonstrations of task A, ``theta(S_B)`` patched in at ``layer``: accuracy on A's and B's answers.

    ``a_before``/``b_before``: the unpatched prompt ``[S_A, x]``; ``a_after``/``b_after``: with the patch.
    The paper's finding is ``b_after`` high (the model follows the vector) while ``a_before`` was high.
    """

    a_before: float
    b_before: float
    a_after: float
    b_after: float
    layer: int
    n_sets: int
    predictions_before: list[str]
    predictions_after: list[str]


def conflicting_tasks(
    model,
    tokenizer,
    pairs_a: Sequence[Pair],
    pairs_b: Sequence[Pair],
    layer: int,
    n_sets: int = 50,
    n_demos: int = 4,
    seed: int = 41,
    fmt: PromptFormat | str = "example",
    scorer_a: Scorer | None = None,
    scorer_b: Scorer | None = None,
    n_dummies: int = 2,
    progress: bool = False,
) -> ConflictResult:
    """Patch ``theta_layer(S_B)`` of task B into the full ICL prompt ``[S_A, x]`` of task A (the paper used 4 demos).

    Queries ``x`` are inputs shared by both tasks (e.g. single letters for next_letter and to_upper), never in
    either demonstration set; ``theta(S_B)`` uses ``n_dummies`` dummy queries of task B.
    """
    pairs_a, pairs_b = check_pairs("pairs_a", pairs_a), check_pairs("pairs_b", pairs_b)
    n_sets = check_int("n_sets", n_sets, minimum=1)
    n_demos = check_int("n_demos", n_demos, minimum=1)
    n_dummies = check_int("n_dummies", n_dummies, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    fmt = _check_format(fmt)
    layer = _check_layer(layer, model_parts(model).n_layers)
    scorer_a, scorer_b = scorer_a or exact_match, scorer_b or exact_match
    answer_a, answer_b = dict(pairs_a), dict(pairs_b)
    shared = [x for x, _ in pairs_a if x in answer_b]
    if not shared:
        raise ValueError("pairs_a and pairs_b share no input x; conflicting tasks need common queries")
    if n_demos + 1 > len(pairs_a) or n_demos + 1 + n_dummies > len(pairs_b):
        raise ValueError(f"n_demos={n_demos} is too large for the tasks ({len(pairs_a)} and {len(pairs_b)} pairs)")
    rng = np.random.default_rng(seed)
    queries, sets_a, sets_b, dummies = [], [], [], []
    for _ in range(n_sets):
        x = shared[int(rng.integers(len(shared)))]
        pool_a = [p for p in pairs_a if p[0] != x]
        pool_b = [p for p in pairs_b if p[0] != x]
        demos_a = [pool_a[i] for i in rng.choice(len(pool_a), size=n_demos, replace=False)]
        demos_b = [pool_b[i] for i in rng.choice(len(pool_b), size=n_demos, replace=False)]
        used = {x, *(d for d, _ in demos_b)}
        rest = [p for p in pairs_b if p[0] not in used]
        dummies.append([rest[i][0] for i in rng.choice(len(rest), size=n_dummies, replace=False)])
        queries.append(x)
        sets_a.append(demos_a)
        sets_b.append(demos_b)
    theta_b = extract_task_vectors(model, tokenizer, sets_b, dummies, fmt, progress=progress)[:, layer, :]
    prompts = [format_prompt(d, x, fmt) for d, x in zip(sets_a, queries)]
    before = _decode_all(tokenizer, predict(model, tokenizer, prompts, fmt))
    after = _decode_all(tokenizer, patched_predictions(model, tokenizer, prompts, theta_b, [layer], fmt)[:, 0])
    qa = [(x, answer_a[x]) for x in queries]
    qb = [(x, answer_b[x]) for x in queries]
    return ConflictResult(
        a_before=_accuracy(scorer_a, qa, before), b_before=_accuracy(scorer_b, qb, before),
        a_after=_accuracy(scorer_a, qa, after), b_after=_accuracy(scorer_b, qb, after),
        layer=layer, n_sets=n_sets, predictions_before=before, predictions_after=after,
    )


# ----------------------------------------------------------------------------------------------------------------
# Vocabulary projection (paper, Section 6)
# ----------------------------------------------------------------------------------------------------------------
def project_to_vocabulary(
    model, tokenizer, theta: torch.Tensor, k: int = 10, alphabetic: bool = True
) -> list[tuple[str, float]]:
    """The top-``k`` tokens of ``W_U norm(theta)``: what the vector says when read out as if it were the last layer.

    ``theta`` (d,) goes through the final norm and the unembedding; tokens are decoded and stripped; with
    ``alphabetic`` only alphabetic tokens are kept, de-duplicated case-insensitively (as the paper lists them).
    Returns ``[(token, logit), ...]`` best first.
    """
    k = check_int("k", k, minimum=1)
    parts = model_parts(model)
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point():
        raise TypeError(f"theta must be a floating-point torch tensor, got {type(theta).__name__}")
    if theta.shape != (parts.hidden_size,):
        raise ValueError(f"theta must have shape ({parts.hidden_size},), got {tuple(theta.shape)}")
    weight = next(parts.unembedding.parameters())
    with torch.no_grad():
        logits = parts.unembedding(parts.final_norm(theta.to(weight.device, weight.dtype)[None, None, :]))[0, 0]
    order = torch.argsort(logits.float(), descending=True).tolist()
    out, seen = [], set()
    for token_id in order:
        text = tokenizer.decode([token_id]).strip()
        if alphabetic and not text.isalpha():
            continue
        if not text or text.lower() in seen:
            continue
        seen.add(text.lower())
        out.append((text, float(logits[token_id])))
        if len(out) == k:
            break
    return out
