"""The function vector at work: added to zero-shot, shuffled-label and natural-text prompts (Todd et al., Section 3).

:func:`evaluate` is the paper's evaluation for one task as short named steps: split the pairs into demonstrations
and held-out dev and test queries; average the head activations over clean prompts; rank the heads by their
indirect effect (:func:`icllib.function_vectors.head_effects`, or effects given, e.g. averaged over tasks); sum the
top heads' outputs into ``v_t``; choose the block where adding it helps most on dev queries; score the test queries
zero-shot and with shuffled labels, with and without ``v_t``, and in natural-text templates (greedy generation with
``v_t`` added at the prompt's last token and at every generated one). :func:`add_vector_predictions` and
:func:`generate` are the two ways of running a prompt with a vector added after a block.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from icllib._checks import as_float_tensor, check_int, check_pairs, check_float
from icllib.cache import not_in_key
from icllib.lang_tasks import Scorer, Task, as_scorer, hits
from icllib.llm import forward_last, is_hf_model, model_device, model_parts, tokenize_left_padded
from icllib.stats import Interval
from icllib.stats import accuracy as accuracy_interval
from icllib.task_vectors import PromptFormat, check_format, patch_last_position, patched_predictions, predict
from icllib.task_vectors.hooks import check_layer, check_layers
from icllib.function_vectors.heads import _activations, attention_outputs, function_vector, top_heads
from icllib.function_vectors.mediation import _effects, _shuffled, answer_ids, draw_prompts
from icllib.task_vectors.sweeps import check_method

__all__ = ["split_queries", "add_vector_predictions", "generate", "contains_answer", "FunctionVectorResult",
           "evaluate", "TEMPLATES"]

Pair = tuple[str, str]

#: Natural-text templates (``{x}`` is the query): the first two are plain prompt templates of the kind of the paper's
#: Table 8, the last two sentences of the kind of its Table 3 (there written for antonyms, here for any task).
TEMPLATES: tuple[str, ...] = ("Q: {x}\nA:", "input: {x}\noutput:", 'The word "{x}" goes with "',
                              "When I think of {x}, the first thing that comes to mind is")


def split_queries(pairs: Sequence[Pair], query_fraction: float, seed: int) -> tuple[list[Pair], list[Pair],
                                                                                      list[Pair]]:
    """``(train, dev, test)``: a seeded permutation of ``pairs`` with a ``query_fraction`` held out for queries, its
    first third for dev and the rest for test (the paper: 70% train, 30% held out). Demonstrations and the prompts
    that make the function vector come from ``train`` only."""
    pairs = check_pairs("pairs", pairs)
    query_fraction = check_float("query_fraction", query_fraction, minimum=0.0, maximum=1.0, strict=True)
    seed = check_int("seed", seed, minimum=0)
    held = int(round(query_fraction * len(pairs)))
    if held < 2 or len(pairs) - held < 2:
        raise ValueError(f"query_fraction={query_fraction} of {len(pairs)} pairs leaves {held} held-out and "
                         f"{len(pairs) - held} training pairs; at least 2 of each are needed")
    order = np.random.default_rng(seed).permutation(len(pairs))
    shuffled = [pairs[i] for i in order]
    n_dev = max(1, held // 3)
    return shuffled[held:], shuffled[:n_dev], shuffled[n_dev:held]


def _check_vectors(vectors, n: int, k: int, hidden: int) -> torch.Tensor:
    vectors = as_float_tensor("vectors", vectors, ndim=(1, 2, 3))
    if vectors.shape[-1] != hidden:
        raise ValueError(f"vectors must end in the residual width {hidden}, got {tuple(vectors.shape)}")
    if vectors.ndim == 1:
        return vectors.float()[None, None].expand(n, k, -1)
    if vectors.ndim == 2:  # one vector per block (K, d), or per prompt (n, d) with one block
        if vectors.shape[0] == k:
            return vectors.float()[None].expand(n, -1, -1)
        if k == 1 and vectors.shape[0] == n:
            return vectors.float()[:, None]
        raise ValueError(f"vectors (m, d) must have m = len(layers) = {k} (or m = n_prompts = {n} with one block)")
    if tuple(vectors.shape[:2]) != (n, k):
        raise ValueError(f"vectors (n, K, d) must have n = {n} prompts and K = {k} blocks, got {tuple(vectors.shape)}")
    return vectors.float()


def add_vector_predictions(model, tokenizer, prompts: Sequence[str], vectors, layers: Sequence[int] | int | None,
                           fmt: PromptFormat | str = "example", max_rows: int = 512) -> torch.Tensor:
    """Greedy next-token ids with ``h_l[-1] += v`` after block ``l``, for every prompt and block: (n, K).

    ``vectors`` is one vector (d,) for every block (a function vector), one per block (K, d) (e.g. the mean
    difference ``Delta_l``), one per prompt (n, d) with a single block, or (n, K, d); ``layers`` the K blocks
    (``None``: all). The batched KV-cached sweep of :func:`icllib.task_vectors.patched_predictions`.
    """
    parts = model_parts(model)
    layers = check_layers(layers, parts.n_layers)
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    theta = _check_vectors(vectors, len(prompts), len(layers), parts.hidden_size)
    return patched_predictions(model, tokenizer, list(prompts), theta, layers, check_format(fmt), mode="add",
                               max_rows=max_rows)


def generate(model, tokenizer, prompts: Sequence[str], n_new: int, vector: torch.Tensor | None = None,
             layer: int | None = None, add_bos: bool = False) -> list[str]:
    """Greedy continuations of ``n_new`` tokens, with ``vector`` (d,) added after block ``layer`` at the prompt's
    last token and at every generated token (the paper's natural-text protocol); without a vector, plain greedy.
    Hugging Face models only (the generated tokens reuse the KV cache)."""
    n_new = check_int("n_new", n_new, minimum=1)
    if not is_hf_model(model):
        raise ValueError("generate needs a Hugging Face model (it extends a KV cache token by token)")
    parts = model_parts(model)
    if vector is not None:
        vector = as_float_tensor("vector", vector, ndim=1)
        if vector.shape[0] != parts.hidden_size:
            raise ValueError(f"vector must have shape ({parts.hidden_size},), got {tuple(vector.shape)}")
        layer = check_layer(layer, parts.n_layers)
    batch = tokenize_left_padded(tokenizer, list(prompts), add_bos=add_bos, device=model_device(model))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    rows = torch.arange(len(ids))
    patch = {} if vector is None else {layer: (rows, vector.float()[None].expand(len(ids), -1))}
    cache, new = None, []
    for _ in range(n_new):
        with patch_last_position(model, patch, mode="add") if patch else contextlib.nullcontext():
            logits, cache = forward_last(model, ids, mask, past_key_values=cache, use_cache=True)
        ids = logits.argmax(-1)[:, None]
        mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
        new.append(ids.cpu())
    tokens = torch.cat(new, dim=1)
    return [tokenizer.decode(row.tolist()) for row in tokens]


_WORD = re.compile(r"[^\s\"'.,;:!?()\[\]]+")


def contains_answer(scorer: Scorer | Task | None = None, max_words: int = 3) -> Scorer:
    """A scorer ``(text, x, y) -> bool`` for generated text: whether ``scorer`` accepts some run of at most
    ``max_words`` consecutive words of ``text`` (the paper counts a natural-text answer when the target appears in
    the generation)."""
    scorer = as_scorer(scorer)
    max_words = check_int("max_words", max_words, minimum=1)

    def score(text: str, x: str, y: str) -> bool:
        words = _WORD.findall(text)
        return any(scorer(" ".join(words[i:j]), x, y) for i in range(len(words))
                   for j in range(i + 1, min(len(words), i + max_words) + 1))

    return score


@dataclass
class FunctionVectorResult:
    """One task's function-vector evaluation (see :func:`evaluate`).

    Accuracies on the test queries: ``zero_shot`` (``[x]``), ``zero_shot_fv`` (``[x]`` with ``v_t`` added after block
    ``layer``), ``shuffled`` (``[S~, x]``, labels permuted), ``shuffled_fv`` and, for reference, ``icl``
    (``[S, x]``, the same demonstrations unshuffled). ``dev_curve[l]``: dev accuracy of ``[x] + v_t`` at block
    ``l``; ``layer``: its first maximum unless given. ``heads``: the set A; ``effects`` (L, H) the indirect effects
    that ranked it; ``natural[template] = (without, with)`` accuracies of greedy generation. ``hits`` holds the
    per-query bool arrays (one query per prompt: :meth:`interval` is Wilson).
    """

    zero_shot: float
    zero_shot_fv: float
    shuffled: float
    shuffled_fv: float
    icl: float
    layer: int
    dev_curve: np.ndarray
    heads: list[tuple[int, int]]
    effects: np.ndarray
    fv_norm: float
    natural: dict[str, tuple[float, float]]
    test_queries: list[Pair]
    predictions: dict[str, list[str]] = field(default_factory=dict)
    hits: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    def interval(self, which: str, level: float = 0.95) -> Interval:
        """The accuracy ``which`` (a key of ``hits``) with its Wilson interval."""
        if which not in self.hits:
            raise ValueError(f"which must be one of {sorted(self.hits)}, got {which!r}")
        return accuracy_interval(self.hits[which], level)


def _decode(tokenizer, ids: torch.Tensor) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids.reshape(-1).tolist()]


def _task_heads(model, tokenizer, train: list[Pair], n_demos: int, n_prompts: int, n_mean_prompts: int, fmt,
                effects, rng: np.random.Generator, method: str, batch_size: int, progress: bool):
    """``(abar (L, H, D), effects (L, H))`` of a task from its training pairs (effects computed unless given)."""
    clean = draw_prompts(train, n_mean_prompts, n_demos, rng)
    means = _activations(model, tokenizer, [fmt.prompt(d, q[0]) for d, q in clean], fmt, batch_size).mean(0)
    if effects is None:
        corrupted = draw_prompts(train, n_prompts, n_demos, rng, shuffle_labels=True)
        answers = answer_ids(tokenizer, [q[1] for _, q in corrupted], fmt)
        effects = _effects(model, tokenizer, [fmt.prompt(d, q[0]) for d, q in corrupted], answers, means, fmt,
                           method, batch_size=batch_size, progress=progress).double().mean(0)
    return means, effects


def _check_effects(effects, n_layers: int, n_heads: int) -> torch.Tensor | None:
    if effects is None:
        return None
    effects = as_float_tensor("effects", torch.as_tensor(effects) if isinstance(effects, np.ndarray) else effects,
                              ndim=2)
    if tuple(effects.shape) != (n_layers, n_heads):
        raise ValueError(f"effects must have shape ({n_layers}, {n_heads}), got {tuple(effects.shape)}")
    return effects.double()


def _test_predictions(model, tokenizer, fv, layer: int, train, test, n_demos, fmt, rng) -> dict[str, list[str]]:
    """Decoded predictions on the test queries: zero-shot, shuffled-label and clean ICL (the same demonstrations,
    unshuffled), the first two also with ``v_t``."""
    sets = draw_prompts(train, len(test), n_demos, rng, queries=test)
    shuffled = [(_shuffled(d, rng), q) for d, q in sets]  # the same demonstrations, labels permuted
    prompts = {"zero_shot": [fmt.prompt([], x) for x, _ in test],
               "shuffled": [fmt.prompt(d, q[0]) for d, q in shuffled], "icl": [fmt.prompt(d, q[0]) for d, q in sets]}
    out = {which: _decode(tokenizer, predict(model, tokenizer, p, fmt)) for which, p in prompts.items()}
    for which in ("zero_shot", "shuffled"):
        out[f"{which}_fv"] = _decode(tokenizer, add_vector_predictions(model, tokenizer, prompts[which], fv, [layer],
                                                                       fmt))
    return out


@not_in_key("method", "batch_size")
def evaluate(
    model, tokenizer, pairs: Sequence[Pair], n_heads: int = 10, layer: int | None = None, seed: int = 0,
    n_demos: int = 10, n_prompts: int = 25, n_mean_prompts: int = 100, n_dev: int | None = None,
    n_test: int | None = None, query_fraction: float = 0.3, scorer: Scorer | Task | None = None,
    fmt: PromptFormat | str = "example", effects=None, templates: Sequence[str] = TEMPLATES, n_new: int = 5,
    method: str = "auto", batch_size: int = 8, progress: bool = True,
) -> FunctionVectorResult:
    """Zero-shot, shuffled-label and natural-text accuracy of one task with and without its function vector.

    Seeded by ``seed``: :func:`split_queries` holds out ``query_fraction`` of ``pairs`` (first ``n_dev`` dev and
    ``n_test`` test queries, all when None); ``n_mean_prompts`` clean prompts of ``n_demos`` training pairs give
    ``abar_{lj}``; ``n_prompts`` shuffled-label prompts the indirect effects, unless ``effects`` (L, H) is given
    (e.g. the mean over tasks, as the paper ranks heads); ``v_t`` sums the ``n_heads`` top heads
    (:func:`icllib.function_vectors.heads.top_heads`, :func:`icllib.function_vectors.heads.function_vector`).
    ``layer=None`` adds it after the block with the best dev accuracy of ``[x] + v_t``.
    Test prompts draw their demonstrations from the training pairs; ``scorer(prediction, x, y)`` judges one
    greedy token (default exact match; a ``lang_tasks.Task`` scores by its own rule) and, through
    :func:`contains_answer`, the ``n_new`` generated tokens of each natural-text template (``{x}`` = the query).
    """
    pairs, fmt, scorer = check_pairs("pairs", pairs), check_format(fmt), as_scorer(scorer)
    parts = model_parts(model)
    seed, n_new = check_int("seed", seed, minimum=0), check_int("n_new", n_new, minimum=1)
    train, dev, test = split_queries(pairs, query_fraction, seed)
    dev = dev[:check_int("n_dev", n_dev, minimum=1)] if n_dev is not None else dev
    test = test[:check_int("n_test", n_test, minimum=1)] if n_test is not None else test
    n_demos = check_int("n_demos", n_demos, minimum=1, maximum=len(train) - 1)
    n_prompts, n_mean_prompts = check_int("n_prompts", n_prompts, minimum=1), check_int("n_mean_prompts",
                                                                                         n_mean_prompts, minimum=1)
    effects = _check_effects(effects, parts.n_layers, _n_heads_of(model))
    n_heads = check_int("n_heads", n_heads, minimum=1, maximum=parts.n_layers * _n_heads_of(model))
    layer = None if layer is None else check_layer(layer, parts.n_layers)
    if isinstance(templates, str) or any(not isinstance(t, str) or "{x}" not in t for t in templates):
        raise ValueError(f"templates must be a list of strings with a '{{x}}' slot, got {templates!r}")
    method, batch_size = check_method(model, method), check_int("batch_size", batch_size, minimum=1)
    rng = np.random.default_rng(seed)
    means, effects = _task_heads(model, tokenizer, train, n_demos, n_prompts, n_mean_prompts, fmt, effects, rng,
                                 method, batch_size, progress)
    heads = top_heads(effects, n_heads)
    fv = function_vector(model, means, heads)
    dev_ids = add_vector_predictions(model, tokenizer, [fmt.prompt([], x) for x, _ in dev], fv, None, fmt)
    dev_curve = np.array([hits(_decode(tokenizer, dev_ids[:, l]), dev, scorer).mean() for l in range(parts.n_layers)])
    layer = int(np.argmax(dev_curve)) if layer is None else layer
    predictions = _test_predictions(model, tokenizer, fv, layer, train, test, n_demos, fmt, rng)
    scored = {which: hits(words, test, scorer) for which, words in predictions.items()}
    natural = _natural(model, tokenizer, fv, layer, test, templates, n_new, fmt, scorer, scored, predictions,
                       progress)
    return FunctionVectorResult(
        **{which: float(scored[which].mean()) for which in ("zero_shot", "zero_shot_fv", "shuffled", "shuffled_fv",
                                                             "icl")},
        layer=layer, dev_curve=dev_curve, heads=heads, effects=effects.numpy(), fv_norm=float(fv.norm()),
        natural=natural, test_queries=test, predictions=predictions, hits=scored,
    )


def _n_heads_of(model) -> int:
    return attention_outputs(model).n_heads


def _natural(model, tokenizer, fv, layer, test, templates, n_new, fmt, scorer, scored, predictions, progress):
    """Greedy generation in each template, without and with ``v_t``; fills ``scored``/``predictions`` in place."""
    natural = {}
    judge = contains_answer(scorer)
    for i, template in enumerate(tqdm(templates, desc="templates", disable=not progress, leave=False)):
        prompts = [template.format(x=x) for x, _ in test]
        for suffix, vector in (("", None), ("_fv", fv)):
            words = generate(model, tokenizer, prompts, n_new, vector, layer, add_bos=fmt.bos)
            predictions[f"template{i}{suffix}"] = words
            scored[f"template{i}{suffix}"] = hits(words, test, judge)
        natural[template] = (float(scored[f"template{i}"].mean()), float(scored[f"template{i}_fv"].mean()))
    return natural
