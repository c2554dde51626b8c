"""Training the causal transformer on sequence prompts (Chapter 10), through the book's one loop.

:func:`train_sequence_model` is a set-up around :func:`icllib.train.train_loop`: a draw (fresh prompts from
:mod:`icllib.bridge.sequences`), a step (AdamW on the squared error at the arrows, :func:`_arrow_loss`, with a warm-up
and cosine schedule) and a recorder (errors on fixed evaluation prompts). It returns the same
:class:`icllib.train.TrainingHistory` as the Part I objectives.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from icllib._checks import check_bool, check_float, check_generator, check_int
from icllib.bridge.sequences import SequenceBatch, SequenceLayout, _check_dictionary, _sample_sequences
from icllib.bridge.sweep import _predictions
from icllib.train import LoopConfig, TrainingHistory, train_loop

__all__ = ["train_sequence_model"]


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


def _sequence_recorder(model: nn.Module, evaluation: SequenceBatch, tokens: torch.Tensor):
    """The evaluation on fixed full-length prompts: errors at the query arrow and at the bare query."""
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
    min_demos: int | None = None,
    warmup: int = 100,
    weight_decay: float = 0.0,
    eval_every: int = 100,
    n_eval: int = 1000,
    progress: bool = True,
) -> TrainingHistory:
    """Train a causal sequence model (e.g. :class:`icllib.models.causal.CausalTransformer`) on fresh prompts.

    Each step draws ``batch_size`` new prompts (:func:`~icllib.bridge.sequences.sample_sequences`) and takes an
    AdamW step on

        loss = (1 - w) * mean_{i <= N} (out_{arrow_i} - y_i)^2 + w * mean (out_{arrow_q} - y_q)^2,   w = query_weight,

    the squared error at every arrow: the demonstration arrows (predict ``y_i`` from the ``i - 1`` labels before
    it) and the query arrow (predict the unseen token's label from all demonstrations). With ``min_demos`` every
    prompt draws its own number of demonstrations uniformly from ``min_demos..N`` (right-padded batches; the mean
    over demonstration arrows runs over the shown ones, the query term over each prompt's own query arrow), so short
    prompts, down to the bare query ``[BOS] x ->`` (``min_demos = 0``), are trained cases too; by default every
    prompt shows all N. The learning rate warms up linearly over ``warmup`` steps, then follows a cosine down to
    ``lr / 10``. ``n_eval`` fixed full-length prompts (drawn first from ``generator``) give the history's series:
    ``query_mse`` (the prediction at the query arrow against the query's noisy label ``y_q``), ``ridge_mse``
    (against Theorem 2's prediction ``z_q^T lambda_hat``: how far the model is from the closed form) and
    ``bare_mse`` (the mean square of the read-out at the bare query ``[BOS] x_q ->`` of the same prompts, its
    distance from the prior mean 0), and its constants ``ridge_floor`` (the ridge prediction's own error against
    ``y_q``) and ``zero_mse`` (that of predicting 0). The model is updated in place and left in eval mode.
    """
    tokens, Z_all = _check_dictionary(tokens, Z_all)
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=Z_all.shape[1] - 1)
    tau = check_float("tau", tau, minimum=0.0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    check_generator("generator", generator)
    query_weight = check_float("query_weight", query_weight, minimum=0.0, maximum=1.0)
    check_bool("shuffle", shuffle)
    if min_demos is not None:
        min_demos = check_int("min_demos", min_demos, minimum=0, maximum=n_labeled)
    warmup = check_int("warmup", warmup, minimum=0)
    weight_decay = check_float("weight_decay", weight_decay, minimum=0.0)
    n_eval = check_int("n_eval", n_eval, minimum=2)
    loop = LoopConfig(steps, eval_every, progress=progress)
    tokens = tokens.to(_check_model(model, tokens.shape[1], bos))
    config = {"lr": lr, "batch_size": batch_size, "query_weight": query_weight, "warmup": warmup,
              "weight_decay": weight_decay, "shuffle": shuffle, "bos": bos, "tau": tau, "min_demos": min_demos}
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
    tau, shuffle, bos, min_demos = config["tau"], config["shuffle"], config["bos"], config["min_demos"]
    evaluation = _sample_sequences(tokens, Z64, n_labeled, tau, n_eval, generator, shuffle, bos)
    y_q = evaluation.targets[:, -1].double()
    history = TrainingHistory("causal transformer", config=config, constants={
        "ridge_floor": float(((evaluation.ridge - y_q) ** 2).mean()), "zero_mse": float((y_q**2).mean())})
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config["warmup"], loop.steps))
    arrows = SequenceLayout(tokens.shape[1], bos).arrow_positions(n_labeled)

    def draw() -> SequenceBatch:
        return _sample_sequences(tokens, Z64, n_labeled, tau, batch_size, generator, shuffle, bos,
                                 min_demos=min_demos)

    def step(batch: SequenceBatch) -> float:
        loss = _arrow_loss(model(batch.inputs)[:, arrows, 0], batch, config["query_weight"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return float(loss.detach())

    model.train()
    train_loop(loop, history, step, _sequence_recorder(model, evaluation, tokens), draw=draw)
    model.eval()
    return history
