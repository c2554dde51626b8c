"""Causal mediation over attention heads: which heads carry the task from the demonstrations to the answer.

Todd et al. (2024), Section 2.2: run an ICL prompt whose demonstration labels are shuffled (``p~``, the task is no
longer shown), overwrite one head's activation at the last token by its mean ``abar_{lj}`` over clean prompts of the
task, and measure how much the probability of the correct answer's first token rises,

    CIE(a_{lj} | p~) = P(y | p~, a_{lj} := abar_{lj}) - P(y | p~),                      (their Eq. 3)

averaged over prompts into the average indirect effect AIE(a_{lj}) (their Eq. 4, per task; the chapter averages over
tasks). That is one patched forward per (prompt, block, head): 270 per prompt on SmolLM2. Three implementations
(``method=``), equal up to float rounding:

- ``"kv"`` (Hugging Face models): the prompt without its last token runs once and its KV cache is repeated for
  every head, so only the last position is recomputed, for many heads in one forward (the patch changes nothing
  before it); a head of block ``l`` also leaves blocks ``0 .. l - 1`` of the last position as they were, so the rows
  of a group of blocks start from the unpatched state entering the group;
- ``"batched"`` (any model): the whole prompt repeated once per head in one batch;
- ``"naive"``: one forward per (prompt, head), the baseline of ``benchmarks/bench_function_vectors.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from icllib._checks import check_bool, check_int, check_pairs
from icllib.lang_tasks import sample_demonstrations
from icllib.llm import encode, forward_last, model_device, model_parts
from icllib.task_vectors import PromptFormat, check_format, trace
from icllib.task_vectors.forward import batches, check_prompts, repeat_cache, tokenize
from icllib.task_vectors.hooks import blocks_at, check_layers, read_last, record_structure
from icllib.task_vectors.sweeps import check_method
from icllib.function_vectors.heads import AttentionOutputs, _activations, attention_outputs, write_heads

__all__ = ["draw_prompts", "shuffle_labels", "answer_ids", "indirect_effects", "head_effects", "METHODS"]

Pair = tuple[str, str]
#: The implementations of the mediation pass (see the module docstring).
METHODS = ("kv", "batched", "naive")


# ----------------------------------------------------------------------------------------------------------------
# Prompts and answers
# ----------------------------------------------------------------------------------------------------------------
def draw_prompts(pairs: Sequence[Pair], n_prompts: int, n_demos: int, rng: np.random.Generator,
                 shuffle_labels: bool = False, queries: Sequence[Pair] | None = None) -> list[tuple[list[Pair], Pair]]:
    """``n_prompts`` ICL prompts ``(demos, query)``: ``n_demos`` pairs of ``pairs`` and a query not among them.

    The query comes from ``queries`` when given (one each, in order; a held-out split), else from ``pairs``.
    With ``shuffle_labels`` the demonstrations' answers are permuted among them (the paper's corrupted prompt
    ``p~``: inputs and answers of the task, but not paired); the query keeps its own answer.
    """
    pairs = check_pairs("pairs", pairs)
    n_prompts = check_int("n_prompts", n_prompts, minimum=1)
    n_demos = check_int("n_demos", n_demos, minimum=1, maximum=len(pairs) - (0 if queries else 1))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    check_bool("shuffle_labels", shuffle_labels)
    if queries is not None and len(check_pairs("queries", queries)) < n_prompts:
        raise ValueError(f"queries must hold at least n_prompts={n_prompts} pairs, got {len(queries)}")
    if queries is None:
        drawn = sample_demonstrations(pairs, n_prompts, n_demos, rng)
    else:
        drawn = [([pairs[i] for i in rng.choice(len(pairs), size=n_demos, replace=False)], tuple(q))
                 for q in queries[:n_prompts]]
    if shuffle_labels:
        drawn = [(_shuffled(demos, rng), query) for demos, query in drawn]
    return drawn


def shuffle_labels(demos: Sequence[Pair], rng: np.random.Generator) -> list[Pair]:
    """The demonstrations with their answers permuted among them (a random permutation drawn from ``rng``)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return _shuffled(check_pairs("demos", demos), rng)


def _shuffled(demos: list[Pair], rng: np.random.Generator) -> list[Pair]:
    labels = [y for _, y in demos]
    return [(x, labels[i]) for (x, _), i in zip(demos, rng.permutation(len(demos)))]


def answer_ids(tokenizer, answers: Sequence[str], fmt: PromptFormat | str = "example") -> torch.Tensor:
    """The first token of each answer as it follows the prompt (``" " + y`` when ``fmt.output_space``): (n,)."""
    fmt = check_format(fmt)
    if isinstance(answers, str) or not answers:
        raise ValueError("answers must be a non-empty list of strings")
    ids = []
    for i, y in enumerate(answers):
        tokens = encode(tokenizer, (" " if fmt.output_space else "") + y) if isinstance(y, str) else []
        if not tokens:
            raise ValueError(f"answers[{i}] = {y!r} gives no token")
        ids.append(tokens[0])
    return torch.tensor(ids, dtype=torch.long)


# ----------------------------------------------------------------------------------------------------------------
# Indirect effects
# ----------------------------------------------------------------------------------------------------------------
def indirect_effects(
    model, tokenizer, prompts: Sequence[str], answers: torch.Tensor, mean_activations: torch.Tensor,
    fmt: PromptFormat | str = "example", layers: Sequence[int] | int | None = None, method: str = "auto",
    max_rows: int = 256, batch_size: int = 8, progress: bool = False,
) -> torch.Tensor:
    """``CIE(a_{lj} | p)`` of every prompt, block and head: float32 (n_prompts, K, H) for the K blocks ``layers``
    (default all L).

    ``prompts`` are (usually corrupted) prompts, ``answers`` (n_prompts,) the token ids whose probability is read
    (:func:`answer_ids`), ``mean_activations`` (L, H, D) the values patched in
    (:func:`icllib.function_vectors.heads.head_activations` averaged over clean prompts). ``max_rows`` bounds the
    rows of one forward; ``batch_size`` the prompts run together.
    """
    prompts, fmt = check_prompts(prompts), check_format(fmt)
    outputs = attention_outputs(model)
    layers = check_layers(layers, outputs.n_layers)
    if not isinstance(answers, torch.Tensor) or answers.dtype != torch.long or answers.shape != (len(prompts),):
        raise ValueError(f"answers must be a LongTensor of shape ({len(prompts)},), got {answers!r}")
    expected = (outputs.n_layers, outputs.n_heads, outputs.head_dim)
    if not isinstance(mean_activations, torch.Tensor) or tuple(mean_activations.shape) != expected:
        shape = tuple(mean_activations.shape) if isinstance(mean_activations, torch.Tensor) else mean_activations
        raise ValueError(f"mean_activations must be a tensor of shape {expected}, got {shape}")
    method = check_method(model, method)
    max_rows = check_int("max_rows", max_rows, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    return _effects(model, tokenizer, prompts, answers, mean_activations, fmt, method, max_rows, batch_size, progress,
                    layers)


def _effects(model, tokenizer, prompts, answers, means, fmt, method, max_rows=256, batch_size=8, progress=False,
             layers=None):
    outputs = attention_outputs(model)
    layers = sorted(range(outputs.n_layers) if layers is None else layers)
    per_batch = 1 if method == "naive" else max(1, min(batch_size, max_rows // outputs.n_heads))
    out = torch.empty((len(prompts), len(layers), outputs.n_heads))
    for chunk in tqdm(list(batches(len(prompts), per_batch)), desc=f"indirect effects ({method})",
                      disable=not progress, leave=False):
        batch = tokenize(tokenizer, prompts[chunk], fmt, model_device(model))
        targets = answers[chunk].to(batch["input_ids"].device)
        if method == "naive":
            out[chunk] = _naive(model, outputs, batch, targets, means, layers)
        elif method == "kv" and batch["attention_mask"].sum(-1).min() >= 2:
            out[chunk] = _kv(model, outputs, batch, targets, means, layers, max_rows)
        else:  # "batched", or "kv" with a one-token prompt (nothing to cache)
            out[chunk] = _batched(model, outputs, batch, targets, means, layers, max_rows)
    return out


def _probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), -1).gather(1, targets[:, None])[:, 0].cpu()


def _group_patches(outputs: AttentionOutputs, layers: list[int], n_prompts: int, means: torch.Tensor) -> dict:
    """Rows ``p * G + i * H + j`` (prompt p, i-th block of the group, head j; G = len(layers) * H) patch head j of
    block ``layers[i]`` with ``means[layers[i], j]``: the ``patches`` of
    :func:`icllib.function_vectors.heads.write_heads`."""
    n_heads, g = outputs.n_heads, len(layers) * outputs.n_heads
    heads = torch.arange(n_heads).repeat(n_prompts)
    patches = {}
    for i, layer in enumerate(layers):
        rows = (torch.arange(n_prompts)[:, None] * g + i * n_heads + torch.arange(n_heads)[None]).reshape(-1)
        patches[layer] = (rows, heads, means[layer][heads])
    return patches


def _layer_groups(layers: list[int], n_rows: int, max_rows: int) -> list[tuple[slice, list[int]]]:
    """Consecutive groups of the (sorted) ``layers``, each group's rows (``n_rows`` per block) at most
    ``max_rows``: ``[(positions in layers, blocks), ...]``."""
    per_group = max(1, max_rows // n_rows)
    return [(s, layers[s]) for s in batches(len(layers), per_group)]


def _replay(hidden: torch.Tensor, structure: dict):
    """A ``forward`` for skipped blocks: returns ``hidden`` (the unpatched state entering the group), shaped like
    the block's own output (a tensor, or a tuple whose other entries are None)."""
    def forward(key, *args, **kwargs):
        length = structure[key]
        return (hidden, *([None] * (length - 1))) if length else hidden

    return forward


def _kv(model, outputs: AttentionOutputs, batch, targets, means, layers: list[int], max_rows: int) -> torch.Tensor:
    """The cached pass: the prefix once, the unpatched last token, then groups of blocks, all heads at once."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n, blocks = len(ids), model_parts(model).blocks
    structure, store = {}, {}
    with trace(blocks_at(blocks, range(len(blocks))), edit_output=record_structure(structure)):
        _, prefix = forward_last(model, ids[:, :-1], mask[:, :-1], use_cache=True, logits=False)
    with trace(blocks_at(blocks, range(len(blocks))), edit_output=read_last(store)):
        logits, _ = forward_last(model, ids[:, -1:], mask, past_key_values=copy.deepcopy(prefix))
    clean = _probability(logits, targets)
    out = torch.empty((n, len(layers), outputs.n_heads))
    for where, group in _layer_groups(layers, n * outputs.n_heads, max_rows):
        g = len(group) * outputs.n_heads
        cache = repeat_cache(copy.deepcopy(prefix), g)  # the forward appends to its cache: use a copy
        start = group[0]
        entering = store[start - 1].repeat_interleave(g, 0)[:, None, :] if start else None
        with trace(blocks_at(blocks, range(start)), forward=_replay(entering, structure)), \
                trace(outputs.modules(group), edit_input=write_heads(_group_patches(outputs, group, n, means),
                                                                    outputs.n_heads)):
            logits, _ = forward_last(model, ids[:, -1:].repeat_interleave(g, 0), mask.repeat_interleave(g, 0),
                                     past_key_values=cache)
        patched = _probability(logits, targets.repeat_interleave(g))
        out[:, where] = (patched.view(n, g) - clean[:, None]).view(n, len(group), outputs.n_heads)
    return out


def _batched(model, outputs: AttentionOutputs, batch, targets, means, layers: list[int], max_rows: int
             ) -> torch.Tensor:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n = len(ids)
    logits, _ = forward_last(model, ids, mask)
    clean = _probability(logits, targets)
    out = torch.empty((n, len(layers), outputs.n_heads))
    for where, group in _layer_groups(layers, n * outputs.n_heads, max_rows):
        g = len(group) * outputs.n_heads
        with trace(outputs.modules(group), edit_input=write_heads(_group_patches(outputs, group, n, means),
                                                                 outputs.n_heads)):
            logits, _ = forward_last(model, ids.repeat_interleave(g, 0), mask.repeat_interleave(g, 0))
        patched = _probability(logits, targets.repeat_interleave(g))
        out[:, where] = (patched.view(n, g) - clean[:, None]).view(n, len(group), outputs.n_heads)
    return out


def _naive(model, outputs: AttentionOutputs, batch, targets, means, layers: list[int]) -> torch.Tensor:
    """One forward per head (the benchmark's baseline): the single prompt of ``batch``, unpadded."""
    keep = batch["attention_mask"][0].bool()
    ids, mask = batch["input_ids"][:1, keep], batch["attention_mask"][:1, keep]
    clean = _probability(forward_last(model, ids, mask)[0], targets)
    out = torch.empty((1, len(layers), outputs.n_heads))
    one = torch.tensor([0])
    for k, layer in enumerate(layers):
        for head in range(outputs.n_heads):
            patch = {layer: (one, torch.tensor([head]), means[layer, head][None])}
            with trace(outputs.modules([layer]), edit_input=write_heads(patch, outputs.n_heads)):
                logits, _ = forward_last(model, ids, mask)
            out[0, k, head] = _probability(logits, targets)[0] - clean[0]
    return out


# ----------------------------------------------------------------------------------------------------------------
# The average indirect effect of one task
# ----------------------------------------------------------------------------------------------------------------
def head_effects(
    model, tokenizer, pairs: Sequence[Pair], n_prompts: int = 25, seed: int = 0, n_demos: int = 10,
    n_mean_prompts: int = 100, fmt: PromptFormat | str = "example", mean_activations: torch.Tensor | None = None,
    method: str = "auto", max_rows: int = 256, batch_size: int = 8, progress: bool = False,
) -> torch.Tensor:
    """The average indirect effect ``AIE(a_{lj})`` of every block and head for one task: float64 (L, H).

    Seeded by ``seed``: ``n_mean_prompts`` clean prompts of ``n_demos`` demonstrations give ``abar_{lj}`` (unless
    ``mean_activations`` (L, H, D) is given), then ``n_prompts`` prompts with shuffled labels give the mean of
    :func:`indirect_effects` over prompts, the gain in probability of the correct answer's first token. The
    paper's counts are the defaults (10 demonstrations, 100 clean and 25 corrupted prompts).
    """
    pairs = check_pairs("pairs", pairs)
    n_prompts = check_int("n_prompts", n_prompts, minimum=1)
    n_mean_prompts = check_int("n_mean_prompts", n_mean_prompts, minimum=1)
    n_demos = check_int("n_demos", n_demos, minimum=1, maximum=len(pairs) - 1)
    seed, fmt = check_int("seed", seed, minimum=0), check_format(fmt)
    rng = np.random.default_rng(seed)
    if mean_activations is None:
        clean = draw_prompts(pairs, n_mean_prompts, n_demos, rng)
        mean_activations = _activations(model, tokenizer, [fmt.prompt(d, q[0]) for d, q in clean], fmt,
                                        batch_size).mean(0)
    corrupted = draw_prompts(pairs, n_prompts, n_demos, rng, shuffle_labels=True)
    prompts = [fmt.prompt(d, q[0]) for d, q in corrupted]
    answers = answer_ids(tokenizer, [q[1] for _, q in corrupted], fmt)
    effects = indirect_effects(model, tokenizer, prompts, answers, mean_activations, fmt, None, method, max_rows,
                               batch_size, progress)
    return effects.double().mean(0)
