"""Chapter 03's computations (ridge over the basis, Yang et al. 2024, Theorem 2 and Figures 2 and 3).

A problem is a :class:`Problem` (sizes, noise level and the seeds of its dictionary and test prompts); a trained
model is described by its optimiser (:class:`ExactGD`, the theory's gradient descent on the exact loss of Lemma 5;
:class:`ExactAdam` and :class:`ExactLBFGS`, faster optimisers of the same loss; :class:`Recipe`, the paper's Adam on
Monte-Carlo prompts) and a training seed. Every function here is deterministic
given its arguments, trains each seed through the cache (so a cut-off record run resumes), and returns plain data:

- :func:`one_layer_runs`: the one-layer model, one run per seed: history and trained coefficient matrix A_tilde;
- :func:`four_layer_runs`: the four-layer transformer of Figure 2(b), one history per seed;
- :func:`gap_against_n`: trained one-layer models for several N at fixed m (Figure 3 on trained models), their gap
  to the N tau predictor and their per-prompt errors to the true labels beside the two ridge rules';
- :func:`rule_comparison`: the closed-form errors to the true labels of the m tau and N tau rules over a grid of
  (m, N, tau) (no training; cheap);
- :func:`cuda_result`: :func:`icllib.records.result` for a record that needs a GPU (pending on a CPU machine).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from icllib import basis, cache, kernels, records, theory, train
from icllib._checks import check_choice, check_float, check_int
from icllib.models import MultiLayerTransformer, OneLayerMultiHead, TransformerConfig

__all__ = ["Problem", "ExactGD", "ExactAdam", "ExactLBFGS", "Recipe", "OneLayerRun", "one_layer_run",
           "one_layer_runs", "last_values", "four_layer_run", "four_layer_runs", "NGapResult", "gap_against_n",
           "rule_comparison", "cuda_result", "out_of_domain_moment"]

#: Seeds derived from a training seed s — the model's initialisation uses s, the Monte-Carlo training prompts and
#: their order use DATA_SEED_OFFSET + s (so a seed never shares a stream with the dictionary or the test prompts).
DATA_SEED_OFFSET = 10_000


# ----------------------------------------------------------------------------------------------------------------
# Problems and optimisers
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """The paper's set-up: K unit-norm Gaussian tokens in R^d with Gaussian lookup features in R^m (drawn from
    ``seed``), the first N labelled, noise level tau; ``n_test`` test prompts in and out of domain (``test_seed``)."""

    K: int
    d: int
    m: int
    N: int
    tau: float
    seed: int = 0
    test_seed: int = 1
    n_test: int = 200

    def __post_init__(self) -> None:
        for name in ("K", "d", "m", "n_test"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("N", self.N, minimum=1, maximum=self.K - 1)
        check_float("tau", self.tau, minimum=0.0)
        check_int("seed", self.seed, minimum=0)
        check_int("test_seed", self.test_seed, minimum=0)

    def with_n(self, N: int) -> Problem:
        """The same dictionary and seeds with another number of labelled tokens."""
        return Problem(self.K, self.d, self.m, N, self.tau, self.seed, self.test_seed, self.n_test)

    def dictionary(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (K, d), Z_all (m, K))``: the tokens v_k and their features z_k = f(v_k)."""
        generator = torch.Generator().manual_seed(self.seed)
        tokens = basis.gaussian_dictionary(self.K, self.d, generator, dtype=dtype)
        return tokens, basis.GaussianLookupFeatures(tokens, self.m, generator)(tokens)

    def test_prompts(self) -> train.TestPrompts:
        """The paper's two test sets (lambda ~ N(0, I_m) and N(1_m, 4 I_m)) with their ridge targets yhat*."""
        return train.make_test_prompts(self.dictionary()[1], self.N, self.tau,
                                       torch.Generator().manual_seed(self.test_seed), n_prompts=self.n_test)


@dataclass(frozen=True)
class ExactGD:
    """Gradient descent on the exact loss (Theorem 1): eta_Q for Q, eta_w = gamma2 * eta_Q for w; float64."""

    eta_Q: float = 0.5
    gamma2: float = 4.0

    def __post_init__(self) -> None:
        check_float("eta_Q", self.eta_Q, minimum=0.0, strict=True)
        check_float("gamma2", self.gamma2, minimum=0.0, strict=True)


@dataclass(frozen=True)
class ExactAdam:
    """Adam on the exact loss of Lemma 5 (float64): not the paper's optimiser, a fast one for the same objective.
    ``stop_at``: end the run once the in-domain inference loss is at most this (Adam with a large rate then
    oscillates around the minimiser instead of settling)."""

    lr: float = 1e-2
    stop_at: float | None = None

    def __post_init__(self) -> None:
        check_float("lr", self.lr, minimum=0.0, strict=True)
        if self.stop_at is not None:
            check_float("stop_at", self.stop_at, minimum=0.0, strict=True)


@dataclass(frozen=True)
class ExactLBFGS:
    """L-BFGS on the exact loss of Lemma 5 (float64; :func:`icllib.train.train_lbfgs_exact`): not the paper's
    optimiser; a step is up to ``inner_steps`` quasi-Newton iterations with ``history_size`` curvature pairs.
    ``stop_at``: end the run once the in-domain inference loss is at most this."""

    history_size: int = 50
    inner_steps: int = 20
    stop_at: float | None = None

    def __post_init__(self) -> None:
        check_int("history_size", self.history_size, minimum=1)
        check_int("inner_steps", self.inner_steps, minimum=1)
        if self.stop_at is not None:
            check_float("stop_at", self.stop_at, minimum=0.0, strict=True)


@dataclass(frozen=True)
class Recipe:
    """The paper's recipe: Adam (``lr``) on minibatches of ``batch_size`` from ``n_train_prompts`` sampled prompts,
    float32 parameters, the training step's arithmetic ``precision`` (:data:`icllib.train.PRECISIONS`)."""

    lr: float = 1e-4
    batch_size: int = 256
    n_train_prompts: int = 10_000
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_float("lr", self.lr, minimum=0.0, strict=True)
        check_int("n_train_prompts", self.n_train_prompts, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1, maximum=self.n_train_prompts)
        check_choice("precision", self.precision, train.PRECISIONS)


Optimiser = ExactGD | ExactAdam | ExactLBFGS | Recipe


def _check_optimiser(optimiser: Any) -> None:
    if not isinstance(optimiser, (ExactGD, ExactAdam, ExactLBFGS, Recipe)):
        raise TypeError(f"optimiser must be an ExactGD, ExactAdam, ExactLBFGS or Recipe, got {type(optimiser).__name__}")


def last_values(runs: Sequence, series: str) -> np.ndarray:
    """The last recorded value of ``series`` (``"in_domain"``, ``"loss_gap"``, ...) of each run: histories or
    :class:`OneLayerRun` s."""
    if isinstance(runs, (str, bytes)) or not isinstance(runs, Sequence) or not runs:
        raise TypeError(f"runs must be a non-empty sequence of histories or OneLayerRun, got {runs!r}")
    histories = [run.history if isinstance(run, OneLayerRun) else run for run in runs]
    if not all(isinstance(h, train.TrainingHistory) for h in histories):
        raise TypeError("runs must hold TrainingHistory or OneLayerRun values")
    return np.array([float(getattr(h, series)[-1]) for h in histories])


def _check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise TypeError(f"seeds must be a non-empty sequence of integers, got {seeds!r}")
    return tuple(check_int("seed", s, minimum=0) for s in seeds)


def _train(model: torch.nn.Module, Z_all, problem: Problem, optimiser: Optimiser, steps: int, seed: int,
           eval_every: int, test: train.TestPrompts) -> train.TrainingHistory:
    """Train ``model`` in place with ``optimiser`` (the three objectives of :mod:`icllib.train`)."""
    common = dict(eval_every=eval_every, test_prompts=test, progress=False)
    if isinstance(optimiser, ExactGD):
        return train.train_exact_gd(model, Z_all, problem.tau, steps, optimiser.eta_Q, optimiser.gamma2, **common)
    if isinstance(optimiser, ExactAdam):
        return train.train_adam_exact(model, Z_all, problem.tau, steps, optimiser.lr,
                                      stop_at_inference=optimiser.stop_at, **common)
    if isinstance(optimiser, ExactLBFGS):
        return train.train_lbfgs_exact(model, Z_all, problem.tau, steps, optimiser.history_size, optimiser.inner_steps,
                                       stop_at_inference=optimiser.stop_at, **common)
    return train.train_adam_monte_carlo(model, Z_all, problem.tau, steps, optimiser.n_train_prompts,
                                        optimiser.batch_size, optimiser.lr, precision=optimiser.precision,
                                        generator=torch.Generator().manual_seed(DATA_SEED_OFFSET + seed), **common)


# ----------------------------------------------------------------------------------------------------------------
# The one-layer model (Figure 2a)
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class OneLayerRun:
    """One trained one-layer model: its ``history``, its coefficient matrix ``A_tilde`` (N, K) at the end (float32)
    and its training ``seed``."""

    history: train.TrainingHistory
    A_tilde: torch.Tensor
    seed: int


@cache.not_in_key("device")
def one_layer_run(problem: Problem, n_heads: int, optimiser: Optimiser, steps: int, seed: int,
                  eval_every: int = 50, device: str = "cpu") -> OneLayerRun:
    """Train the one-layer model with ``n_heads`` heads on ``problem`` (w = 0, Q ~ N(0, 1) from ``seed``) on
    ``device`` (the initialisation is drawn on the CPU, so a seed gives the same model everywhere)."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
    n_heads = check_int("n_heads", n_heads, minimum=1)
    _check_optimiser(optimiser)
    steps, seed = check_int("steps", steps, minimum=0), check_int("seed", seed, minimum=0)
    tokens, Z_all = problem.dictionary()
    dtype = torch.float32 if isinstance(optimiser, Recipe) else torch.float64
    model = OneLayerMultiHead(tokens, problem.N, n_heads, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    history = _train(model.to(device), Z_all, problem, optimiser, steps, seed, eval_every, problem.test_prompts())
    return OneLayerRun(history, model.attention_matrix().detach().float().cpu(), seed)


@cache.not_in_key("device")
def one_layer_runs(problem: Problem, n_heads: int, optimiser: Optimiser, steps: int, seeds: Sequence[int],
                   eval_every: int = 50, device: str = "cpu") -> list[OneLayerRun]:
    """:func:`one_layer_run` for each seed (each cached on its own: a cut-off record run resumes). ``device`` is
    not part of a record's arguments: a record made on a GPU replays on a CPU (its provenance names the device)."""
    return [cache.cached_call(one_layer_run, problem, n_heads, optimiser, steps, seed, eval_every, device)
            for seed in _check_seeds(seeds)]


# ----------------------------------------------------------------------------------------------------------------
# The four-layer transformer (Figure 2b)
# ----------------------------------------------------------------------------------------------------------------
@cache.not_in_key("device")
def four_layer_run(problem: Problem, architecture: TransformerConfig, recipe: Recipe, steps: int, seed: int,
                   eval_every: int = 100, device: str = "cpu") -> train.TrainingHistory:
    """Train the transformer of Figure 2(b) (:class:`~icllib.models.multilayer.MultiLayerTransformer` with the sizes of
    ``architecture``; the paper's: ``TransformerConfig()``) with the paper's recipe on ``device``; initialisation
    from ``seed``, training prompts from DATA_SEED_OFFSET + seed."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
    if not isinstance(architecture, TransformerConfig):
        raise TypeError(f"architecture must be a TransformerConfig, got {type(architecture).__name__}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    steps, seed = check_int("steps", steps, minimum=0), check_int("seed", seed, minimum=0)
    tokens, Z_all = problem.dictionary()
    model = MultiLayerTransformer(tokens, problem.N, architecture.d_model, architecture.n_layers,
                                  architecture.n_heads, architecture.d_ff,
                                  dropout=architecture.dropout, generator=torch.Generator().manual_seed(seed))
    model = model.to(device)
    return _train(model, Z_all, problem, recipe, steps, seed, eval_every, problem.test_prompts())


@cache.not_in_key("device")
def four_layer_runs(problem: Problem, architecture: TransformerConfig, recipe: Recipe, steps: int,
                    seeds: Sequence[int], eval_every: int = 100, device: str = "cpu") -> list[train.TrainingHistory]:
    """:func:`four_layer_run` for each seed (each cached on its own). ``device`` is not part of a record's
    arguments: a record made on a GPU replays on a CPU (its provenance names the device)."""
    return [cache.cached_call(four_layer_run, problem, architecture, recipe, steps, seed, eval_every, device)
            for seed in _check_seeds(seeds)]


# ----------------------------------------------------------------------------------------------------------------
# Figure 3 on trained models, and the errors to the true labels
# ----------------------------------------------------------------------------------------------------------------
def out_of_domain_moment(m: int) -> torch.Tensor:
    """E[lambda lambda^T] = 1_m 1_m^T + 4 I_m of the paper's out-of-domain tasks."""
    m = check_int("m", m, minimum=1)
    return torch.ones(m, m, dtype=torch.float64) + 4 * torch.eye(m, dtype=torch.float64)


@dataclass
class NGapResult:
    """Trained one-layer models at several N (rows: ``N``), over seeds.

    ``trained_gap`` (seeds, len(N)): (1/K) ||yhat - yhat_best||^2 of the trained model against the N tau predictor,
    averaged over the in-domain test prompts; ``to_ridge`` (seeds, len(N)): its in-domain inference loss (distance to
    the m tau ridge predictor); ``closed_gap`` (len(N),): the expected gap of the m tau rule itself (closed form).
    ``errors``: per-prompt mean squared errors to the noise-free labels of the unseen tokens, keyed by
    ``(domain, predictor)`` with domain in {"in", "out"} and predictor in {"trained", "m_tau", "n_tau"}; arrays
    (seeds, len(N), n_test) for "trained", (len(N), n_test) for the two rules (float32).
    """

    N: np.ndarray
    trained_gap: np.ndarray
    to_ridge: np.ndarray
    closed_gap: np.ndarray
    errors: dict


def _errors_to_truth(batch, yhat: torch.Tensor, Z_all: torch.Tensor, N: int) -> np.ndarray:
    """Per prompt: mean over the unseen tokens of (yhat_k - lambda^T z_k)^2."""
    truth = batch.lam.double() @ Z_all
    return ((yhat.double() - truth)[:, N:] ** 2).mean(-1).float().numpy()


def _n_gap_point(problem: Problem, heads_per_label: int, optimiser: Optimiser, steps: int, seeds: tuple,
                 eval_every: int, device: str) -> tuple[list, list, dict]:
    """One N: train each seed, then its gap to yhat_best, distance to ridge and errors to the truth."""
    tokens, Z_all = problem.dictionary()
    test = problem.test_prompts()
    runs = one_layer_runs(problem, heads_per_label * problem.N, optimiser, steps, seeds, eval_every, device)
    gaps, ridge, errors = [], [], {}
    for domain, batch in (("in", test.in_domain), ("out", test.out_of_domain)):
        best = kernels.bayes_predictions(Z_all, batch.y, problem.N, problem.tau)
        star = kernels.ridge_predictions(Z_all, batch.y, problem.N, problem.tau)
        errors[domain, "m_tau"] = _errors_to_truth(batch, star, Z_all, problem.N)
        errors[domain, "n_tau"] = _errors_to_truth(batch, best, Z_all, problem.N)
        trained = [batch.y.double() @ run.A_tilde.double() for run in runs]
        errors[domain, "trained"] = np.stack([_errors_to_truth(batch, yhat, Z_all, problem.N) for yhat in trained])
        if domain == "in":
            gaps = [float(((yhat - best) ** 2).mean()) for yhat in trained]
            ridge = [run.history.in_domain[-1] for run in runs]
    return gaps, ridge, errors


@cache.not_in_key("device")
def gap_against_n(problem: Problem, n_grid: Sequence[int], heads_per_label: int, optimiser: Optimiser, steps: int,
                  seeds: Sequence[int], eval_every: int = 100, device: str = "cpu") -> NGapResult:
    """Figure 3 on trained models: for each N in ``n_grid`` (``problem`` gives K, d, m, tau and the seeds), train
    one-layer models with H = ``heads_per_label`` * N heads and measure their gap to the N tau predictor, as the
    paper's caption does, and their errors to the true labels beside those of the m tau and N tau rules."""
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
    n_grid = [check_int("N", n, minimum=1, maximum=problem.K - 1) for n in n_grid]
    if not n_grid:
        raise ValueError("n_grid must hold at least one N")
    heads_per_label = check_int("heads_per_label", heads_per_label, minimum=1)
    _check_optimiser(optimiser)
    seeds = _check_seeds(seeds)
    points = [_n_gap_point(problem.with_n(n), heads_per_label, optimiser, steps, seeds, eval_every, device)
              for n in n_grid]
    Z_all = problem.dictionary()[1]
    errors = {key: np.stack([p[2][key] for p in points], axis=-2 if key[1] == "trained" else 0)
              for key in points[0][2]}
    return NGapResult(
        N=np.array(n_grid), trained_gap=np.array([p[0] for p in points]).T, to_ridge=np.array([p[1] for p in points]).T,
        closed_gap=np.array([float(kernels.ridge_gap(Z_all, n, problem.tau)) for n in n_grid]), errors=errors)


def rule_comparison(ms: Sequence[int], taus: Sequence[float], n_over_m: Sequence[float], dictionary_seeds:
                    Sequence[int], K_per_m: int = 4, d: int = 100) -> dict[str, np.ndarray]:
    """Closed-form errors to the true labels (:func:`icllib.theory.label_error`) of the m tau and N tau rules.

    For every m in ``ms``, tau in ``taus``, N = round(r m) for r in ``n_over_m`` and dictionary seed: a dictionary
    of K = max(200, ``K_per_m`` m) tokens in R^``d``. Returns arrays of shape (len(ms), len(taus), len(n_over_m),
    len(seeds)): ``"ratio_in"``, ``"ratio_out"`` (error of the N tau rule / error of the m tau rule, in and out of
    domain) and ``"N"``.
    """
    ms = [check_int("m", m, minimum=1) for m in ms]
    taus = [check_float("tau", t, minimum=0.0, strict=True) for t in taus]
    ratios = [check_float("n_over_m", r, minimum=0.0, strict=True) for r in n_over_m]
    seeds = _check_seeds(dictionary_seeds)
    shape = (len(ms), len(taus), len(ratios), len(seeds))
    out = {key: np.zeros(shape) for key in ("ratio_in", "ratio_out", "N")}
    for i, m in enumerate(ms):
        K = max(200, check_int("K_per_m", K_per_m, minimum=2) * m)
        for s, seed in enumerate(seeds):
            Z_all = Problem(K, d, m, 1, 0.0, seed).dictionary()[1]
            for j, tau in enumerate(taus):
                for r, ratio in enumerate(ratios):
                    n = min(max(1, round(ratio * m)), K - 1)
                    for key, moment in (("ratio_in", None), ("ratio_out", out_of_domain_moment(m))):
                        rules = [theory.label_error(Z_all, n, tau, reg * tau, moment) for reg in (n, m)]
                        out[key][i, j, r, s] = rules[0] / rules[1]
                    out["N"][i, j, r, s] = n
    return out


# ----------------------------------------------------------------------------------------------------------------
# Records that need a GPU
# ----------------------------------------------------------------------------------------------------------------
def cuda_result(name: str, fn: Callable, /, *args, **kwargs) -> Any:
    """:func:`icllib.records.result`, for a computation that needs a GPU at the papers' size: while recording on a
    machine without CUDA, a record listed as pending (``records/chNN/pending.json``) stays pending (a
    :class:`~icllib.records.Pending` comes back) instead of running for hours on the CPU."""
    listed = records.pending()
    if records.mode() == "record" and not torch.cuda.is_available() and name in listed:
        entry = listed[name]
        return records.Pending(name, entry.get("command", "make record on a CUDA machine"),
                               entry.get("reason", "needs a GPU"))
    return records.result(name, fn, *args, **kwargs)
