"""The book's one training loop, and the Part I objectives trained with it (Yang et al. 2024).

Like nanoGPT's ``train.py``, training is one loop (:func:`train_loop`): evaluate, then repeat {draw a batch, take a
timed optimiser step}, evaluating at every ``eval_every`` steps, until the steps, a time budget or a stopping rule
run out. What differs between models is given to it as two functions, a *step* (one update, returning the training
loss) and a *recorder* (the evaluation's metrics), configured by a small dataclass (:class:`LoopConfig`); every run
returns a :class:`TrainingHistory`. Training time is measured per step, without the evaluations (and without
drawing the batch), so that time budgets compare training compute only.

The Part I objectives built on it, from the theory to the paper's experiments:

- :func:`train_exact_gd`: full-batch gradient descent on the exact population loss of Lemma 5, with the two step
  sizes of Theorem 1 (eta_Q for the key-query matrices, eta_w = gamma^2 eta_Q for the output weights). Needs a model
  that is linear in the labels, i.e. has ``attention_matrix()`` (the one-layer model).
- :func:`train_adam_exact`: Adam on the same exact loss (not in the paper; a fast optimiser for the same objective).
- :func:`train_lbfgs_exact`: L-BFGS with a strong-Wolfe line search on the same exact loss (not in the paper; the
  deterministic full-batch objective is what quasi-Newton methods are made for, and it settles where Adam's fixed
  step keeps oscillating).
- :func:`train_adam_monte_carlo`: the paper's recipe: Adam (learning rate 1e-4) on minibatches of 256 prompts drawn
  from a fixed set of 10,000, the squared error over all K tokens, L_hat = (1/2K) mean_prompts sum_k (yhat_k - y_k)^2.
  Works for any model called as ``model(y) -> yhat`` with y (..., N) and yhat (..., K), e.g. the multi-layer
  transformer.

Each records the gap L(theta) - L* and the paper's inference metric (1/K) ||yhat - yhat*||^2 on fixed test prompts
(200 in domain, lambda ~ N(0, I_m); 200 out of domain, lambda ~ N(1_m, 4 I_m)), where yhat* is Theorem 2's ridge
prediction. Part III's causal sequence model trains through the same loop
(:func:`icllib.bridge.train_sequence_model`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from icllib import kernels
from icllib._checks import as_float_tensor, check_choice, check_float, check_generator, check_int
from icllib.kernels import exact_gap
from icllib.prompts import PromptBatch, _sample_prompts

__all__ = [
    "TrainingHistory",
    "LoopConfig",
    "train_loop",
    "TestPrompts",
    "make_test_prompts",
    "exact_gap",
    "train_exact_gd",
    "train_adam_exact",
    "train_lbfgs_exact",
    "train_adam_monte_carlo",
    "PRECISIONS",
]


# --------------------------------------------------------------------------------------------------------------------
# The history and the loop
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class TrainingHistory:
    """What a training run recorded at step 0 and at each evaluation (lists of equal length, one entry per evaluation).

    Every run records ``step`` (0 = before training), ``train_loss`` (the mean training objective since the previous
    evaluation; at step 0 the recorder's value of the objective, or NaN) and ``elapsed_s`` (cumulative training
    seconds, evaluations excluded). The recorder adds its own series to ``metrics`` and one-off values to
    ``constants``; both read as attributes (``history.loss_gap``, ``history.ridge_floor``):

    - Part I (:func:`train_exact_gd`, :func:`train_adam_exact`, :func:`train_adam_monte_carlo`): ``loss_gap``,
      L(theta) - L*, exact (Lemma 5) for models with ``attention_matrix()``, else a Monte-Carlo estimate on the
      in-domain test prompts (then the constant ``exact_gap`` is False; a model that is not linear in y can even go
      below the best linear loss L*); ``in_domain``/``out_of_domain``, (1/K) ||yhat - yhat*||^2 averaged over the
      test prompts; ``w_norm``, the Frobenius norm of the output weights w (NaN for models without them).
    - Part III (:func:`icllib.bridge.train_sequence_model`): ``query_mse``, ``ridge_mse``, ``bare_mse`` and the
      constants ``ridge_floor``, ``zero_mse`` (see there).

    ``step_time_s``: mean seconds per training step. ``stop_reason``: "steps", "time_budget", "target" (in-domain
    inference loss reached ``stop_at_inference``) or "diverged" (non-finite gap). ``config``: the run's settings.
    """

    method: str
    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    constants: dict[str, float | bool] = field(default_factory=dict)
    step_time_s: float = float("nan")
    stop_reason: str = "steps"
    config: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        # Called only when ordinary lookup fails: a recorded series or constant (never for private names, so that
        # pickle and copy see a plain object).
        if not name.startswith("_"):
            for table in (self.__dict__.get("metrics", {}), self.__dict__.get("constants", {})):
                if name in table:
                    return table[name]
        raise AttributeError(f"{type(self).__name__} has no attribute, series or constant {name!r}")

    def append(self, step: int, train_loss: float, elapsed_s: float, metrics: dict[str, float]) -> None:
        """Add one evaluation: the step, the training loss, the training time so far and the recorder's metrics."""
        self.step.append(step)
        self.train_loss.append(train_loss)
        self.elapsed_s.append(elapsed_s)
        for name, value in metrics.items():
            self.metrics.setdefault(name, []).append(value)

    def arrays(self) -> dict[str, np.ndarray]:
        """The recorded series as numpy arrays (for plotting): step, train_loss, elapsed_s and every metric."""
        names = ("step", "train_loss", "elapsed_s", *self.metrics)
        return {name: np.asarray(getattr(self, name), dtype=float) for name in names}

    def first_step_below(self, series: str, threshold: float) -> tuple[int, float] | None:
        """(step, elapsed seconds) of the first evaluation where ``series`` <= ``threshold``, or None."""
        values = getattr(self, series)
        for step, value, elapsed in zip(self.step, values, self.elapsed_s, strict=True):
            if value <= threshold:
                return step, elapsed
        return None


@dataclass(frozen=True)
class LoopConfig:
    """How long to train and how often to evaluate: at most ``steps`` steps (and ``time_budget_s`` training
    seconds, if given), an evaluation at step 0, every ``eval_every`` steps and at the end; ``progress``: a bar."""

    steps: int
    eval_every: int = 100
    time_budget_s: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_int("steps", self.steps, minimum=0)
        check_int("eval_every", self.eval_every, minimum=1)
        if self.time_budget_s is not None:
            check_float("time_budget_s", self.time_budget_s, minimum=0.0, strict=True)


Step = Callable[[object], float]  # one update on a batch (None without draw); returns the training loss
Recorder = Callable[[int], dict[str, float]]  # the evaluation at a step: {metric name: value}
StopRule = Callable[[TrainingHistory], str | None]  # a reason to stop after an evaluation, or None


def train_loop(
    config: LoopConfig,
    history: TrainingHistory,
    step: Step,
    record: Recorder,
    *,
    draw: Callable[[], object] | None = None,
    stop: StopRule | None = None,
) -> TrainingHistory:
    """The one training loop: evaluate at step 0, then ``step(draw())`` (timed; ``draw`` is not) until
    ``config.steps``, evaluating every ``config.eval_every`` steps, at the last step and when the time budget is
    spent. ``record(step)`` returns the metrics appended to ``history`` (at step 0 it may give ``"train_loss"``, the
    objective before any update); ``stop(history)`` may end the run after an evaluation with a reason.
    ``history.stop_reason`` and ``step_time_s`` are set at the end; the history is returned.
    """
    bar = tqdm(total=config.steps, disable=not config.progress, leave=False, desc=history.method)
    reason = _evaluate(history, record, stop, bar, 0, None, 0.0)
    elapsed, running, count, done = 0.0, 0.0, 0, 0
    while reason is None and done < config.steps:
        batch = draw() if draw is not None else None
        start = time.perf_counter()
        loss = step(batch)
        elapsed += time.perf_counter() - start
        done += 1
        running, count = running + loss, count + 1
        bar.update(1)
        out_of_time = config.time_budget_s is not None and elapsed >= config.time_budget_s
        if done % config.eval_every == 0 or done == config.steps or out_of_time:
            reason = _evaluate(history, record, stop, bar, done, running / count, elapsed)
            running, count = 0.0, 0
            if reason is None and out_of_time:
                reason = "time_budget"
    bar.close()
    history.stop_reason = reason or "steps"
    history.step_time_s = history.elapsed_s[-1] / max(done, 1)
    return history


def _evaluate(history, record, stop, bar, step: int, train_loss: float | None, elapsed: float) -> str | None:
    metrics = dict(record(step))
    if train_loss is None:  # before the first update
        train_loss = metrics.pop("train_loss", float("nan"))
    history.append(step, train_loss, elapsed, metrics)
    bar.set_postfix({name: f"{values[-1]:.2e}" for name, values in list(history.metrics.items())[:2]}, refresh=False)
    return stop(history) if stop is not None else None


# --------------------------------------------------------------------------------------------------------------------
# Part I: test prompts, the recorder and the shared set-up
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class TestPrompts:
    """Fixed evaluation prompts and their targets yhat* (Theorem 2's ridge prediction, regularisation m tau).

    ``in_domain``/``out_of_domain``: :class:`~icllib.prompts.PromptBatch` (lambda ~ N(0, I_m) and N(1_m, 4 I_m));
    ``star_in``/``star_out``: yhat* of shape (n, K) for each.
    """

    __test__ = False  # not a pytest test class despite its name

    in_domain: PromptBatch
    out_of_domain: PromptBatch
    star_in: torch.Tensor
    star_out: torch.Tensor


def make_test_prompts(
    Z_all, n_labeled: int, tau: float, generator: torch.Generator, n_prompts: int = 200
) -> TestPrompts:
    """Draw the paper's two test sets (``n_prompts`` each, in and out of domain) and their ridge targets yhat*."""
    n_prompts = check_int("n_prompts", n_prompts, minimum=1)
    check_generator("generator", generator)
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2, dtype=torch.float64)
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=Z_all.shape[1] - 1)
    tau = check_float("tau", tau, minimum=0.0)
    return _test_prompts(Z_all, n_labeled, tau, generator, n_prompts)


def _test_prompts(Z_all, n_labeled: int, tau: float, generator: torch.Generator, n_prompts: int) -> TestPrompts:
    batches = [_sample_prompts(Z_all, n_labeled, tau, n_prompts, generator, dist)
               for dist in ("in_domain", "out_of_domain")]
    stars = [kernels._ridge_predict(Z_all, b.y, n_labeled, Z_all.shape[0] * tau) for b in batches]
    return TestPrompts(batches[0], batches[1], stars[0], stars[1])


def _check_model(model, Z_all, need_linear: bool) -> tuple[int, int]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    n_labeled = getattr(model, "n_labeled", None)
    if not isinstance(n_labeled, int):
        raise TypeError("model must have an integer attribute n_labeled (N, the number of labelled tokens)")
    if need_linear and not callable(getattr(model, "attention_matrix", None)):
        raise TypeError(
            f"training on the exact loss needs a model linear in the labels, with attention_matrix() -> (N, K); "
            f"{type(model).__name__} has none (use train_adam_monte_carlo)"
        )
    K = Z_all.shape[1]
    n_tokens = getattr(model, "n_tokens", K)
    if n_tokens != K:
        raise ValueError(f"Z_all has K={K} columns but the model predicts {n_tokens} tokens")
    if n_labeled >= K:
        raise ValueError(f"the model's n_labeled={n_labeled} must be smaller than the number of tokens K={K}")
    return n_labeled, K


def _terms_on(terms: kernels.LossTerms, model: nn.Module) -> kernels.LossTerms:
    """The Lemma 5 constants on the model's device (a GPU, if the model was moved there)."""
    device = next(model.parameters()).device
    if device == terms.target.device:
        return terms
    return kernels.LossTerms(terms.gram.to(device), terms.target.to(device), terms.optimal.to(device),
                             terms.n_tokens, terms.dtype)


def _part1_metrics(model: nn.Module, terms: kernels.LossTerms, test: TestPrompts) -> dict[str, float]:
    """The gap L - L*, the inference losses in and out of domain and ||w|| of the model as it is now."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if callable(getattr(model, "attention_matrix", None)):
            A_tilde = model.attention_matrix().double().cpu()
            gap = float(exact_gap(A_tilde, terms))
            pred_in, pred_out = test.in_domain.y.double() @ A_tilde, test.out_of_domain.y.double() @ A_tilde
        else:
            # No closed form when yhat is not linear in y: estimate L on the in-domain test prompts (their labels
            # of all K tokens are known), minus L*.
            param = next(model.parameters())
            pred_in, pred_out = (model(t.y.to(param.device, param.dtype)).double().cpu()
                                 for t in (test.in_domain, test.out_of_domain))
            loss = ((pred_in - test.in_domain.y_all.double()) ** 2).sum(-1).mean() / (2 * terms.n_tokens)
            gap = float(loss - terms.optimal)
        w = getattr(model, "w", None)
        w_norm = float(w.norm()) if isinstance(w, torch.Tensor) else float("nan")
    model.train(was_training)
    # (1/K)||yhat - yhat*||^2 averaged over prompts, as kernels.inference_loss, but NaN passes (divergence).
    return {"loss_gap": gap, "in_domain": float(((pred_in - test.star_in) ** 2).mean()),
            "out_of_domain": float(((pred_out - test.star_out) ** 2).mean()), "w_norm": w_norm}


@dataclass
class _Setup:
    """Validated arguments shared by the Part I objectives."""

    Z_all: torch.Tensor
    tau: float
    loop: LoopConfig
    stop_at_inference: float | None
    n_labeled: int
    n_tokens: int
    terms: kernels.LossTerms


def _setup(model, Z_all, tau, steps, eval_every, test_prompts, generator, time_budget_s, stop_at_inference,
           callback, progress, need_linear) -> _Setup:
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2, dtype=torch.float64)
    tau = check_float("tau", tau, minimum=0.0)
    loop = LoopConfig(steps, eval_every, time_budget_s, progress)
    if generator is not None:
        check_generator("generator", generator)
    if test_prompts is None:
        if generator is None:
            raise ValueError("give test_prompts or a generator to draw them from")
    elif not isinstance(test_prompts, TestPrompts):
        raise TypeError(
            f"test_prompts must be a TestPrompts (see make_test_prompts), got {type(test_prompts).__name__}"
        )
    if stop_at_inference is not None:
        stop_at_inference = check_float("stop_at_inference", stop_at_inference, minimum=0.0, strict=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (step, model) -> None, got {type(callback).__name__}")
    n_labeled, n_tokens = _check_model(model, Z_all, need_linear)
    if test_prompts is not None and (test_prompts.in_domain.n_labeled != n_labeled
                                     or test_prompts.star_in.shape[-1] != n_tokens):
        raise ValueError("test_prompts were drawn for another N or K than this model and Z_all")
    terms = kernels._loss_terms(Z_all, n_labeled, tau)
    return _Setup(Z_all, tau, loop, stop_at_inference, n_labeled, n_tokens, terms)


def _train(method: str, model: nn.Module, setup: _Setup, step: Step, test_prompts, generator, callback,
           config: dict) -> TrainingHistory:
    """Run a Part I objective's ``step`` through :func:`train_loop`, recording on fixed test prompts."""
    test = test_prompts if test_prompts is not None else _test_prompts(setup.Z_all, setup.n_labeled, setup.tau,
                                                                       generator, 200)
    linear = callable(getattr(model, "attention_matrix", None))
    history = TrainingHistory(method, constants={"exact_gap": linear}, config=config)

    def record(step_done: int) -> dict[str, float]:
        metrics = _part1_metrics(model, setup.terms, test)
        if step_done == 0:  # no training loss yet: record L(theta_0) = gap + L*
            metrics["train_loss"] = float(metrics["loss_gap"] + setup.terms.optimal)
        if callback is not None:
            callback(step_done, model)
        return metrics

    def stop(h: TrainingHistory) -> str | None:
        if len(h.step) > 1 and not (math.isfinite(h.loss_gap[-1]) and math.isfinite(h.in_domain[-1])):
            return "diverged"
        if setup.stop_at_inference is not None and h.in_domain[-1] <= setup.stop_at_inference:
            return "target"
        return None

    return train_loop(setup.loop, history, step, record, stop=stop)


# --------------------------------------------------------------------------------------------------------------------
# 1. Gradient descent on the exact loss (Theorem 1)
# --------------------------------------------------------------------------------------------------------------------
def train_exact_gd(
    model: nn.Module,
    Z_all,
    tau: float,
    steps: int,
    eta_Q: float = 0.5,
    gamma2: float = 4.0,
    *,
    eval_every: int = 100,
    test_prompts: TestPrompts | None = None,
    generator: torch.Generator | None = None,
    time_budget_s: float | None = None,
    stop_at_inference: float | None = None,
    callback: Callable[[int, nn.Module], None] | None = None,
    progress: bool = True,
) -> TrainingHistory:
    """Full-batch GD on L(theta) of Lemma 5: Q_h -= eta_Q dL/dQ_h, w_h -= gamma^2 eta_Q dL/dw_h (Theorem 1).

    The parameters named ``w`` (output weights) take the step eta_w = ``gamma2`` * ``eta_Q``, all others ``eta_Q``.
    The gradient is autograd through A_tilde(theta) and the gap (1/2K) tr((A_tilde - A)^T M (A_tilde - A)) with
    M and A precomputed (:func:`icllib.kernels.loss_terms`), which is as fast as chaining the closed-form
    dL/dA_tilde into ``A_tilde.backward`` (benchmarks/bench_part1.py measures both). The model is updated in place.

    ``test_prompts`` (or ``generator`` to draw them), ``eval_every``, ``time_budget_s`` (training seconds),
    ``stop_at_inference`` (stop once the in-domain inference loss is at most this) and ``callback(step, model)``
    (called at each evaluation, e.g. to record the PL ratio) are shared with the other loops.
    """
    eta_Q = check_float("eta_Q", eta_Q, minimum=0.0, strict=True)
    gamma2 = check_float("gamma2", gamma2, minimum=0.0, strict=True)
    setup = _setup(model, Z_all, tau, steps, eval_every, test_prompts, generator, time_budget_s, stop_at_inference,
                   callback, progress, need_linear=True)
    terms = _terms_on(setup.terms, model)
    rates = [(p, eta_Q * gamma2 if name.split(".")[-1] == "w" else eta_Q) for name, p in model.named_parameters()]

    def step(_batch: object) -> float:
        for p, _ in rates:
            p.grad = None
        gap = exact_gap(model.attention_matrix(), terms)
        gap.backward()
        with torch.no_grad():
            for p, lr in rates:
                p.sub_(lr * p.grad)
        return float(gap.detach()) + float(terms.optimal)

    config = {"eta_Q": eta_Q, "gamma2": gamma2, "eta_w": eta_Q * gamma2, "tau": setup.tau}
    return _train("exact GD", model, setup, step, test_prompts, generator, callback, config)


# --------------------------------------------------------------------------------------------------------------------
# 2. Adam on the exact loss
# --------------------------------------------------------------------------------------------------------------------
def train_adam_exact(
    model: nn.Module,
    Z_all,
    tau: float,
    steps: int,
    lr: float = 1e-2,
    *,
    eval_every: int = 100,
    test_prompts: TestPrompts | None = None,
    generator: torch.Generator | None = None,
    time_budget_s: float | None = None,
    stop_at_inference: float | None = None,
    callback: Callable[[int, nn.Module], None] | None = None,
    progress: bool = True,
) -> TrainingHistory:
    """Adam (``lr``, default betas) on the exact loss L(theta) of Lemma 5; same arguments as :func:`train_exact_gd`."""
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    setup = _setup(model, Z_all, tau, steps, eval_every, test_prompts, generator, time_budget_s, stop_at_inference,
                   callback, progress, need_linear=True)
    terms = _terms_on(setup.terms, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step(_batch: object) -> float:
        optimizer.zero_grad(set_to_none=True)
        gap = exact_gap(model.attention_matrix(), terms)
        gap.backward()
        optimizer.step()
        return float(gap.detach()) + float(terms.optimal)

    config = {"lr": lr, "tau": setup.tau}
    return _train("exact Adam", model, setup, step, test_prompts, generator, callback, config)


# --------------------------------------------------------------------------------------------------------------------
# 3. L-BFGS on the exact loss
# --------------------------------------------------------------------------------------------------------------------
def train_lbfgs_exact(
    model: nn.Module,
    Z_all,
    tau: float,
    steps: int,
    history_size: int = 50,
    inner_steps: int = 20,
    *,
    eval_every: int = 1,
    test_prompts: TestPrompts | None = None,
    generator: torch.Generator | None = None,
    time_budget_s: float | None = None,
    stop_at_inference: float | None = None,
    callback: Callable[[int, nn.Module], None] | None = None,
    progress: bool = True,
) -> TrainingHistory:
    """L-BFGS on the exact loss L(theta) of Lemma 5 (``torch.optim.LBFGS``, strong-Wolfe line search, memory of
    ``history_size`` curvature pairs). One step of the loop is one call of the optimiser: up to ``inner_steps``
    quasi-Newton iterations, each with its line search, so a step costs up to about that many loss evaluations
    (``history.config["evaluations"]`` counts them). Other arguments as :func:`train_exact_gd`."""
    history_size = check_int("history_size", history_size, minimum=1)
    inner_steps = check_int("inner_steps", inner_steps, minimum=1)
    setup = _setup(model, Z_all, tau, steps, eval_every, test_prompts, generator, time_budget_s, stop_at_inference,
                   callback, progress, need_linear=True)
    terms = _terms_on(setup.terms, model)
    # No tolerance stops: the run ends by the loop's rules (steps, budget, stop_at_inference), as for the others.
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=inner_steps, history_size=history_size,
                                  line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
    config = {"history_size": history_size, "inner_steps": inner_steps, "tau": setup.tau, "evaluations": 0}

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        gap = exact_gap(model.attention_matrix(), terms)
        gap.backward()
        config["evaluations"] += 1
        return gap

    def step(_batch: object) -> float:
        optimizer.step(closure)
        with torch.no_grad():
            return float(exact_gap(model.attention_matrix(), terms)) + float(terms.optimal)

    return _train("exact L-BFGS", model, setup, step, test_prompts, generator, callback, config)


# --------------------------------------------------------------------------------------------------------------------
# 4. The paper's recipe: Adam on Monte-Carlo prompts
# --------------------------------------------------------------------------------------------------------------------
#: The arithmetic of a Monte-Carlo training step — ``"float32"`` (the default, exact float32 products), ``"tf32"``
#: (float32 tensors, matrix products on CUDA tensor cores in TF32; elsewhere the same as float32) and ``"bf16"``
#: (the forward pass under ``torch.autocast`` in bfloat16, the loss and the optimiser in float32).
PRECISIONS = ("float32", "tf32", "bf16")


@contextlib.contextmanager
def _step_precision(precision: str, device: torch.device) -> Iterator[None]:
    """The forward pass of one training step in ``precision`` (see :data:`PRECISIONS`); settings restored after."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    elif precision == "tf32" and device.type == "cuda":
        saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")  # float32 matrix products in TF32 on tensor cores
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(saved)
    else:
        yield


def train_adam_monte_carlo(
    model: nn.Module,
    Z_all,
    tau: float,
    steps: int,
    n_train_prompts: int = 10_000,
    batch_size: int = 256,
    lr: float = 1e-4,
    *,
    generator: torch.Generator,
    eval_every: int = 100,
    test_prompts: TestPrompts | None = None,
    time_budget_s: float | None = None,
    stop_at_inference: float | None = None,
    callback: Callable[[int, nn.Module], None] | None = None,
    precision: str = "float32",
    progress: bool = True,
) -> TrainingHistory:
    """The paper's training: Adam on L_hat = (1/2K) mean_batch sum_k (yhat_k - y_k)^2 over sampled prompts.

    ``n_train_prompts`` prompts (lambda ~ N(0, I_m), noisy labels of all K tokens,
    :func:`icllib.prompts.sample_prompts`) are drawn once from ``generator``; each step takes a minibatch of
    ``batch_size`` of them (reshuffled every epoch). Any model with ``n_labeled`` and
    ``model(y (..., N)) -> (..., K)`` trains, in its own dtype and on its own device. The gap L - L* in the history
    is exact for the one-layer model and a Monte-Carlo estimate on the in-domain test prompts otherwise.
    ``time_budget_s`` counts training seconds only (Figure 5 compares models at equal time). ``precision``
    (:data:`PRECISIONS`) sets the arithmetic of the training step only, on a float32 model: ``"tf32"`` or ``"bf16"``
    make the paper-width transformer fast on a GPU (``benchmarks/bench_part1.py`` measures them against
    ``"float32"``); evaluations always run in the model's own precision.
    """
    check_generator("generator", generator)
    n_train_prompts = check_int("n_train_prompts", n_train_prompts, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1, maximum=n_train_prompts)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    precision = check_choice("precision", precision, PRECISIONS)
    setup = _setup(model, Z_all, tau, steps, eval_every, test_prompts, generator, time_budget_s, stop_at_inference,
                   callback, progress, need_linear=False)
    param = next(model.parameters())
    if precision != "float32" and param.dtype != torch.float32:
        raise ValueError(f"precision={precision!r} needs a float32 model, got parameters of dtype {param.dtype}")
    train = _sample_prompts(setup.Z_all, setup.n_labeled, setup.tau, n_train_prompts, generator)
    # The prompts live where the model lives (a GPU, if the model was moved there), in its dtype.
    y_train, target = train.y.to(param.device, param.dtype), train.y_all.to(param.device, param.dtype)
    step = _monte_carlo_step(model, torch.optim.Adam(model.parameters(), lr=lr), y_train, target, batch_size,
                             generator, precision)
    config = {"lr": lr, "batch_size": batch_size, "n_train_prompts": n_train_prompts, "tau": setup.tau,
              "precision": precision}
    return _train("Monte-Carlo Adam", model, setup, step, test_prompts, generator, callback, config)


def _monte_carlo_step(model: nn.Module, optimizer: torch.optim.Optimizer, y_train: torch.Tensor,
                      target: torch.Tensor, batch_size: int, generator: torch.Generator, precision: str) -> Step:
    """One Adam step on the next minibatch; every epoch reorders the training prompts (one ``randperm``), after
    which each minibatch is a contiguous slice (the same batches as indexing, without a gather per step)."""
    n_prompts, n_tokens, device = y_train.shape[0], target.shape[-1], y_train.device

    def reorder() -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.randperm(n_prompts, generator=generator).to(device)
        return y_train[order], target[order]

    shuffled, cursor = reorder(), 0

    def step(_batch: object) -> float:
        nonlocal shuffled, cursor
        if cursor + batch_size > n_prompts:
            shuffled, cursor = reorder(), 0
        y, y_all = (t[cursor : cursor + batch_size] for t in shuffled)
        cursor += batch_size
        optimizer.zero_grad(set_to_none=True)
        with _step_precision(precision, device):
            prediction = model(y)
        loss = ((prediction.to(y_all.dtype) - y_all) ** 2).sum(-1).mean() / (2 * n_tokens)  # in the model's dtype
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step
