"""Tests of the training loops (icllib.train) on small problems."""

import math
import pickle

import pytest
import torch
from torch import nn

from icllib import basis, kernels, train
from icllib.models.one_layer import OneLayerMultiHead

N, K, D, M, H, TAU = 5, 16, 6, 4, 8, 0.1


def _problem(seed: int = 0, n_heads: int = H, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    tokens = basis.gaussian_dictionary(K, D, g)
    Z_all = basis.GaussianLookupFeatures(tokens, M, g)(tokens)
    model = OneLayerMultiHead(tokens, N, n_heads, generator=g, dtype=dtype)
    return model, Z_all, g


def test_exact_gap_matches_population_loss_and_its_gradient():
    model, Z_all, g = _problem()
    with torch.no_grad():
        model.w.normal_(generator=g)
    terms = kernels.loss_terms(Z_all, N, TAU)
    A_tilde = model.attention_matrix()
    gap = train.exact_gap(A_tilde, terms)
    expected = kernels.population_loss(A_tilde, Z_all, N, TAU) - kernels.optimal_loss(Z_all, N, TAU)
    torch.testing.assert_close(gap, expected, rtol=1e-10, atol=1e-12)
    # autograd through the gap == the closed-form dL/dA_tilde chained into A_tilde.backward
    grads = torch.autograd.grad(gap, (model.Q, model.w))
    chained = torch.autograd.grad(
        model.attention_matrix(), (model.Q, model.w), grad_outputs=kernels.population_loss_grad(A_tilde, Z_all, N, TAU)
    )
    for a, b in zip(grads, chained, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_make_test_prompts():
    _, Z_all, g = _problem()
    test = train.make_test_prompts(Z_all, N, TAU, g, n_prompts=7)
    assert test.in_domain.y.shape == (7, N) and test.star_out.shape == (7, K)
    A = kernels.target_matrix(Z_all, N, TAU)
    torch.testing.assert_close(test.star_in, test.in_domain.y @ A)
    # out-of-domain tasks have mean 1
    big = train.make_test_prompts(Z_all, N, TAU, g, n_prompts=2000)
    assert abs(float(big.out_of_domain.lam.mean()) - 1.0) < 0.1 and abs(float(big.in_domain.lam.mean())) < 0.1


def test_one_gd_step_uses_two_step_sizes():
    model, Z_all, g = _problem()
    with torch.no_grad():
        model.w.normal_(generator=g)
    terms = kernels.loss_terms(Z_all, N, TAU)
    g_Q, g_w = torch.autograd.grad(train.exact_gap(model.attention_matrix(), terms), (model.Q, model.w))
    Q0, w0 = model.Q.detach().clone(), model.w.detach().clone()
    train.train_exact_gd(model, Z_all, TAU, steps=1, eta_Q=0.1, gamma2=3.0, generator=g, progress=False)
    torch.testing.assert_close(model.Q.detach(), Q0 - 0.1 * g_Q)
    torch.testing.assert_close(model.w.detach(), w0 - 0.3 * g_w)


def test_gd_decreases_gap_and_history_fields():
    model, Z_all, g = _problem()
    hist = train.train_exact_gd(model, Z_all, TAU, steps=60, eta_Q=0.5, gamma2=4.0, eval_every=10, generator=g,
                                progress=False)
    assert hist.step == [0, 10, 20, 30, 40, 50, 60]
    n = len(hist.step)
    for name in ("loss_gap", "train_loss", "in_domain", "out_of_domain", "w_norm", "elapsed_s"):
        assert len(getattr(hist, name)) == n, name
    assert all(b < a for a, b in zip(hist.loss_gap, hist.loss_gap[1:], strict=False))
    assert hist.loss_gap[-1] < 0.5 * hist.loss_gap[0]
    assert hist.in_domain[-1] < hist.in_domain[0]
    assert hist.exact_gap and hist.stop_reason == "steps" and hist.method == "exact GD"
    assert hist.w_norm[0] == 0.0 and hist.step_time_s > 0
    L_star = float(kernels.optimal_loss(Z_all, N, TAU))
    assert math.isclose(hist.train_loss[0], hist.loss_gap[0] + L_star, rel_tol=1e-9)
    arrays = hist.arrays()
    assert arrays["step"].shape == (n,)
    assert hist.first_step_below("loss_gap", hist.loss_gap[2])[0] == 20


def test_stop_reasons_and_callback():
    model, Z_all, g = _problem()
    test = train.make_test_prompts(Z_all, N, TAU, g)
    seen = []
    hist = train.train_exact_gd(model, Z_all, TAU, steps=500, eval_every=5, test_prompts=test,
                                stop_at_inference=1e9, callback=lambda s, m: seen.append(s), progress=False)
    assert hist.stop_reason == "target" and hist.step == [0] and seen == [0]
    hist = train.train_exact_gd(model, Z_all, TAU, steps=500, eval_every=50, test_prompts=test, time_budget_s=1e-9,
                                progress=False)
    assert hist.stop_reason == "time_budget" and hist.step == [0, 1]
    hist = train.train_exact_gd(model, Z_all, TAU, steps=50, eta_Q=1e4, gamma2=1e4, eval_every=5, test_prompts=test,
                                progress=False)
    assert hist.stop_reason == "diverged" and not math.isfinite(hist.loss_gap[-1])


def test_same_test_prompts_same_start():
    model_a, Z_all, g = _problem()
    model_b, _, _ = _problem()
    test = train.make_test_prompts(Z_all, N, TAU, g)
    ha = train.train_exact_gd(model_a, Z_all, TAU, steps=0, test_prompts=test, progress=False)
    hb = train.train_adam_exact(model_b, Z_all, TAU, steps=0, test_prompts=test, progress=False)
    assert ha.in_domain == hb.in_domain and ha.loss_gap == hb.loss_gap


def test_adam_exact_decreases_gap():
    model, Z_all, g = _problem()
    hist = train.train_adam_exact(model, Z_all, TAU, steps=100, lr=1e-2, eval_every=50, generator=g, progress=False)
    assert hist.loss_gap[-1] < 0.5 * hist.loss_gap[0] and hist.method == "exact Adam"


def test_lbfgs_exact_reaches_the_minimum_adam_does_not_in_the_same_evaluations():
    # A claim that could fail: on the same problem and start, L-BFGS with at most 200 loss evaluations ends orders
    # of magnitude closer to the minimiser (the ridge predictor) than Adam with 200 steps.
    model, Z_all, g = _problem()
    test = train.make_test_prompts(Z_all, N, TAU, g)
    twin, _, _ = _problem()
    hist = train.train_lbfgs_exact(model, Z_all, TAU, steps=10, inner_steps=20, test_prompts=test, progress=False)
    adam = train.train_adam_exact(twin, Z_all, TAU, steps=200, lr=1e-2, eval_every=200, test_prompts=test,
                                  progress=False)
    assert hist.method == "exact L-BFGS" and hist.config["evaluations"] <= 10 * 25
    assert hist.loss_gap[0] == adam.loss_gap[0]  # sanity check: the same start
    assert hist.loss_gap[-1] < 1e-3 * adam.loss_gap[-1], (hist.loss_gap[-1], adam.loss_gap[-1])


def test_lbfgs_exact_stops_at_the_target():
    model, Z_all, g = _problem()
    hist = train.train_lbfgs_exact(model, Z_all, TAU, steps=100, eval_every=1, stop_at_inference=1e-6, generator=g,
                                   progress=False)
    assert hist.stop_reason == "target" and hist.in_domain[-1] <= 1e-6 and hist.step[-1] < 100


def test_adam_monte_carlo_one_layer_and_float32():
    model, Z_all, g = _problem(dtype=torch.float32)
    hist = train.train_adam_monte_carlo(model, Z_all, TAU, steps=80, n_train_prompts=500, batch_size=64, lr=1e-2,
                                        eval_every=40, generator=g, progress=False)
    assert hist.exact_gap and hist.loss_gap[-1] < hist.loss_gap[0]
    assert hist.train_loss[-1] < hist.train_loss[0] and hist.config["batch_size"] == 64


class _TinyNonLinear(nn.Module):
    """A model that is not linear in y (no attention_matrix): predictions from a small MLP."""

    def __init__(self, n_labeled: int, n_tokens: int) -> None:
        super().__init__()
        self.n_labeled, self.n_tokens = n_labeled, n_tokens
        self.net = nn.Sequential(nn.Linear(n_labeled, 16), nn.Tanh(), nn.Linear(16, n_tokens))

    def forward(self, y):
        return self.net(y)


def test_adam_monte_carlo_any_model():
    _, Z_all, g = _problem()
    torch.manual_seed(0)  # nn.Linear's default initialisation (this test model only)
    model = _TinyNonLinear(N, K)
    hist = train.train_adam_monte_carlo(model, Z_all, TAU, steps=60, n_train_prompts=300, batch_size=50, lr=1e-2,
                                        eval_every=30, generator=g, progress=False)
    assert not hist.exact_gap and math.isnan(hist.w_norm[0])
    assert hist.loss_gap[-1] < hist.loss_gap[0]


def test_adam_monte_carlo_multilayer_transformer():
    multilayer = pytest.importorskip("icllib.models.multilayer")
    _, Z_all, g = _problem()
    tokens = basis.gaussian_dictionary(K, D, torch.Generator().manual_seed(0))
    model = multilayer.MultiLayerTransformer(tokens, N, d_model=8, n_layers=1, n_heads=2, d_ff=8, generator=g)
    hist = train.train_adam_monte_carlo(model, Z_all, TAU, steps=4, n_train_prompts=64, batch_size=16, lr=1e-3,
                                        eval_every=2, generator=g, progress=False)
    assert hist.step == [0, 2, 4] and not hist.exact_gap


def test_bad_inputs():
    model, Z_all, g = _problem()
    with pytest.raises(TypeError, match="attention_matrix"):
        train.train_exact_gd(_TinyNonLinear(N, K), Z_all, TAU, steps=1, generator=g)
    with pytest.raises(TypeError, match="nn.Module"):
        train.train_exact_gd("model", Z_all, TAU, steps=1, generator=g)
    with pytest.raises(ValueError, match="K=20"):
        train.train_exact_gd(model, torch.zeros(M, 20, dtype=torch.float64), TAU, steps=1, generator=g)
    with pytest.raises(ValueError, match="steps"):
        train.train_exact_gd(model, Z_all, TAU, steps=-1, generator=g)
    with pytest.raises(ValueError, match="eta_Q"):
        train.train_exact_gd(model, Z_all, TAU, steps=1, eta_Q=0.0, generator=g)
    with pytest.raises(ValueError, match="gamma2"):
        train.train_exact_gd(model, Z_all, TAU, steps=1, gamma2=-1.0, generator=g)
    with pytest.raises(ValueError, match="tau"):
        train.train_exact_gd(model, Z_all, -0.1, steps=1, generator=g)
    with pytest.raises(ValueError, match="test_prompts or a generator"):
        train.train_exact_gd(model, Z_all, TAU, steps=1)
    with pytest.raises(TypeError, match="test_prompts"):
        train.train_exact_gd(model, Z_all, TAU, steps=1, test_prompts="x")
    with pytest.raises(TypeError, match="callback"):
        train.train_exact_gd(model, Z_all, TAU, steps=1, generator=g, callback=3, progress=False)
    with pytest.raises(ValueError, match="time_budget_s"):
        train.train_exact_gd(model, Z_all, TAU, steps=1, generator=g, time_budget_s=0.0)
    with pytest.raises(ValueError, match="lr"):
        train.train_adam_exact(model, Z_all, TAU, steps=1, lr=0.0, generator=g)
    with pytest.raises(ValueError, match="batch_size"):
        train.train_adam_monte_carlo(model, Z_all, TAU, steps=1, n_train_prompts=10, batch_size=20, generator=g)
    with pytest.raises(ValueError, match="history_size"):
        train.train_lbfgs_exact(model, Z_all, TAU, steps=1, history_size=0, generator=g)
    with pytest.raises(TypeError, match="inner_steps"):
        train.train_lbfgs_exact(model, Z_all, TAU, steps=1, inner_steps=2.5, generator=g)
    with pytest.raises(TypeError, match="generator"):
        train.train_adam_monte_carlo(model, Z_all, TAU, steps=1, generator=None)
    with pytest.raises(TypeError, match="generator"):
        train.make_test_prompts(Z_all, N, TAU, generator=1)
    other = train.make_test_prompts(Z_all, N + 1, TAU, g, n_prompts=3)
    with pytest.raises(ValueError, match="another N or K"):
        train.train_exact_gd(model, Z_all, TAU, steps=1, test_prompts=other, progress=False)


# ------------------------------------------------------------------------------------------------ the one loop
def test_train_loop_with_draw_record_and_stop():
    """The loop itself, on a toy problem: a draw per step (untimed), a step, a recorder and a stopping rule."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.5)
    drawn, recorded = [], []

    def draw():
        drawn.append(len(drawn))
        return torch.tensor([2.0])

    def step(target):
        optimizer.zero_grad()
        loss = ((weight - target) ** 2).sum()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def record(step_done):
        recorded.append(step_done)
        metrics = {"distance": float((weight.detach() - 2.0).abs())}
        return {**metrics, "train_loss": 4.0} if step_done == 0 else metrics

    history = train.TrainingHistory("toy", constants={"target": 2.0})
    out = train.train_loop(train.LoopConfig(steps=7, eval_every=3, progress=False), history, step, record, draw=draw)
    assert out is history and history.stop_reason == "steps"
    assert history.step == [0, 3, 6, 7] == recorded and len(drawn) == 7
    assert history.train_loss[0] == 4.0 and "train_loss" not in history.metrics  # the objective before any step
    assert history.train_loss[1] == pytest.approx((4.0 + 0.0 + 0.0) / 3)  # SGD with lr 1/2 lands on 2 at once
    assert history.distance[-1] == 0.0 and history.target == 2.0 and history.step_time_s > 0
    assert set(history.arrays()) == {"step", "train_loss", "elapsed_s", "distance"}
    # a stopping rule ends the run after an evaluation; a time budget after the step that spends it
    stopped = train.train_loop(train.LoopConfig(steps=50, eval_every=2, progress=False), train.TrainingHistory("toy"),
                               step, record, draw=draw, stop=lambda h: "target" if h.step[-1] >= 4 else None)
    assert stopped.stop_reason == "target" and stopped.step == [0, 2, 4]
    timed = train.train_loop(train.LoopConfig(steps=50, eval_every=10, time_budget_s=1e-12, progress=False),
                             train.TrainingHistory("toy"), step, record, draw=draw)
    assert timed.stop_reason == "time_budget" and timed.step == [0, 1]
    untrained = train.train_loop(train.LoopConfig(0, progress=False), train.TrainingHistory("toy"), step,
                                 lambda s: {"distance": 0.0})
    assert untrained.step == [0] and math.isnan(untrained.train_loss[0])  # no objective given before the first step


def test_history_reads_series_and_constants_as_attributes():
    history = train.TrainingHistory("toy", constants={"ridge_floor": 0.5, "exact_gap": False}, step_time_s=0.01)
    history.append(0, 1.2, 0.0, {"query_mse": 1.0})
    history.append(10, 0.8, 0.1, {"query_mse": 0.4})
    assert history.query_mse == [1.0, 0.4] and history.ridge_floor == 0.5 and history.exact_gap is False
    assert history.first_step_below("query_mse", 0.5) == (10, 0.1)
    with pytest.raises(AttributeError, match="loss_gap"):
        _ = history.loss_gap
    again = pickle.loads(pickle.dumps(history))
    assert again == history and again.query_mse == [1.0, 0.4]
    assert train.exact_gap is kernels.exact_gap  # the gap lives with Lemma 5, train re-exports it


def test_loop_config_bad_inputs():
    with pytest.raises(ValueError, match="steps"):
        train.LoopConfig(steps=-1)
    with pytest.raises(TypeError, match="steps"):
        train.LoopConfig(steps=1.5)
    with pytest.raises(ValueError, match="eval_every"):
        train.LoopConfig(steps=1, eval_every=0)
    with pytest.raises(ValueError, match="time_budget_s"):
        train.LoopConfig(steps=1, time_budget_s=0.0)


# ------------------------------------------------------------------------------------------------ precision
def test_monte_carlo_precision_options():
    """tf32 is float32 off CUDA (the same numbers); bf16 autocasts the forward pass and still trains; a float64 model
    refuses the reduced precisions, and an unknown name is refused."""
    common = dict(steps=20, n_train_prompts=200, batch_size=32, lr=1e-2, eval_every=10, progress=False)
    runs = {}
    for precision in ("float32", "tf32", "bf16"):
        model, Z_all, _ = _problem(dtype=torch.float32)
        runs[precision] = train.train_adam_monte_carlo(model, Z_all, TAU, generator=torch.Generator().manual_seed(3),
                                                       precision=precision, **common)
    assert runs["tf32"].in_domain == runs["float32"].in_domain
    assert runs["bf16"].config["precision"] == "bf16" and runs["bf16"].loss_gap[-1] < runs["bf16"].loss_gap[0]
    assert runs["bf16"].in_domain[0] == runs["float32"].in_domain[0]  # evaluations run in the model's precision
    model, Z_all, g = _problem(dtype=torch.float64)
    with pytest.raises(ValueError, match="float32 model"):
        train.train_adam_monte_carlo(model, Z_all, TAU, generator=g, precision="bf16", **common)
    with pytest.raises(ValueError, match="precision"):
        train.train_adam_monte_carlo(model, Z_all, TAU, generator=g, precision="fp16", **common)


def test_monte_carlo_batches_are_the_epoch_order():
    """Each epoch visits every training prompt once, in contiguous slices of one permutation per epoch."""
    model, Z_all, _ = _problem(dtype=torch.float32)
    seen = []
    original = model.forward

    def spy(y):
        seen.append(y.detach().clone())
        return original(y)

    model.forward = spy
    train.train_adam_monte_carlo(model, Z_all, TAU, steps=4, n_train_prompts=40, batch_size=20, lr=1e-3,
                                 eval_every=100, generator=torch.Generator().manual_seed(0), progress=False,
                                 test_prompts=train.make_test_prompts(Z_all, N, TAU, torch.Generator(), n_prompts=2))
    batches = [b for b in seen if b.shape[0] == 20]
    assert len(batches) == 4
    first_epoch = torch.cat(batches[:2]).sort(dim=0).values
    second_epoch = torch.cat(batches[2:]).sort(dim=0).values
    torch.testing.assert_close(first_epoch, second_epoch)  # the same prompts, reordered
    assert not torch.equal(torch.cat(batches[:2]), torch.cat(batches[2:]))
