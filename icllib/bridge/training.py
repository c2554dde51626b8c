"""Training the causal transformer on sequence prompts (Chapter 10), through the book's one loop.

:func:`train_sequence_model` is a set-up around :func:`icllib.train.train_loop`: a draw (fresh prompts from
:mod:`icllib.bridge.sequences`), a step (AdamW on the squared error at the prediction positions, ``_arrow_loss``,
with a warm-up and cosine schedule; optionally plus a task-vector-prompting term, ``_tvp_loss``) and a recorder
(errors on fixed evaluation prompts). It returns the same :class:`icllib.train.TrainingHistory` as the Part I
objectives. :func:`fit_learned_vector` fits Saglam et al.'s learned task vector (a weight per block and head) on a
trained model, through the same loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from icllib._checks import as_float_tensor, check_bool, check_float, check_generator, check_int
from icllib.bridge.interventions import _attention, _learned_vector_outputs, keep_last
from icllib.bridge.sequences import (SequenceBatch, SequenceLayout, _check_dictionary, _sample_dummy_queries,
                                     _sample_sequences)
from icllib.bridge.sweep import _predictions
from icllib.llm import model_parts
from icllib.task_vectors import trace
from icllib.task_vectors.hooks import write_last
from icllib.train import LoopConfig, TrainingHistory, train_loop

__all__ = ["train_sequence_model", "fit_learned_vector"]


def _arrow_loss(out: torch.Tensor, batch: SequenceBatch, query_weight: float) -> torch.Tensor:
    """(ch10-loss) from the read-outs at the N + 1 arrow positions, (n, N + 1): demonstration arrows and query."""
    if batch.n_shown is None:  # every prompt shows all N: the query is the last arrow
        query_loss = ((out[:, -1] - batch.targets[:, -1]) ** 2).mean()
        demo_loss = ((out[:, :-1] - batch.targets[:, :-1]) ** 2).mean()
        return (1 - query_weight) * demo_loss + query_weight * query_loss
    rows = torch.arange(out.shape[0])
    query_loss = ((out[rows, batch.n_shown] - batch.targets[rows, batch.n_shown]) ** 2).mean()
    demo = batch.arrow_mask.clone()
    demo[rows, batch.n_shown] = False  # the arrows before prompt i's query; padding arrows are never scored
    n_demo = int(demo.sum())
    if n_demo == 0:  # only bare queries in this batch
        return query_weight * query_loss
    demo_loss = (((out - batch.targets) ** 2) * demo).sum() / n_demo
    return (1 - query_weight) * demo_loss + query_weight * query_loss


def _warmup_cosine(warmup: int, steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then a cosine from 1 down to 0.1 at ``steps``."""
    def rate(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return rate


def _tvp_loss(model: nn.Module, batch: SequenceBatch, tokens: torch.Tensor, dummies: torch.Tensor,
              block: int) -> torch.Tensor:
    """The task-vector-prompting term: theta = block ``block``'s state at the last position of ``[S, x' ->]``
    (graph kept), written over the last position of ``[x ->]`` after that block; squared error against y_x."""
    blocks = model_parts(model).blocks
    store: dict = {}
    with trace({block: blocks[block]}, edit_output=keep_last(store)):
        model(batch.with_queries(tokens, dummies))
    rows = torch.arange(batch.n_prompts)
    with trace({block: blocks[block]}, edit_output=write_last({block: (rows, store[block])}, "replace")):
        out = model(batch.bare_queries(tokens))[:, -1, 0]
    return ((out - batch.targets[rows, batch.shown]) ** 2).mean()


def _sequence_recorder(model: nn.Module, evaluation: SequenceBatch, tokens: torch.Tensor):
    """The evaluation on fixed full-length prompts: errors at the query and at the bare query."""
    y_q = evaluation.targets[:, -1].double()
    bare_inputs = evaluation.bare_queries(tokens)

    def record(step: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        pred = _predictions(model, evaluation.inputs).double()
        bare = _predictions(model, bare_inputs).double()
        model.train(was_training)
        return {"query_mse": float(((pred - y_q) ** 2).mean()),
                "ridge_mse": float(((pred - evaluation.ridge) ** 2).mean()),
                "bare_mse": float((bare**2).mean())}

    return record


def train_sequence_model(
    model: nn.Module,
    tokens,
    Z_all,
    n_labeled: int,
    tau: float,
    steps: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    *,
    generator: torch.Generator,
    query_weight: float = 0.5,
    shuffle: bool = False,
    bos: bool = True,
    arrow: bool = True,
    min_demos: int | None = None,
    tvp_block: int | None = None,
    tvp_weight: float = 1.0,
    warmup: int = 100,
    weight_decay: float = 0.0,
    eval_every: int = 100,
    n_eval: int = 1000,
    progress: bool = True,
) -> TrainingHistory:
    """Train a causal sequence model (e.g. :class:`icllib.models.causal.CausalTransformer`) on fresh prompts.

    Each step draws ``batch_size`` new prompts (:func:`~icllib.bridge.sequences.sample_sequences`, written with
    arrows or, ``arrow=False``, without) and takes an AdamW step on

        loss = (1 - w) * mean_{i <= N} (out_i - y_i)^2 + w * mean (out_q - y_q)^2,   w = query_weight,

    the squared error at every prediction position: the demonstrations' (predict ``y_i`` from the ``i - 1``
    labels before it) and the query's (predict the unseen token's label from all demonstrations). With
    ``min_demos`` every prompt draws its own number of demonstrations uniformly from ``min_demos..N`` (right-padded;
    the demonstration mean runs over the shown ones, the query term over each prompt's own query), so short
    prompts, down to the bare query (``min_demos = 0``), are trained cases too; by default every prompt shows all N.

    ``tvp_block = l`` adds ``tvp_weight`` times a task-vector-prompting term (after Yang et al. 2025, whose exact
    loss we could not read): for one dummy query x' per prompt, the state after block l at the last position of
    ``[S, x' ->]`` replaces the bare query's ``[x ->]`` there, and the read-out must predict ``y_x``; the gradient
    flows through both forwards. It needs full-length prompts (``min_demos=None``).

    The learning rate warms up linearly over ``warmup`` steps, then follows a cosine down to ``lr / 10``.
    ``n_eval`` fixed full-length prompts (drawn first from ``generator``) give the history's series: ``query_mse``
    (the prediction at the query against its noisy label ``y_q``), ``ridge_mse`` (against Theorem 2's prediction
    ``z_q^T lambda_hat``) and ``bare_mse`` (the mean square of the read-out at the bare query of the same prompts,
    its distance from the prior mean 0), and the constants ``ridge_floor`` (the ridge prediction's own error
    against ``y_q``) and ``zero_mse`` (that of predicting 0). The model is updated in place and left in eval mode.
    """
    tokens, Z_all = _check_dictionary(tokens, Z_all)
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=Z_all.shape[1] - 1)
    tau = check_float("tau", tau, minimum=0.0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    check_generator("generator", generator)
    query_weight = check_float("query_weight", query_weight, minimum=0.0, maximum=1.0)
    for name, flag in (("shuffle", shuffle), ("bos", bos), ("arrow", arrow)):
        check_bool(name, flag)
    if min_demos is not None:
        min_demos = check_int("min_demos", min_demos, minimum=0, maximum=n_labeled)
    warmup = check_int("warmup", warmup, minimum=0)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    n_eval = check_int("n_eval", n_eval, minimum=2)
    loop = LoopConfig(steps, eval_every, progress=progress)
    tokens = tokens.to(_check_model(model, tokens.shape[1], bos))
    tvp_weight = check_float("tvp_weight", tvp_weight, minimum=0.0)
    if tvp_block is not None:
        tvp_block = check_int("tvp_block", tvp_block, minimum=0, maximum=model_parts(model).n_layers - 1)
        if min_demos is not None:
            raise ValueError("tvp_block needs full-length prompts: leave min_demos at None")
        if Z_all.shape[1] - n_labeled < 2:
            raise ValueError("tvp_block needs a dummy query besides the real one: K - N >= 2 unseen tokens")
    config = {"lr": lr, "batch_size": batch_size, "query_weight": query_weight, "warmup": warmup,
              "weight_decay": weight_decay, "shuffle": shuffle, "bos": bos, "arrow": arrow, "tau": tau,
              "min_demos": min_demos, "tvp_block": tvp_block, "tvp_weight": tvp_weight}
    return _train(model, tokens, Z_all.double(), n_labeled, loop, generator, batch_size, n_eval, config)


def _check_model(model, d_token: int, bos: bool) -> torch.dtype:
    """The model's dtype, after checking that it reads sequences of this layout (when it says its ``d_input``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    d_input = getattr(model, "d_input", None)
    width = SequenceLayout(d_token, bos).d_input
    if d_input is not None and d_input != width:
        raise ValueError(f"model reads vectors of width {d_input} but the sequences have width {width} "
                         f"(d_token + 5); build it with that d_input")
    return next(model.parameters()).dtype


def _train(model, tokens, Z64, n_labeled: int, loop: LoopConfig, generator, batch_size: int, n_eval: int,
           config: dict) -> TrainingHistory:
    """The set-up on checked arguments: evaluation prompts, AdamW with its schedule, the draw and the step."""
    sample = {k: config[k] for k in ("shuffle", "bos", "arrow")}
    evaluation = _sample_sequences(tokens, Z64, n_labeled, config["tau"], n_eval, generator, **sample)
    y_q = evaluation.targets[:, -1].double()
    history = TrainingHistory("causal transformer", config=config, constants={
        "ridge_floor": float(((evaluation.ridge - y_q) ** 2).mean()), "zero_mse": float((y_q**2).mean())})
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config["warmup"], loop.steps))
    positions = SequenceLayout(tokens.shape[1], config["bos"], config["arrow"]).predict_positions(n_labeled)
    n_unseen, block = Z64.shape[1] - n_labeled, config["tvp_block"]

    def draw() -> tuple[SequenceBatch, torch.Tensor | None]:
        batch = _sample_sequences(tokens, Z64, n_labeled, config["tau"], batch_size, generator,
                                  min_demos=config["min_demos"], **sample)
        dummies = None if block is None else _sample_dummy_queries(batch.query_index, n_labeled, n_unseen, 1,
                                                                    generator)[:, 0]
        return batch, dummies

    def step(drawn) -> float:
        batch, dummies = drawn
        loss = _arrow_loss(model(batch.inputs)[:, positions, 0], batch, config["query_weight"])
        if block is not None:
            loss = loss + config["tvp_weight"] * _tvp_loss(model, batch, tokens, dummies, block)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return float(loss.detach())

    model.train()
    train_loop(loop, history, step, _sequence_recorder(model, evaluation, tokens), draw=draw)
    model.eval()
    return history


def fit_learned_vector(
    model: nn.Module,
    inputs,
    heads,
    targets,
    steps: int = 300,
    lr: float = 0.05,
    batch_size: int = 256,
    *,
    generator: torch.Generator,
    eval_every: int = 50,
    progress: bool = False,
) -> tuple[torch.Tensor, TrainingHistory]:
    """Fit Saglam et al.'s learned task vector: weights ``w`` (L, H), one per block and head, such that adding
    ``sum_h w[l, h] heads[:, l, h]`` to block l's output at the last position of ``inputs``, at every block, makes
    the read-out predict ``targets``.

    ``inputs`` (n, T, d_in) the training prompts' bare queries; ``heads`` (n, L, H, d_model) their demonstrations'
    head contributions (:func:`icllib.bridge.head_contributions` of ``[S, x']``); ``targets`` (n,) the labels to
    predict. Adam on the squared error over minibatches of ``batch_size`` rows, from ``w = 0`` (the zero-shot
    answer), through :func:`icllib.train.train_loop`. The model's own weights are frozen. Returns ``(w, history)``
    (``history.train_mse``: the mean squared error on all rows at each evaluation).
    """
    L = len(_attention(model))
    inputs = as_float_tensor("inputs", inputs, ndim=3, dtype=next(model.parameters()).dtype)
    heads = as_float_tensor("heads", heads, ndim=4)
    targets = as_float_tensor("targets", targets, ndim=1)
    n = inputs.shape[0]
    if heads.shape[0] != n or heads.shape[1] != L or targets.shape[0] != n:
        raise ValueError(f"heads must be (n={n}, L={L}, H, d_model) and targets (n={n},), got "
                         f"{tuple(heads.shape)} and {tuple(targets.shape)}")
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    check_generator("generator", generator)
    loop = LoopConfig(steps, eval_every, progress=progress)
    return _fit_learned_vector(model, inputs, heads, targets.to(inputs.dtype), loop, lr, batch_size, generator)


def _fit_learned_vector(model, inputs, heads, targets, loop: LoopConfig, lr: float, batch_size: int, generator):
    """:func:`fit_learned_vector` on checked arguments."""
    weights = torch.zeros(heads.shape[1], heads.shape[2], dtype=heads.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([weights], lr=lr)
    history = TrainingHistory("learned task vector", config={"lr": lr, "batch_size": batch_size})
    frozen = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)

    def record(step: int) -> dict[str, float]:
        with torch.no_grad():
            out = _learned_vector_outputs(model, inputs, heads, weights)
        return {"train_mse": float(((out - targets) ** 2).mean())}

    def step(rows) -> float:
        out = _learned_vector_outputs(model, inputs[rows], heads[rows], weights)
        loss = ((out - targets[rows]) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def draw() -> torch.Tensor:
        return torch.randint(0, inputs.shape[0], (min(batch_size, inputs.shape[0]),), generator=generator)

    try:
        train_loop(loop, history, step, record, draw=draw)
    finally:
        for p, flag in zip(model.parameters(), frozen):
            p.requires_grad_(flag)
    return weights.detach(), history
