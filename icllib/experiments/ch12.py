"""Chapter 12's computations: function vectors against task vectors and the residual mean difference.

Two recorded steps (``records.result``): :func:`head_effects` (the causal-mediation pass on every task: the indirect
effect of every block and head, per corrupted prompt) and :func:`compare` (with the heads ranked over tasks: the
function vector ``v_t``, Hendel et al.'s ``theta_l(S)`` and Chapter 11's ``Delta_l`` on the same dev and test
queries, their block curves, zero-shot and shuffled-label accuracy, natural-text templates, and how much of
``theta_L(S)`` the top heads' outputs carry). :func:`task_activations` is the shared, cached first step of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from icllib import function_vectors as fv
from icllib import task_vectors as tv
from icllib.cache import cached_call
from icllib.lang_tasks import Task, filter_single_token, hits, load_task
from icllib.llm import n_layers
from icllib.tv_experiments import mean_difference

__all__ = ["Config", "Activations", "task_activations", "head_effects", "TaskComparison", "compare",
           "head_space"]


@dataclass(frozen=True)
class Config:
    """The sizes of one edition: demonstrations per prompt, clean prompts behind the means, corrupted prompts per
    task, bare queries behind ``Delta_l``, dev and test queries, natural-text templates and generated tokens."""

    n_demos: int = 10
    n_mean_prompts: int = 100
    n_prompts: int = 25
    n_bare: int = 100
    n_dev: int = 20
    n_test: int = 50
    query_fraction: float = 0.3
    n_dummies: int = 2
    templates: tuple[str, ...] = fv.TEMPLATES
    n_new: int = 5
    seed: int = 0


def _task(name: str, tokenizer) -> tuple[Task, tv.PromptFormat]:
    task = filter_single_token(load_task(name), tokenizer)
    return task, tv.format_for_task(task, tv.DEFAULT_FORMAT)


def _split(task: Task, config: Config):
    train, dev, test = fv.split_queries(task.pairs, config.query_fraction, config.seed)
    return train, dev[:config.n_dev], test[:config.n_test]


@dataclass
class Activations:
    """One task's activations at the last token: per clean prompt (demonstrations and query from the training pairs)
    the head activations ``a_{lj}`` (n, L, H, D) and residual states ``h_l`` (n, L, d) (``theta_l(S)`` with the query
    as its one dummy); their means over bare prompts ``[x]`` of training inputs (L, H, D) and (L, d)."""

    heads: torch.Tensor
    states: torch.Tensor
    bare_heads: torch.Tensor
    bare_states: torch.Tensor


def task_activations(model, tokenizer, name: str, config: Config) -> Activations:
    """:class:`Activations` of task ``name`` (filtered to single-token answers), seeded by ``config.seed``."""
    task, fmt = _task(name, tokenizer)
    train, _, _ = _split(task, config)
    rng = np.random.default_rng(config.seed)
    clean = fv.draw_prompts(train, config.n_mean_prompts, config.n_demos, rng)
    heads, states = fv.head_activations(model, tokenizer, [fmt.prompt(d, q[0]) for d, q in clean], fmt,
                                        with_states=True)
    bare = [fmt.prompt([], train[i][0]) for i in rng.permutation(len(train))[:config.n_bare]]
    bare_heads, bare_states = fv.head_activations(model, tokenizer, bare, fmt, with_states=True)
    return Activations(heads, states, bare_heads.mean(0), bare_states.mean(0))


def head_effects(model, tokenizer, names: list[str], config: Config) -> dict[str, np.ndarray]:
    """``{task: CIE}``, the indirect effect of every block and head on each of ``config.n_prompts`` prompts with
    shuffled labels (demonstrations and queries from the training pairs): float32 (n_prompts, L, H) per task."""
    out = {}
    for name in names:
        task, fmt = _task(name, tokenizer)
        train, _, _ = _split(task, config)
        means = cached_call(task_activations, model, tokenizer, name, config).heads.mean(0)
        rng = np.random.default_rng(config.seed + 1)
        corrupted = fv.draw_prompts(train, config.n_prompts, config.n_demos, rng, shuffle_labels=True)
        answers = fv.answer_ids(tokenizer, [q[1] for _, q in corrupted], fmt)
        effects = fv.indirect_effects(model, tokenizer, [fmt.prompt(d, q[0]) for d, q in corrupted], answers, means,
                                      fmt)
        out[name] = effects.numpy().astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Function vector, task vector and mean difference on the same queries
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class TaskComparison:
    """One task: the three vectors on the same dev and test queries.

    ``dev_hits[m]`` (n_dev, L) bool: dev query right with vector ``m`` applied after block ``l`` (``"fv"``: add
    ``v_t``; ``"delta"``: add ``Delta_l``; ``"tv"``: replace by ``theta_l(S)`` of the query's own demonstration set);
    ``layers[m]``: the first maximum of its dev accuracy. ``hits[which]`` (n_test,) bool on the test queries:
    ``zero_shot``, ``zero_shot_<m>``, ``zero_shot_fv_third`` (``v_t`` after block ``L // 3``, the paper's depth),
    ``shuffled``, ``shuffled_<m>``, ``icl`` (the test sets' demonstrations unshuffled) and ``template<i>``,
    ``template<i>_fv`` (greedy generation in ``config.templates[i]`` without and with ``v_t``). ``cosine[l]``:
    cosine of ``v_t`` and ``Delta_l``; ``space``: :func:`head_space` at the task vector's block.
    """

    name: str
    dev_hits: dict[str, np.ndarray]
    layers: dict[str, int]
    hits: dict[str, np.ndarray]
    cosine: np.ndarray
    fv_norm: float
    delta_norm: np.ndarray
    space: dict[str, float] = field(default_factory=dict)


def _sets(train, queries, config: Config, rng: np.random.Generator):
    """Demonstration sets for ``queries`` (one each, from the training pairs) and their dummy queries."""
    sets = fv.draw_prompts(train, len(queries), config.n_demos, rng, queries=queries)
    dummies = []
    for demos, _ in sets:
        used = {x for x, _ in demos}
        pool = [x for x, _ in train if x not in used]
        dummies.append([pool[i] for i in rng.choice(len(pool), size=config.n_dummies, replace=False)])
    return sets, dummies


def _hits(tokenizer, ids: torch.Tensor, pairs, task: Task) -> np.ndarray:
    return hits([tokenizer.decode([int(i)]) for i in ids.reshape(-1).tolist()], pairs, task)


def _dev_hits(model, tokenizer, task, fmt, vectors: dict, dev, theta: torch.Tensor) -> dict[str, np.ndarray]:
    """``(n_dev, L)`` hits of every block for each vector (``vectors["fv"]`` (d,), ``vectors["delta"]`` (L, d))."""
    bare = [fmt.prompt([], x) for x, _ in dev]
    ids = {m: fv.add_vector_predictions(model, tokenizer, bare, v, None, fmt) for m, v in vectors.items()}
    ids["tv"] = tv.patched_predictions(model, tokenizer, bare, theta, None, fmt, mode="replace")
    return {m: np.stack([_hits(tokenizer, i[:, l], dev, task) for l in range(i.shape[1])], 1) for m, i in ids.items()}


def _add_many(model, tokenizer, prompts, conditions: dict, fmt) -> dict[str, torch.Tensor]:
    """Greedy ids of ``prompts`` with each ``conditions[m] = (vector (d,), block)`` added, several conditions per
    call (one shared prompt prefix) as long as their blocks differ."""
    out, todo = {}, dict(conditions)
    while todo:
        batch, used = {}, set()
        for m, (v, layer) in todo.items():
            if layer not in used:
                batch[m], used = (v, layer), used | {layer}
        theta = torch.stack([v.float() for v, _ in batch.values()])[None].expand(len(prompts), -1, -1)
        ids = fv.add_vector_predictions(model, tokenizer, prompts, theta, [l for _, l in batch.values()], fmt)
        out.update({m: ids[:, k] for k, m in enumerate(batch)})
        todo = {m: c for m, c in todo.items() if m not in batch}
    return out


def _test_hits(model, tokenizer, task, fmt, vectors, layers, test, sets, theta, rng) -> dict[str, np.ndarray]:
    """Test hits of every condition (see :class:`TaskComparison`)."""
    prompts = {"zero_shot": [fmt.prompt([], x) for x, _ in test],
               "shuffled": [fmt.prompt(fv.shuffle_labels(d, rng), q[0]) for d, q in sets],
               "icl": [fmt.prompt(d, q[0]) for d, q in sets]}
    out = {w: _hits(tokenizer, tv.predict(model, tokenizer, p, fmt), test, task) for w, p in prompts.items()}
    added = {"fv": (vectors["fv"], layers["fv"]), "delta": (vectors["delta"][layers["delta"]], layers["delta"])}
    for which in ("zero_shot", "shuffled"):
        extra = {"fv_third": (vectors["fv"], n_layers(model) // 3)} if which == "zero_shot" else {}
        for m, ids in _add_many(model, tokenizer, prompts[which], {**added, **extra}, fmt).items():
            out[f"{which}_{m}"] = _hits(tokenizer, ids, test, task)
        ids = tv.patched_predictions(model, tokenizer, prompts[which], theta[:, layers["tv"]], [layers["tv"]], fmt,
                                     mode="replace")[:, 0]
        out[f"{which}_tv"] = _hits(tokenizer, ids, test, task)
    return out


def _natural(model, tokenizer, task, fmt, v, layer, test, config: Config) -> dict[str, np.ndarray]:
    judge, out = fv.contains_answer(task), {}
    for i, template in enumerate(config.templates):
        prompts = [template.format(x=x) for x, _ in test]
        for suffix, vector in (("", None), ("_fv", v)):
            words = fv.generate(model, tokenizer, prompts, config.n_new, vector, layer, add_bos=fmt.bos)
            out[f"template{i}{suffix}"] = hits(words, test, judge)
    return out


def compare_task(model, tokenizer, name: str, heads: list[tuple[int, int]], config: Config) -> TaskComparison:
    """:class:`TaskComparison` of task ``name`` with the function vector of ``heads`` (the set A)."""
    task, fmt = _task(name, tokenizer)
    train, dev, test = _split(task, config)
    acts = cached_call(task_activations, model, tokenizer, name, config)
    delta = mean_difference(acts.states, acts.bare_states[None])  # (L, d)
    vectors = {"fv": fv.function_vector(model, acts.heads.mean(0), heads), "delta": delta}
    rng = np.random.default_rng(config.seed + 2)
    dev_sets, dev_dummies = _sets(train, dev, config, rng)
    theta_dev = tv.extract_task_vectors(model, tokenizer, [d for d, _ in dev_sets], dev_dummies, fmt)
    dev_hits = _dev_hits(model, tokenizer, task, fmt, vectors, dev, theta_dev)
    layers = {m: int(np.argmax(h.mean(0))) for m, h in dev_hits.items()}  # first maximum
    test_sets, test_dummies = _sets(train, test, config, rng)
    theta_test = tv.extract_task_vectors(model, tokenizer, [d for d, _ in test_sets], test_dummies, fmt)
    test_hits = _test_hits(model, tokenizer, task, fmt, vectors, layers, test, test_sets, theta_test, rng)
    test_hits.update(_natural(model, tokenizer, task, fmt, vectors["fv"], layers["fv"], test, config))
    cosine = torch.nn.functional.cosine_similarity(vectors["fv"][None], delta, dim=-1)
    return TaskComparison(name, dev_hits, layers, test_hits, cosine.numpy(), float(vectors["fv"].norm()),
                          delta.norm(dim=-1).numpy(), head_space(model, acts, heads, layers["tv"], config.seed))


def compare(model, tokenizer, names: list[str], heads: list[tuple[int, int]], config: Config
            ) -> dict[str, TaskComparison]:
    """:func:`compare_task` for every task in ``names`` (each cached on its own), with the same heads."""
    heads = [(int(l), int(j)) for l, j in heads]
    return {name: cached_call(compare_task, model, tokenizer, name, heads, config) for name in names}


# ----------------------------------------------------------------------------------------------------------------
# Where the task vector lives in head space
# ----------------------------------------------------------------------------------------------------------------
def head_space(model, acts: Activations, heads: list[tuple[int, int]], layer: int, seed: int = 0,
               n_random: int = 50) -> dict[str, float]:
    """How much of ``theta_layer(S)`` the outputs of the heads in ``heads`` carry (those at blocks <= ``layer``).

    The residual stream is a sum of the blocks' outputs, so ``Delta = mean_S theta_L(S) - mean_x h_L([x])`` splits
    exactly into each head's and each MLP's change between ICL and bare prompts. For a set of heads with summed
    change ``s``: ``share = s . Delta / |Delta|^2`` (the part of Delta along itself that they carry; all parts add
    to 1) and ``r2 = 1 - |Delta - s|^2 / |Delta|^2``; over demonstration sets, ``var`` is the fraction of the
    variance of ``theta_L(S)`` that their per-prompt outputs explain, ``1 - sum_i |d_i - e_i|^2 / sum_i |d_i|^2``
    with ``d_i``, ``e_i`` the centred ``theta_L(S_i)`` and summed outputs. Returned for the top heads (``top``), for
    every head at blocks <= ``layer`` (``all``) and, as a baseline, for ``n_random`` random sets of as many heads
    from those blocks (mean ``random_share`` and its 95th percentile ``random_share_p95``); ``n_top`` counts the
    top heads at blocks <= ``layer``.
    """
    per_prompt = fv.head_outputs(model, acts.heads)[:, :layer + 1].double()  # (n, layer + 1, H, d)
    bare = fv.head_outputs(model, acts.bare_heads)[:layer + 1].double()
    theta = acts.states[:, layer].double()
    delta = theta.mean(0) - acts.bare_states[layer].double()
    d = theta - theta.mean(0)

    def measures(selected: list[tuple[int, int]]) -> tuple[float, float, float]:
        if not selected:
            return 0.0, 0.0, 0.0
        index = torch.tensor(selected)
        summed = per_prompt[:, index[:, 0], index[:, 1]].sum(1)  # (n, d)
        s = summed.mean(0) - bare[index[:, 0], index[:, 1]].sum(0)
        e = summed - summed.mean(0)
        return (float(s @ delta / (delta @ delta)), float(1 - (delta - s).square().sum() / delta.square().sum()),
                float(1 - (d - e).square().sum() / d.square().sum()))

    top = [(l, j) for l, j in heads if l <= layer]
    everyone = [(l, j) for l in range(layer + 1) for j in range(per_prompt.shape[2])]
    rng = np.random.default_rng(seed)
    random = [measures([everyone[i] for i in rng.choice(len(everyone), size=len(top), replace=False)])[0]
              for _ in range(n_random)] if top else [0.0]
    out = {"n_top": float(len(top)), "layer": float(layer)}
    for key, selected in (("top", top), ("all", everyone)):
        out.update(zip((f"{key}_share", f"{key}_r2", f"{key}_var"), measures(selected)))
    out.update(random_share=float(np.mean(random)), random_share_p95=float(np.quantile(random, 0.95)))
    return out
