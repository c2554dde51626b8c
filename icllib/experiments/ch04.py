"""Chapter 04's computations (how many heads: Yang et al. 2024, Figures 4 and 5).

- :func:`head_statistics`: what the random initialisation of the one-layer model gives for H heads: zeta_0
  (Proposition 1), the best output weights with Q frozen, and the curvature ell_0 (largest Hessian eigenvalue);
- :func:`heads_sweep`: the one-layer model trained for several H (Figure 4), with gradient descent on the exact
  loss or with the paper's optimiser (Adam on Monte-Carlo prompts), over seeds;
- :func:`divergence_sweep`: for several gradient-descent step sizes eta_Q, which H still train and which diverge;
- :func:`four_layer_heads`: the four-layer transformer trained for several H with the same steps and batches
  (Figure 5), over seeds, with the measured time per step.

Problems, optimisers and the training runs themselves come from :mod:`icllib.experiments.ch03`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from icllib import cache, theory, train
from icllib._checks import check_float, check_int
from icllib.experiments.ch03 import (ExactGD, Optimiser, Problem, Recipe, _check_optimiser, _check_seeds,
                                     four_layer_runs, one_layer_run, one_layer_runs)
from icllib.models import OneLayerMultiHead, TransformerConfig

__all__ = ["head_statistics", "heads_sweep", "diverged", "divergence_sweep", "four_layer_heads"]


def _check_problem(problem) -> Problem:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
    return problem


def _check_heads(heads: Sequence[int]) -> list[int]:
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence) or not heads:
        raise TypeError(f"heads must be a non-empty sequence of integers, got {heads!r}")
    heads = [check_int("H", h, minimum=1) for h in heads]
    if sorted(set(heads)) != heads:
        raise ValueError(f"heads must be increasing and distinct, got {heads}")
    return heads


def head_statistics(problem: Problem, n_heads: int, seed: int, gamma2: float = 4.0) -> dict[str, float]:
    """At the initialisation of :func:`~icllib.experiments.ch03.one_layer_run` (seed ``seed``): ``zeta0`` =
    min_k sigma_N(B_k), ``best_w_gap`` = min_w L - L* with Q frozen, ``ell0`` = the largest Hessian eigenvalue of L
    in the coordinates (Q, w / gamma) (:func:`icllib.theory.smoothness_estimate`, 30 power iterations)."""
    problem = _check_problem(problem)
    n_heads, seed = check_int("n_heads", n_heads, minimum=1), check_int("seed", seed, minimum=0)
    gamma2 = check_float("gamma2", gamma2, minimum=0.0, strict=True)
    tokens, Z_all = problem.dictionary()
    model = OneLayerMultiHead(tokens, problem.N, n_heads, generator=torch.Generator().manual_seed(seed))
    return {"zeta0": theory.zeta(model, Z_all, problem.tau),
            "best_w_gap": theory.best_w_given_Q(model, Z_all, problem.tau).gap,
            "ell0": theory.smoothness_estimate(model, Z_all, problem.tau, torch.Generator().manual_seed(seed),
                                               gamma2)}


@cache.not_in_key("device")
def heads_sweep(problem: Problem, heads: Sequence[int], optimiser: Optimiser, steps: int, seeds: Sequence[int],
                eval_every: int = 50, statistics: bool = True, device: str = "cpu") -> dict[int, dict]:
    """Figure 4: the one-layer model trained with ``optimiser`` for each H in ``heads`` and each seed, on ``device``
    (not part of a record's arguments).

    Returns ``{H: {"histories": [one per seed], "init": [head_statistics per seed] (if ``statistics``)}}``.
    """
    problem, heads, seeds = _check_problem(problem), _check_heads(heads), _check_seeds(seeds)
    _check_optimiser(optimiser)
    gamma2 = optimiser.gamma2 if isinstance(optimiser, ExactGD) else 4.0
    out = {}
    for H in heads:
        runs = one_layer_runs(problem, H, optimiser, steps, seeds, eval_every, device)
        out[H] = {"histories": [run.history for run in runs]}
        if statistics:
            out[H]["init"] = [cache.cached_call(head_statistics, problem, H, s, gamma2) for s in seeds]
    return out


def diverged(history: train.TrainingHistory) -> bool:
    """Whether a gradient-descent run diverged: its gap L - L* became non-finite, or ended above its initial value."""
    gaps = np.asarray(history.loss_gap, dtype=float)
    return history.stop_reason == "diverged" or not np.isfinite(gaps).all() or bool(gaps[-1] > gaps[0])


def _scan(problem: Problem, etas: list[float], heads: list[int], gamma2: float, steps: int, seed: int,
          device: str) -> np.ndarray:
    """Outcomes (etas, heads) for one seed: 1 diverged, 0 trained, -1 not run. The largest step size goes first;
    each smaller one starts at the largest H that the previous one trained, and stops at its first divergence."""
    outcome = -np.ones((len(etas), len(heads)), dtype=np.int64)
    start = 0
    for i in np.argsort(etas)[::-1]:
        for j in range(start, len(heads)):
            run = cache.cached_call(one_layer_run, problem, heads[j], ExactGD(etas[i], gamma2), steps, seed, 5,
                                    device)
            outcome[i, j] = int(diverged(run.history))
            if outcome[i, j]:
                break
        trained = np.flatnonzero(outcome[i] == 0)
        start = int(trained[-1]) if trained.size else start
    return outcome


@cache.not_in_key("device")
def divergence_sweep(problem: Problem, etas: Sequence[float], heads: Sequence[int], steps: int,
                     seeds: Sequence[int], gamma2: float = 4.0, device: str = "cpu") -> dict[str, np.ndarray]:
    """For each step size eta_Q in ``etas`` (eta_w = ``gamma2`` eta_Q), gradient descent for ``steps`` steps from
    the initialisation of each seed, H scanned upward through ``heads`` until the first divergence (:func:`diverged`).

    Returns ``"outcome"`` (etas, heads, seeds): 1 diverged, 0 trained, -1 not run (below a size that the previous,
    larger step trained, or above the first divergence); ``"ell0"`` (heads, seeds): the curvature at initialisation;
    ``"threshold"`` (etas, seeds): the geometric mean of the largest H that trained and the first H that diverged
    (NaN if either is missing); ``"fit"``: slope and intercept of the line fitted to ell_0(H); ``"predicted"``
    (etas,): the H where eta_Q ell_0(H) = 2 on that line.
    """
    problem, heads, seeds = _check_problem(problem), _check_heads(heads), _check_seeds(seeds)
    etas = [check_float("eta", e, minimum=0.0, strict=True) for e in etas]
    steps = check_int("steps", steps, minimum=1)
    gamma2 = check_float("gamma2", gamma2, minimum=0.0, strict=True)
    outcome = np.stack([_scan(problem, etas, heads, gamma2, steps, s, device) for s in seeds], axis=-1)
    ell0 = np.array([[cache.cached_call(head_statistics, problem, H, s, gamma2)["ell0"] for s in seeds]
                     for H in heads])
    threshold = np.full((len(etas), len(seeds)), math.nan)
    for i in range(len(etas)):
        for s in range(len(seeds)):
            ok, bad = np.flatnonzero(outcome[i, :, s] == 0), np.flatnonzero(outcome[i, :, s] == 1)
            if ok.size and bad.size:
                threshold[i, s] = math.sqrt(heads[ok[-1]] * heads[bad[0]])
    slope, intercept = np.polyfit(np.repeat(heads, len(seeds)), ell0.reshape(-1), 1)
    predicted = np.array([(2 / eta - intercept) / slope for eta in etas])
    return {"etas": np.array(etas), "heads": np.array(heads), "outcome": outcome, "ell0": ell0,
            "threshold": threshold, "predicted": predicted, "fit": np.array([slope, intercept])}


@cache.not_in_key("device")
def four_layer_heads(problem: Problem, heads: Sequence[int], architecture: TransformerConfig, recipe: Recipe,
                     steps: int, seeds: Sequence[int], eval_every: int = 25, device: str = "cpu") -> dict[int, list]:
    """Figure 5: the four-layer transformer with ``architecture`` and H heads for each H in ``heads`` (the width
    split among them), trained with ``recipe`` for the same ``steps`` on the same prompts and batches; one
    history per seed (each with its measured seconds per step on ``device``)."""
    problem, heads, seeds = _check_problem(problem), _check_heads(heads), _check_seeds(seeds)
    if not isinstance(architecture, TransformerConfig):
        raise TypeError(f"architecture must be a TransformerConfig, got {type(architecture).__name__}")
    return {H: four_layer_runs(problem, replace(architecture, n_heads=H), recipe, steps, seeds, eval_every, device)
            for H in heads}
