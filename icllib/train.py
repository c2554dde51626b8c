"""Training loops for the template-regression models (Yang et al. 2024), each returning a :class:`TrainingHistory`.

Three ways to train, from the theory to the paper's experiments:

- :func:`train_exact_gd`: full-batch gradient descent on the exact population loss of Lemma 5, with the two step
  sizes of Theorem 1 (eta_Q for the key-query matrices, eta_w = gamma^2 eta_Q for the output weights). Needs a model
  that is linear in the labels, i.e. has ``attention_matrix()`` (the one-layer model).
- :func:`train_adam_exact`: Adam on the same exact loss (not in the paper; a fast optimiser for the same objective).
- :func:`train_adam_monte_carlo`: the paper's recipe: Adam (learning rate 1e-4) on minibatches of 256 prompts drawn
  from a fixed set of 10,000, the squared error over all K tokens, L_hat = (1/2K) mean_prompts sum_k (yhat_k - y_k)^2.
  Works for any model called as ``model(y) -> yhat`` with y (..., N) and yhat (..., K), e.g. the multi-layer
  transformer.

Every loop evaluates, every ``eval_every`` steps, the gap L(theta) - L* and the paper's inference metric
(1/K) ||yhat - yhat*||^2 on fixed test prompts (200 in domain, lambda ~ N(0, I_m); 200 out of domain,
lambda ~ N(1_m, 4 I_m)), where yhat* is Theorem 2's ridge prediction. Training time is measured per step, without
the evaluations, so that time budgets compare training compute only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from icllib import kernels
from icllib._checks import as_float_tensor, check_float, check_generator, check_int
from icllib.prompts import PromptBatch, sample_prompts

__all__ = [
    "TestPrompts",
    "TrainingHistory",
    "make_test_prompts",
    "exact_gap",
    "train_exact_gd",
    "train_adam_exact",
    "train_adam_monte_carlo",
]


# --------------------------------------------------------------------------------------------------------------------
# Test prompts and the history
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
    batches = [
        sample_prompts(Z_all, n_labeled, tau, n_prompts, generator, distribution=dist)
        for dist in ("in_domain", "out_of_domain")
    ]
    stars = [kernels.ridge_predictions(Z_all, b.y, n_labeled, tau) for b in batches]
    return TestPrompts(batches[0], batches[1], stars[0], stars[1])


@dataclass
class TrainingHistory:
    """What a training run recorded at each evaluation (lists of equal length, one entry per evaluation).

    ``step``: iteration count (0 = before training). ``loss_gap``: L(theta) - L*, exact (Lemma 5) for models with
    ``attention_matrix()``, else a Monte-Carlo estimate on the in-domain test prompts (then ``exact_gap`` is False;
    a model that is not linear in y can even go below the best linear loss L*). ``train_loss``: the training
    objective (exact L, or the mean minibatch loss since the previous evaluation for Monte-Carlo training).
    ``in_domain``/``out_of_domain``: (1/K) ||yhat - yhat*||^2 averaged over the test prompts. ``w_norm``: the
    Frobenius norm of the output weights w (NaN for models without them). ``elapsed_s``: cumulative training time
    (evaluations excluded). ``step_time_s``: mean seconds per training step. ``stop_reason``: "steps",
    "time_budget", "target" (in-domain inference loss reached ``stop_at_inference``) or "diverged" (non-finite
    gap).
    """

    method: str
    exact_gap: bool
    step: list[int] = field(default_factory=list)
    loss_gap: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    in_domain: list[float] = field(default_factory=list)
    out_of_domain: list[float] = field(default_factory=list)
    w_norm: list[float] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)
    step_time_s: float = float("nan")
    stop_reason: str = "steps"
    config: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """The recorded series as numpy arrays (for plotting)."""
        names = ("step", "loss_gap", "train_loss", "in_domain", "out_of_domain", "w_norm", "elapsed_s")
        return {name: np.asarray(getattr(self, name), dtype=float) for name in names}

    def first_step_below(self, series: str, threshold: float) -> tuple[int, float] | None:
        """(step, elapsed seconds) of the first evaluation where ``series`` <= ``threshold``, or None."""
        values = getattr(self, series)
        for step, value, elapsed in zip(self.step, values, self.elapsed_s, strict=True):
            if value <= threshold:
                return step, elapsed
        return None


# --------------------------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------------------------
def exact_gap(A_tilde: torch.Tensor, terms: kernels.LossTerms) -> torch.Tensor:
    """L(theta) - L* = (1/2K) tr((A_tilde - A)^T M (A_tilde - A)), M = Zbar^2 = Z^T Z + m tau I (Lemma 5).

    Computed directly rather than as L - L*, which would lose the gap in rounding once it falls below ~1e-16 L*.
    Differentiable in ``A_tilde``; float64.
    """
    diff = A_tilde.double() - terms.target
    return (diff * (terms.gram @ diff)).sum() / (2 * terms.n_tokens)


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
    return n_labeled, K


def _terms_on(terms: kernels.LossTerms, model: nn.Module) -> kernels.LossTerms:
    """The Lemma 5 constants on the model's device (a GPU, if the model was moved there)."""
    device = next(model.parameters()).device
    if device == terms.target.device:
        return terms
    return kernels.LossTerms(terms.gram.to(device), terms.target.to(device), terms.optimal.to(device),
                             terms.n_tokens, terms.dtype)


class _Recorder:
    """Evaluates a model on the fixed test prompts and appends to a history (evaluation time is not counted)."""

    def __init__(self, model, terms, test, history, progress, steps):
        self.model, self.terms, self.test, self.history = model, terms, test, history
        self.linear = callable(getattr(model, "attention_matrix", None))
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.bar = tqdm(total=steps, disable=not progress, leave=False, desc=history.method)

    def _predict(self, y: torch.Tensor) -> torch.Tensor:
        return self.model(y.to(self.device, self.dtype)).double().cpu()

    @torch.no_grad()
    def __call__(self, step: int, train_loss: float | None, elapsed: float) -> float:
        model, h, test = self.model, self.history, self.test
        was_training = model.training
        model.eval()
        if self.linear:
            A_tilde = model.attention_matrix().double().cpu()
            gap = float(exact_gap(A_tilde, self.terms))
            pred_in, pred_out = test.in_domain.y.double() @ A_tilde, test.out_of_domain.y.double() @ A_tilde
        else:
            # No closed form when yhat is not linear in y: estimate L on the in-domain test prompts (their labels
            # of all K tokens are known), minus L*.
            pred_in, pred_out = self._predict(test.in_domain.y), self._predict(test.out_of_domain.y)
            loss = ((pred_in - test.in_domain.y_all.double()) ** 2).sum(-1).mean() / (2 * self.terms.n_tokens)
            gap = float(loss - self.terms.optimal)
        model.train(was_training)
        h.step.append(step)
        h.loss_gap.append(gap)
        # Before the first step there is no training loss yet: record L(theta_0) = gap + L*.
        h.train_loss.append(float(gap + self.terms.optimal) if train_loss is None else float(train_loss))
        # (1/K)||yhat - yhat*||^2 averaged over prompts, as kernels.inference_loss, but NaN passes (divergence).
        h.in_domain.append(float(((pred_in - test.star_in) ** 2).mean()))
        h.out_of_domain.append(float(((pred_out - test.star_out) ** 2).mean()))
        w = getattr(model, "w", None)
        h.w_norm.append(float(w.norm()) if isinstance(w, torch.Tensor) else float("nan"))
        h.elapsed_s.append(elapsed)
        self.bar.set_postfix(gap=f"{gap:.2e}", inf=f"{h.in_domain[-1]:.2e}", refresh=False)
        return h.in_domain[-1]

    def close(self, steps_done: int) -> None:
        self.bar.close()
        self.history.step_time_s = self.history.elapsed_s[-1] / max(steps_done, 1)


@dataclass
class _Setup:
    """Validated arguments shared by the loops."""

    Z_all: torch.Tensor
    tau: float
    steps: int
    eval_every: int
    time_budget_s: float | None
    stop_at_inference: float | None
    n_labeled: int
    n_tokens: int
    terms: kernels.LossTerms


def _setup(
    model, Z_all, tau, steps, eval_every, test_prompts, generator, time_budget_s, stop_at_inference, need_linear
) -> _Setup:
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2, dtype=torch.float64)
    tau = check_float("tau", tau, minimum=0.0)
    steps = check_int("steps", steps, minimum=0)
    eval_every = check_int("eval_every", eval_every, minimum=1)
    if generator is not None:
        check_generator("generator", generator)
    if test_prompts is None:
        if generator is None:
            raise ValueError("give test_prompts or a generator to draw them from")
    elif not isinstance(test_prompts, TestPrompts):
        raise TypeError(
            f"test_prompts must be a TestPrompts (see make_test_prompts), got {type(test_prompts).__name__}"
        )
    if time_budget_s is not None:
        time_budget_s = check_float("time_budget_s", time_budget_s, minimum=0.0, strict=True)
    if stop_at_inference is not None:
        stop_at_inference = check_float("stop_at_inference", stop_at_inference, minimum=0.0, strict=True)
    n_labeled, n_tokens = _check_model(model, Z_all, need_linear)
    terms = kernels.loss_terms(Z_all, n_labeled, tau)
    return _Setup(Z_all, tau, steps, eval_every, time_budget_s, stop_at_inference, n_labeled, n_tokens, terms)


def _run(
    method: str,
    model: nn.Module,
    setup: _Setup,
    step_fn: Callable[[], float],
    test_prompts: TestPrompts | None,
    generator: torch.Generator | None,
    progress: bool,
    callback: Callable[[int, nn.Module], None] | None,
    config: dict,
) -> TrainingHistory:
    """The loop every method shares: evaluate at step 0 and every ``eval_every`` steps, stop on steps/time/target."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (step, model) -> None, got {type(callback).__name__}")
    Z_all, steps, eval_every = setup.Z_all, setup.steps, setup.eval_every
    time_budget_s, stop_at_inference = setup.time_budget_s, setup.stop_at_inference
    test = test_prompts if test_prompts is not None else make_test_prompts(Z_all, setup.n_labeled, setup.tau, generator)
    if test.in_domain.n_labeled != setup.n_labeled or test.star_in.shape[-1] != setup.n_tokens:
        raise ValueError("test_prompts were drawn for another N or K than this model and Z_all")
    linear = callable(getattr(model, "attention_matrix", None))
    history = TrainingHistory(method=method, exact_gap=linear, config=config)
    record = _Recorder(model, setup.terms, test, history, progress, steps)

    elapsed, running, n_running, step = 0.0, 0.0, 0, 0
    first = record(0, None, 0.0)
    if callback is not None:
        callback(0, model)
    if stop_at_inference is not None and first <= stop_at_inference:
        history.stop_reason = "target"
    while history.stop_reason == "steps" and step < steps:
        start = time.perf_counter()
        loss = step_fn()
        elapsed += time.perf_counter() - start
        step += 1
        running, n_running = running + loss, n_running + 1
        record.bar.update(1)
        out_of_time = time_budget_s is not None and elapsed >= time_budget_s
        if step % eval_every == 0 or step == steps or out_of_time:
            inference = record(step, running / n_running, elapsed)
            running, n_running = 0.0, 0
            if callback is not None:
                callback(step, model)
            if not (math.isfinite(history.loss_gap[-1]) and math.isfinite(history.in_domain[-1])):
                history.stop_reason = "diverged"
            elif stop_at_inference is not None and inference <= stop_at_inference:
                history.stop_reason = "target"
            elif out_of_time:
                history.stop_reason = "time_budget"
    record.close(step)
    return history


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
    setup = _setup(
        model, Z_all, tau, steps, eval_every, test_prompts, generator, time_budget_s, stop_at_inference, True
    )
    terms = _terms_on(setup.terms, model)
    rates = [(p, eta_Q * gamma2 if name.split(".")[-1] == "w" else eta_Q) for name, p in model.named_parameters()]

    def step_fn() -> float:
        for p, _ in rates:
            p.grad = None
        gap = exact_gap(model.attention_matrix(), terms)
        gap.backward()
        with torch.no_grad():
            for p, lr in rates:
                p.sub_(lr * p.grad)
        return float(gap.detach()) + float(terms.optimal)

    config = {"eta_Q": eta_Q, "gamma2": gamma2, "eta_w": eta_Q * gamma2, "tau": setup.tau}
    return _run("exact GD", model, setup, step_fn, test_prompts, generator, progress, callback, config)


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
    setup = _setup(
        model, Z_all, tau, steps, eval_every, test_prompts, generator, time_budget_s, stop_at_inference, True
    )
    terms = _terms_on(setup.terms, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def step_fn() -> float:
        optimizer.zero_grad(set_to_none=True)
        gap = exact_gap(model.attention_matrix(), terms)
        gap.backward()
        optimizer.step()
        return float(gap.detach()) + float(terms.optimal)

    config = {"lr": lr, "tau": setup.tau}
    return _run("exact Adam", model, setup, step_fn, test_prompts, generator, progress, callback, config)


# --------------------------------------------------------------------------------------------------------------------
# 3. The paper's recipe: Adam on Monte-Carlo prompts
# --------------------------------------------------------------------------------------------------------------------
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
    progress: bool = True,
) -> TrainingHistory:
    """The paper's training: Adam on L_hat = (1/2K) mean_batch sum_k (yhat_k - y_k)^2 over sampled prompts.

    ``n_train_prompts`` prompts (lambda ~ N(0, I_m), noisy labels of all K tokens,
    :func:`icllib.prompts.sample_prompts`) are drawn once from ``generator``; each step takes a minibatch of
    ``batch_size`` of them (reshuffled every epoch). Any model with ``n_labeled`` and
    ``model(y (..., N)) -> (..., K)`` trains, in its own dtype and on its own device. The gap L - L* in the history
    is exact for the one-layer model and a Monte-Carlo estimate on the in-domain test prompts otherwise.
    ``time_budget_s`` counts training seconds only (Figure 5 compares models at equal time).
    """
    check_generator("generator", generator)
    n_train_prompts = check_int("n_train_prompts", n_train_prompts, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1, maximum=n_train_prompts)
    lr = check_float("lr", lr, minimum=0.0, strict=True)
    setup = _setup(
        model, Z_all, tau, steps, eval_every, test_prompts, generator, time_budget_s, stop_at_inference, False
    )
    K, param = setup.n_tokens, next(model.parameters())
    train = sample_prompts(setup.Z_all, setup.n_labeled, setup.tau, n_train_prompts, generator)
    # The prompts live where the model lives (a GPU, if the model was moved there), in its dtype.
    y_train, target = train.y.to(param.device, param.dtype), train.y_all.to(param.device, param.dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order, cursor = torch.randperm(n_train_prompts, generator=generator), 0

    def step_fn() -> float:
        nonlocal order, cursor
        if cursor + batch_size > n_train_prompts:
            order, cursor = torch.randperm(n_train_prompts, generator=generator), 0
        idx = order[cursor : cursor + batch_size].to(param.device)
        cursor += batch_size
        optimizer.zero_grad(set_to_none=True)
        loss = ((model(y_train[idx]) - target[idx]) ** 2).sum(-1).mean() / (2 * K)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    config = {"lr": lr, "batch_size": batch_size, "n_train_prompts": n_train_prompts, "tau": setup.tau}
    return _run("Monte-Carlo Adam", model, setup, step_fn, test_prompts, generator, progress, callback, config)
