"""Where task vectors appear in a trained causal transformer: every measurement of Chapter 10 on one model.

:func:`evaluate_model` takes a trained sequence model (:func:`icllib.bridge.train_sequence_model`) and measures, on
fresh dev and test prompts of its own format (with or without arrows), the relative errors

    E(prediction) = mean_i (prediction_i - y_i)^2 / mean_i y_i^2                                        (E1)

against the query's noisy label ``y_i``. Predicting 0 scores exactly 1, and since the task lambda is symmetric about
0, E[y | x] = 0: no predictor that ignores the demonstrations does better on average, so an error clearly below 1
needs information about the prompt's task. The errors measured are those of

- zero-shot (the bare query ``[BOS] x ->``), 1-shot ICL (the first demonstration only), k-shot ICL (all N), and the
  ridge predictions with N and with 1 demonstration (the floors);
- Part II's task vector (Hendel et al.): the state after block l at the last position of ``[S, x' ->]``, averaged
  over dummy queries, written over the bare query's last position; every block, the block chosen on dev prompts;
- Dong et al.'s extraction: block l's attention output there instead of the whole residual stream
  (:func:`icllib.bridge.attention_states`), every block, block 0 being theirs;
- Saglam et al.'s learned vector: weights per (block, head) fitted on separate training prompts
  (:func:`icllib.bridge.fit_learned_vector`), added at every block;
- the prompt's own state ``[S, x ->]`` patched into the bare query (is the last position self-sufficient?);

and the linear probes of lambda_hat(S) from the task vectors with their controls
(:func:`icllib.probes.probe_with_controls`), and how the best block's patched predictions track the ridge
predictions ``z_x^T lambda_hat(S)``. Everything comes back as a :class:`ModelReport` of small arrays and intervals
(no activations), so a grid of trained models fits in a record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from icllib import stats
from icllib._checks import check_int
from icllib.bridge.interventions import (_learned_vector_outputs, attention_patched_outputs, attention_states,
                                         head_contributions)
from icllib.bridge.sequences import SequenceBatch, _check_dictionary, _sample_dummy_queries, _sample_sequences
from icllib.bridge.sweep import _patched_outputs, _predictions, _task_vectors
from icllib.bridge.training import _fit_learned_vector
from icllib.llm import model_parts
from icllib.probes import probe_layers, probe_with_controls
from icllib.train import LoopConfig

__all__ = ["ModelReport", "evaluate_model", "relative_error"]

BASELINES = ("zero_shot", "one_shot", "icl", "ridge", "ridge_one_shot")
SAMPLE = 300


@dataclass
class ModelReport:
    """Chapter 10's measurements on one trained model (relative errors (E1) against the query's label).

    ``baselines``: ``{name: Interval}`` for ``zero_shot``, ``one_shot``, ``icl``, ``ridge``, ``ridge_one_shot``
    (bootstrap over test prompts). ``patched`` (L,): Part II's task vector at each block (test); ``patched_dev``
    (L,) the same on dev prompts; ``best_block``: the first minimum on dev; ``best``: the test error there, with its
    interval. ``dong`` (L,): the attention-output patch at each block (test); ``dong_best_block`` chosen on dev,
    ``dong_first`` and ``dong_best`` its intervals at block 0 and there. ``learned``: Saglam et al.'s learned
    vector (test), ``learned_weights`` (L, H). ``own`` (L,): the prompt's own state patched into the bare query.
    ``controls``: the same vectors taken from *another* prompt (prompt i gets prompt i-1's): ``best_other`` (Part
    II's at the best block), ``learned_other`` (the learned vector); a vector that carries its prompt's task does
    better than these, one that only corrects the bare query's answer does not.
    ``probes``: held-out R^2 per block of the probes of lambda_hat (``"target"``), the raw labels and their random
    image, and of the dummy queries' own ridge answers ``mean_x' z_x'^T lambda_hat`` (``"dummy answer"``: does the
    task vector hold the answer to the question it was extracted with?). ``tv_vs_ridge``: correlation of the best block's patched predictions with ``z_x^T lambda_hat``;
    ``recovered``: ``(E_zero - E) / (E_zero - E_icl)`` of ``best``, ``dong_best``, ``learned``: the share of what
    the demonstrations do in context that the vector does (0: no better than zero-shot, 1: as good as k-shot ICL).
    ``against_ridge``: relative errors (E1) of ``icl``, ``one_shot`` and ``best`` against the ridge predictions
    ``z_x^T lambda_hat(S)`` instead of the labels. ``sample``: float32 arrays of the first ``SAMPLE`` test
    prompts' ``ridge``, ``icl``, ``one_shot`` and ``best`` predictions (for scatter plots). ``n_test``, ``n_dev``:
    prompts.
    """

    baselines: dict
    patched: np.ndarray
    patched_dev: np.ndarray
    best_block: int
    best: stats.Interval
    dong: np.ndarray
    dong_best_block: int
    dong_first: stats.Interval
    dong_best: stats.Interval
    learned: stats.Interval
    learned_weights: np.ndarray
    own: np.ndarray
    controls: dict
    probes: dict
    tv_vs_ridge: float
    recovered: dict
    against_ridge: dict
    sample: dict
    n_test: int
    n_dev: int


def relative_error(predictions, labels) -> torch.Tensor:
    """(E1) of predictions (n,) or (n, L) against ``labels`` (n,): per column, float64."""
    pred = torch.as_tensor(predictions).double()
    labels = torch.as_tensor(labels).double()
    if pred.shape[0] != labels.shape[0]:
        raise ValueError(f"predictions must have {labels.shape[0]} rows like labels, got {tuple(pred.shape)}")
    ref = labels[:, None] if pred.ndim == 2 else labels
    return ((pred - ref) ** 2).mean(0) / (labels**2).mean()


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation, 0 when either side is constant."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm > 0 else 0.0


def _interval(predictions: torch.Tensor, labels: torch.Tensor) -> stats.Interval:
    """(E1) with a bootstrap interval over prompts (the denominator held fixed)."""
    scaled = ((predictions.double() - labels.double()) ** 2 / (labels.double() ** 2).mean()).numpy()
    return stats.bootstrap(scaled, n_resamples=1000)


@dataclass
class _Prompts:
    """One set of prompts and everything run on it (predictions are float64, (n,) or (n, L))."""

    batch: SequenceBatch
    labels: torch.Tensor
    dummies: list
    dummy_answer: torch.Tensor
    bare: torch.Tensor
    one_shot: SequenceBatch


def _prompts(model, tokens, Z64, n_labeled, tau, n, generator_seed, arrow, n_dummies) -> _Prompts:
    sample = dict(shuffle=True, bos=True, arrow=arrow)
    batch = _sample_sequences(tokens, Z64, n_labeled, tau, n, torch.Generator().manual_seed(generator_seed), **sample)
    one = _sample_sequences(tokens, Z64, n_labeled, tau, n, torch.Generator().manual_seed(generator_seed), n_demos=1,
                            **sample)  # the same prompts, their first demonstration only
    dummy_index = _sample_dummy_queries(batch.query_index, n_labeled, Z64.shape[1] - n_labeled, n_dummies,
                                        torch.Generator().manual_seed(generator_seed + 1))
    dummies = [batch.with_queries(tokens, dummy_index[:, j]) for j in range(n_dummies)]
    answer = torch.einsum("nm,mnj->n", batch.lambda_hat, Z64[:, dummy_index]) / n_dummies  # mean z_x'^T lambda_hat
    return _Prompts(batch, batch.targets[:, -1].double(), dummies, answer, batch.bare_queries(tokens), one)


def _residual_patch(model, p: _Prompts, layers) -> tuple[torch.Tensor, torch.Tensor]:
    """Part II's patched predictions (n, L) and the task vectors theta (n, L, d_model)."""
    theta = _task_vectors(model, p.dummies, layers)
    return _patched_outputs(model, p.bare, theta, layers, "replace", 8192).double(), theta


def _learned(model, tokens, Z64, n_labeled, tau, arrow, n_dummies, seed, steps, n_fit) -> torch.Tensor:
    """Saglam et al.'s weights (L, H), fitted on ``n_fit`` training prompts of their own."""
    fit = _prompts(model, tokens, Z64, n_labeled, tau, n_fit, seed + 7, arrow, n_dummies)
    heads = head_contributions(model, fit.dummies)
    weights, _ = _fit_learned_vector(model, fit.bare, heads, fit.labels.to(heads.dtype), LoopConfig(steps, steps,
                                     progress=False), 0.05, 256, torch.Generator().manual_seed(seed + 8))
    return weights


def evaluate_model(model: nn.Module, tokens, Z_all, n_labeled: int, tau: float, *, arrow: bool = True,
                   n_dev: int = 200, n_test: int = 1000, n_dummies: int = 2, learned_steps: int = 300,
                   n_fit: int = 1000, seed: int = 10) -> ModelReport:
    """Every measurement of :class:`ModelReport` on one trained model, on prompts drawn from ``seed`` (dev),
    ``seed + 2`` (test) and ``seed + 7`` (the learned vector's ``n_fit`` training prompts, ``learned_steps`` Adam
    steps; dummy queries from the next seed each time); demonstrations in a random order per prompt. ``tokens`` (K, d), ``Z_all`` (m, K) the dictionary the model was trained on."""
    tokens, Z_all = _check_dictionary(tokens, Z_all)
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=Z_all.shape[1] - 1)
    n_dev, n_test = check_int("n_dev", n_dev, minimum=10), check_int("n_test", n_test, minimum=20)
    n_dummies = check_int("n_dummies", n_dummies, minimum=1, maximum=Z_all.shape[1] - n_labeled - 1)
    learned_steps = check_int("learned_steps", learned_steps, minimum=1)
    n_fit = check_int("n_fit", n_fit, minimum=10)
    seed = check_int("seed", seed, minimum=0)
    model.eval()
    tokens = tokens.to(next(model.parameters()).dtype)
    args = (model, tokens, Z_all.double(), n_labeled, tau)
    dev = _prompts(*args, n_dev, seed, arrow, n_dummies)
    test = _prompts(*args, n_test, seed + 2, arrow, n_dummies)
    weights = _learned(*args, arrow, n_dummies, seed, learned_steps, n_fit)
    return _report(model, dev, test, weights)


def _extractions(model, dev: _Prompts, test: _Prompts, weights: torch.Tensor, layers: list[int]) -> dict:
    """Test predictions of every extraction (blocks chosen on dev), with the other prompt's vector as control."""
    patched_dev, _ = _residual_patch(model, dev, layers)
    patched, theta = _residual_patch(model, test, layers)
    best = int(torch.argmin(relative_error(patched_dev, dev.labels)))
    dong_dev = attention_patched_outputs(model, dev.bare, attention_states(model, dev.dummies)).double()
    dong = attention_patched_outputs(model, test.bare, attention_states(model, test.dummies)).double()
    heads = head_contributions(model, test.dummies)
    other = theta.roll(1, dims=0)[:, [best]]  # prompt i gets prompt i-1's task vector
    with torch.no_grad():
        learned = _learned_vector_outputs(model, test.bare, heads, weights).double()
        learned_other = _learned_vector_outputs(model, test.bare, heads.roll(1, dims=0), weights).double()
    own = _task_vectors(model, [test.batch.inputs], layers)
    return {"patched_dev": patched_dev, "patched": patched, "theta": theta, "best": best,
            "best_other": _patched_outputs(model, test.bare, other, [best], "replace", 8192)[:, 0].double(),
            "dong": dong, "dong_best": int(torch.argmin(relative_error(dong_dev, dev.labels))), "learned": learned,
            "learned_other": learned_other, "own": _patched_outputs(model, test.bare, own, layers, "replace", 8192)}


def _report(model, dev: _Prompts, test: _Prompts, weights: torch.Tensor) -> ModelReport:
    y, ridge = test.labels, test.batch.ridge.double()
    base = {"zero_shot": _predictions(model, test.bare), "one_shot": _predictions(model, test.one_shot.inputs),
            "icl": _predictions(model, test.batch.inputs), "ridge": test.batch.ridge,
            "ridge_one_shot": test.one_shot.ridge}
    x = _extractions(model, dev, test, weights, list(range(model_parts(model).n_layers)))
    best, dong_best = x["best"], x["dong_best"]
    chosen = {"best": x["patched"][:, best], "dong_best": x["dong"][:, dong_best], "learned": x["learned"]}
    errors = {name: _interval(pred, y) for name, pred in base.items()}
    intervals = {name: _interval(pred, y) for name, pred in chosen.items()}
    zero, icl = errors["zero_shot"].estimate, errors["icl"].estimate
    return ModelReport(
        baselines=errors, patched=relative_error(x["patched"], y).numpy(),
        patched_dev=relative_error(x["patched_dev"], dev.labels).numpy(), best_block=best, best=intervals["best"],
        dong=relative_error(x["dong"], y).numpy(), dong_best_block=dong_best, dong_first=_interval(x["dong"][:, 0], y),
        dong_best=intervals["dong_best"], learned=intervals["learned"], learned_weights=weights.double().numpy(),
        own=relative_error(x["own"], y).numpy(),
        controls={"best_other": _interval(x["best_other"], y), "learned_other": _interval(x["learned_other"], y)},
        probes={**probe_with_controls(x["theta"], test.batch.lambda_hat, test.batch.y,
                                      generator=torch.Generator().manual_seed(0)),
                "dummy answer": probe_layers(x["theta"], test.dummy_answer).r2_test},
        tv_vs_ridge=_correlation(chosen["best"], ridge),
        recovered={k: (zero - v.estimate) / (zero - icl) for k, v in intervals.items()},
        against_ridge={k: float(relative_error(p, ridge)) for k, p in
                       (("icl", base["icl"]), ("one_shot", base["one_shot"]), ("best", chosen["best"]))},
        sample={k: p[:SAMPLE].float().numpy() for k, p in
                (("ridge", ridge), ("icl", base["icl"]), ("one_shot", base["one_shot"]), ("best", chosen["best"]))},
        n_test=test.batch.n_prompts, n_dev=dev.batch.n_prompts)
