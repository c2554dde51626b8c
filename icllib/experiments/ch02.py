"""Chapter 02: Theorem 1 of Yang et al. (2024) measured: Proposition 1 at initialisation, and exact gradient descent
over several dictionary sizes K and initialisations, with the proof's quantities along every run.

:func:`proposition1`: for several head counts H and initialisations, the rank and smallest singular value of the
head matrices B_k and the best loss over w with Q frozen. :func:`initial_smoothness` and :func:`common_step_size`:
one step size eta_Q for all runs of a sweep over K, inside 1 / ell_0 for every one of them (ell_0 the smoothness at
initialisation). :func:`gd_run`: exact GD on one dictionary from one initialisation, recording the gap, the PL ratio
and its bound, zeta_t and the local smoothness ell_t at checkpoints. :func:`rate_table` compares the measured rates
of such runs with Theorem 1's form. Everything returned is plain data (arrays and numbers), never a model.
"""

from __future__ import annotations

import numpy as np
import torch

from icllib import theory
from icllib._checks import as_float_tensor, check_float, check_int
from icllib.models.one_layer import OneLayerMultiHead
from icllib.train import train_exact_gd

__all__ = ["proposition1", "initial_smoothness", "common_step_size", "gd_run", "tail_rate", "rate_table"]


def proposition1(tokens, Z_all, n_labeled: int, tau: float, head_counts, seeds) -> dict:
    """Per initialisation seed and head count H: ``min_rank`` (min_k rank B_k), ``zeta`` (min_k sigma_N(B_k), 0
    when H < N) and ``best_gap`` (min_w L(Q_0, w) - L*, :func:`icllib.theory.best_w_given_Q`).

    Returns ``{"H": [...], "seeds": [...], "min_rank", "zeta", "best_gap": (len(seeds), len(H)) arrays}``.
    """
    heads = [check_int("H", h, minimum=1) for h in head_counts]
    seeds = [check_int("seed", s, minimum=0) for s in seeds]
    rank, zeta, gap = (np.zeros((len(seeds), len(heads))) for _ in range(3))
    for i, seed in enumerate(seeds):
        for j, H in enumerate(heads):
            model = OneLayerMultiHead(tokens, n_labeled, H, torch.Generator().manual_seed(1000 * seed + H))
            B = theory.head_matrices(model, Z_all, tau)
            rank[i, j], zeta[i, j] = int(B.rank.min()), B.zeta
            gap[i, j] = theory.best_w_given_Q(model, Z_all, tau).gap
    return {"H": heads, "seeds": seeds, "min_rank": rank.astype(np.int64), "zeta": zeta, "best_gap": gap}


def _model(tokens, Z_all, n_labeled: int, n_heads: int, seed: int) -> tuple[OneLayerMultiHead, torch.Tensor]:
    """A model on the dictionary ``tokens`` (K, d) initialised from ``seed``, and Z_all (m, K) checked against it."""
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2, dtype=torch.float64)
    generator = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
    model = OneLayerMultiHead(tokens, n_labeled, n_heads, generator)
    if Z_all.shape[1] != model.n_tokens:
        raise ValueError(f"Z_all must have one column per token ({model.n_tokens}), got {tuple(Z_all.shape)}")
    return model, Z_all


def initial_smoothness(tokens, Z_all, ks, n_labeled: int, n_heads: int, tau: float, gamma2: float, seeds,
                       n_iter: int = 20) -> dict:
    """ell_0 for every dictionary size K in ``ks`` (the first K tokens of ``tokens``) and initialisation in ``seeds``:
    the largest absolute eigenvalue of the Hessian at initialisation (:func:`icllib.theory.smoothness_estimate`).

    Returns ``{(K, seed): ell_0}``.
    """
    out = {}
    for k in ks:
        k = check_int("K", k, minimum=n_labeled + 1, maximum=len(tokens))
        for seed in seeds:
            model, Z = _model(tokens[:k], Z_all[:, :k], n_labeled, n_heads, seed)
            out[(k, seed)] = theory.smoothness_estimate(model, Z, tau, torch.Generator().manual_seed(2), gamma2,
                                                        n_iter=n_iter)
    return out


def gd_run(tokens, Z_all, n_labeled: int, n_heads: int, tau: float, steps: int, eta_Q: float, gamma2: float,
           seed: int, *, eval_every: int = 50, check_every: int = 500, ell_iterations: int = 15,
           progress: bool = False) -> dict:
    """Exact GD (Theorem 1's two step sizes) on the dictionary ``tokens`` (K, d), ``Z_all`` (m, K) from
    initialisation ``seed``; the proof's quantities at step 0, every ``check_every`` steps and at the end.

    Returns ``step``, ``gap``, ``in_domain``, ``w_norm`` (every ``eval_every`` steps); ``check_step``,
    ``pl_ratio``, ``pl_bound`` (2 gamma^2 zeta_t^2 / K), ``zeta``, ``ell`` (at the checkpoints); ``zeta0``,
    ``step_time_s``.
    """
    check_every = check_int("check_every", check_every, minimum=1)
    if check_every % check_int("eval_every", eval_every, minimum=1):
        raise ValueError(f"check_every must be a multiple of eval_every={eval_every}, got {check_every}")
    model, Z_all = _model(tokens, Z_all, n_labeled, n_heads, seed)
    probe = torch.Generator().manual_seed(3)
    checks: dict[str, list] = {k: [] for k in ("check_step", "pl_ratio", "pl_bound", "zeta", "ell")}

    def record(step: int, current: OneLayerMultiHead) -> None:
        if step % check_every == 0 or step == steps:
            values = (step, theory.pl_ratio(current, Z_all, tau, gamma2),
                      theory.pl_lower_bound(current, Z_all, tau, gamma2), theory.zeta(current, Z_all, tau),
                      theory.smoothness_estimate(current, Z_all, tau, probe, gamma2, n_iter=ell_iterations))
            for key, value in zip(checks, values, strict=True):
                checks[key].append(value)

    history = train_exact_gd(model, Z_all, tau, steps, eta_Q=eta_Q, gamma2=gamma2, eval_every=eval_every,
                             generator=torch.Generator().manual_seed(4), callback=record, progress=progress)
    h = history.arrays()
    out = {"step": h["step"], "gap": h["loss_gap"], "in_domain": h["in_domain"], "w_norm": h["w_norm"]}
    out.update({k: np.asarray(v, dtype=np.float64) for k, v in checks.items()})
    out["zeta0"] = float(checks["zeta"][0])
    out["step_time_s"] = float(history.step_time_s)
    return out


def tail_rate(step, gap, start_fraction: float = 0.5, floor: float = 1e-12) -> theory.RateFit:
    """The linear rate of the run's tail: :func:`icllib.theory.fit_linear_rate` over the evaluations at steps
    >= ``start_fraction`` of the last one whose gap is above ``floor`` (rounding level)."""
    step, gap = np.asarray(step, dtype=float), np.asarray(gap, dtype=float)
    start_fraction = check_float("start_fraction", start_fraction, minimum=0.0, maximum=1.0)
    keep = (step >= start_fraction * step[-1]) & (gap > floor)
    if keep.sum() < 3:
        raise ValueError(f"fewer than 3 evaluations after step {start_fraction * step[-1]:.0f} with gap > {floor}")
    return theory.fit_linear_rate(gap[keep], step[keep])


def common_step_size(ell0, margin: float = 0.8) -> float:
    """One eta_Q for a set of runs: ``margin / max(ell0)`` rounded down to 3 significant digits, so that
    eta_Q ell_0 <= margin < 1 for every run at its start (the theorem asks eta_Q <= 1 / ell)."""
    values = np.asarray(list(ell0.values()) if isinstance(ell0, dict) else ell0, dtype=float)
    margin = check_float("margin", margin, minimum=0.0, strict=True)
    if values.size == 0 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError("ell0 must hold positive finite smoothness estimates")
    raw = margin / values.max()
    scale = 10.0 ** (np.floor(np.log10(raw)) - 2)
    return float(np.floor(raw / scale) * scale)


def rate_table(runs: dict, eta_Q: float, gamma2: float, start_fraction: float = 0.5) -> dict:
    """The measured rates of ``runs`` ({(K, seed): gd_run(...)}) against Theorem 1's form 1 - c eta_Q gamma^2
    zeta_0^2 / K.

    Returns ``K`` and ``seeds`` (sorted), and arrays of shape (seeds, K): ``rate`` (the tail's factor per step,
    :func:`tail_rate`), ``r2``, ``zeta0``, ``c`` (the constant that matches the measured rate,
    :func:`icllib.theory.rate_constant`); and per seed (least squares across K): ``slope_K``, the slope of
    log(1 - rate) against log K, and ``slope_form``, against log(zeta_0^2 / K). The form with one constant c
    predicts ``slope_form = 1``.
    """
    ks = sorted({k for k, _ in runs})
    seeds = sorted({s for _, s in runs})
    if len(ks) < 2:
        raise ValueError(f"runs must cover at least 2 dictionary sizes K, got {ks}")
    shape = (len(seeds), len(ks))
    rate, r2, zeta0, c = (np.zeros(shape) for _ in range(4))
    for i, s in enumerate(seeds):
        for j, k in enumerate(ks):
            run = runs[(k, s)]
            fit = tail_rate(run["step"], run["gap"], start_fraction)
            rate[i, j], r2[i, j], zeta0[i, j] = fit.rate, fit.r2, run["zeta0"]
            c[i, j] = theory.rate_constant(fit.rate, eta_Q, gamma2, run["zeta0"], k)
    log_speed, log_k = np.log(1 - rate), np.log(np.asarray(ks, dtype=float))
    slope_K = np.array([np.polyfit(log_k, row, 1)[0] for row in log_speed])
    slope_form = np.array([np.polyfit(np.log(z**2) - log_k, row, 1)[0] for z, row in zip(zeta0, log_speed)])
    return {"K": ks, "seeds": seeds, "rate": rate, "r2": r2, "zeta0": zeta0, "c": c, "slope_K": slope_K,
            "slope_form": slope_form}
