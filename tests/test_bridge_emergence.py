"""Tests of Chapter 10's new bridge code: the format without arrows, the task-vector-prompting loss, the
interventions (attention output, head contributions, learned vector) and the per-model evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icllib import basis, bridge, stats
from icllib.bridge.training import _tvp_loss
from icllib.models.causal import CausalTransformer

K, D, M, N, TAU = 12, 6, 2, 4, 0.1


def _gen(seed: int) -> torch.Generator:
    """A fresh generator from a seed."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def dictionary():
    """K tokens in R^D (float32, the models' precision) and their M lookup features."""
    tokens = basis.gaussian_dictionary(K, D, _gen(0))
    features = basis.GaussianLookupFeatures(tokens, M, _gen(1))
    return tokens.float(), features(tokens)


def _model(arrow: bool = True, seed: int = 0, dtype=torch.float32) -> CausalTransformer:
    layout = bridge.SequenceLayout(D, arrow=arrow)
    return CausalTransformer(layout.d_input, layout.length(N), d_model=8, n_layers=2, n_heads=2, d_ff=16,
                             generator=_gen(seed), dtype=dtype).eval()


# ------------------------------------------------------------------------------------------------ no arrows
def test_layout_without_arrows(dictionary):
    tokens, _ = dictionary
    layout = bridge.SequenceLayout(D, arrow=False)
    assert layout.length(2) == 2 * 2 + 1 + 1 and layout.stride == 2
    assert layout.predict_positions(2).tolist() == [1, 3, 5]  # the tokens: [BOS] x1 y1 x2 y2 x
    demo, y = torch.tensor([[0, 1]]), torch.tensor([[0.5, -1.0]])
    seq = bridge.write_sequences(tokens, demo, y, torch.tensor([7]), arrow=False)
    assert seq[0, :, D + 1:].argmax(-1).tolist() == [0, 1, 3, 1, 3, 1]  # bos token label token label token
    assert seq[0, 2, D] == 0.5 and seq[0, 4, D] == -1.0 and torch.equal(seq[0, 5, :D], tokens[7])
    assert seq[0, :, layout.flag("arrow")].sum() == 0
    padded = bridge.write_sequences(tokens, demo, y, torch.tensor([7]), n_shown=torch.tensor([1]), arrow=False)
    assert torch.equal(padded[0, :4], seq[0, [0, 1, 2, 5]]) and padded[0, 4:].abs().sum() == 0


def test_batch_without_arrows(dictionary):
    tokens, Z_all = dictionary
    batch = bridge.sample_sequences(tokens, Z_all, N, TAU, 5, _gen(1), shuffle=True, arrow=False)
    arrows = bridge.sample_sequences(tokens, Z_all, N, TAU, 5, _gen(1), shuffle=True)
    assert batch.inputs.shape[1] == 2 * N + 2 and not batch.arrow and batch.layout.arrow is False
    assert torch.equal(batch.lambda_hat, arrows.lambda_hat)  # the same prompts in another format
    assert torch.equal(batch.query_positions, torch.full((5,), 2 * N + 1))
    assert batch.bare_queries(tokens).shape == (5, 2, D + 5)
    assert torch.equal(batch.bare_queries(tokens)[:, 1], batch.inputs[:, -1])
    mixed = bridge.sample_sequences(tokens, Z_all, N, TAU, 40, _gen(2), arrow=False, min_demos=0)
    assert torch.equal(mixed.query_positions, 1 + 2 * mixed.n_shown)
    rows = torch.arange(40)
    assert torch.equal(mixed.inputs[rows, mixed.query_positions, :D], tokens[mixed.query_index])


def test_shuffled_order_breaks_the_fixed_linear_map(dictionary):
    """With shuffle, lambda_hat is not a fixed linear image of the labels in the order shown (the probe's control)."""
    tokens, Z_all = dictionary
    fixed = bridge.sample_sequences(tokens, Z_all, N, TAU, 400, _gen(3))
    shuffled = bridge.sample_sequences(tokens, Z_all, N, TAU, 400, _gen(3), shuffle=True)
    for batch, expected_exact in ((fixed, True), (shuffled, False)):
        X = batch.y.double()
        W = torch.linalg.lstsq(X, batch.lambda_hat).solution
        residual = float(((X @ W - batch.lambda_hat) ** 2).sum() / (batch.lambda_hat**2).sum())
        assert (residual < 1e-8) == expected_exact


# ------------------------------------------------------------------------------------------------ training
def test_training_without_arrows_and_with_tvp(dictionary):
    tokens, Z_all = dictionary
    model = _model(arrow=False)
    history = bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 4, 8, generator=_gen(4), arrow=False,
                                          shuffle=True, warmup=1, eval_every=2, n_eval=10, progress=False)
    assert history.config["arrow"] is False and np.isfinite(history.train_loss[1:]).all()
    model = _model()
    tvp = bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 4, 8, generator=_gen(4), tvp_block=1,
                                      tvp_weight=0.5, warmup=1, eval_every=2, n_eval=10, progress=False)
    assert tvp.config["tvp_block"] == 1 and np.isfinite(tvp.train_loss[1:]).all()
    with pytest.raises(ValueError, match="tvp_block"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 1, generator=_gen(4), tvp_block=2)
    with pytest.raises(ValueError, match="min_demos"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 1, generator=_gen(4), tvp_block=0, min_demos=0)
    with pytest.raises(ValueError, match="tvp_weight"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 1, generator=_gen(4), tvp_block=0, tvp_weight=-1)
    with pytest.raises(TypeError, match="arrow"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 1, generator=_gen(4), arrow=1)


def test_tvp_loss_is_the_patched_bare_query_error(dictionary):
    """The auxiliary term equals the squared error of Part II's patch (theta from [S, x'], replaced at block l),
    and its gradient reaches the blocks up to l through the extraction."""
    tokens, Z_all = dictionary
    model = _model(dtype=torch.float64)
    batch = bridge.sample_sequences(tokens.double(), Z_all, N, TAU, 6, _gen(5), shuffle=True)
    dummies = bridge.sample_dummy_queries(batch.query_index, N, K, 1, _gen(6))[:, 0]
    loss = _tvp_loss(model, batch, tokens.double(), dummies, 0)
    theta = bridge.sequence_task_vectors(model, [batch.with_queries(tokens.double(), dummies)])
    patched = bridge.sequence_patched_outputs(model, batch.bare_queries(tokens.double()), theta, layers=[0])[:, 0]
    assert float(loss.detach()) == pytest.approx(float(((patched - batch.targets[:, -1]) ** 2).mean()), rel=1e-10)
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ interventions
def test_attention_states_and_patch(dictionary):
    tokens, Z_all = dictionary
    model = _model(dtype=torch.float64)
    batch = bridge.sample_sequences(tokens.double(), Z_all, N, TAU, 5, _gen(7))
    states = bridge.attention_states(model, [batch.inputs, batch.inputs])
    assert states.shape == (5, 2, 8)
    # block 0's attention output is the residual after the attention sub-layer minus its input
    h0 = model.embed(batch.inputs)
    attn = model.blocks[0].attn(model.blocks[0].ln_attn(h0), model.attention_mask_for(h0.shape[1]),
                                torch.arange(h0.shape[1]))
    assert torch.allclose(states[:, 0], attn[:, -1], atol=1e-10)
    bare = batch.bare_queries(tokens.double())
    # writing the bare query's own attention output back changes nothing; adding zero neither
    own = bridge.attention_states(model, bare)
    plain = bridge.sequence_predictions(model, bare)
    assert torch.allclose(bridge.attention_patched_outputs(model, bare, own), plain[:, None].expand(-1, 2))
    assert torch.allclose(bridge.attention_patched_outputs(model, bare, torch.zeros(5, 1, 8), layers=[1],
                                                           mode="add")[:, 0], plain)
    assert not torch.allclose(bridge.attention_patched_outputs(model, bare, states)[:, 0], plain)
    with pytest.raises(ValueError, match="vectors"):
        bridge.attention_patched_outputs(model, bare, states[:, :1])
    with pytest.raises(ValueError, match="mode"):
        bridge.attention_patched_outputs(model, bare, states, mode="swap")
    with pytest.raises(TypeError, match="attention"):
        bridge.attention_states(torch.nn.Linear(2, 2), bare)


def test_head_contributions_add_up_and_learned_vector(dictionary):
    tokens, Z_all = dictionary
    model = _model(dtype=torch.float64)
    batch = bridge.sample_sequences(tokens.double(), Z_all, N, TAU, 5, _gen(8))
    heads = bridge.head_contributions(model, batch.inputs)
    assert heads.shape == (5, 2, 2, 8)
    bias = torch.stack([b.attn.proj.bias for b in model.blocks])  # (L, d)
    assert torch.allclose(heads.sum(2) + bias, bridge.attention_states(model, batch.inputs), atol=1e-10)
    bare = batch.bare_queries(tokens.double())
    plain = bridge.sequence_predictions(model, bare)
    zero = torch.zeros(2, 2, dtype=torch.float64)
    assert torch.allclose(bridge.learned_vector_outputs(model, bare, heads, zero), plain)
    # one weight at the last block: the read-out of the last state plus that head's contribution
    w = zero.clone()
    w[1, 0] = 2.0
    last = model.hidden_states(bare)[-1][:, -1]
    direct = model.readout(model.ln_final(last + 2.0 * heads[:, 1, 0]))[:, 0]
    assert torch.allclose(bridge.learned_vector_outputs(model, bare, heads, w), direct, atol=1e-10)
    with pytest.raises(ValueError, match="weights"):
        bridge.learned_vector_outputs(model, bare, heads, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="heads"):
        bridge.learned_vector_outputs(model, bare[:2], heads, zero)


def test_fit_learned_vector_reduces_the_error(dictionary):
    tokens, Z_all = dictionary
    model = _model(dtype=torch.float64)
    batch = bridge.sample_sequences(tokens.double(), Z_all, N, TAU, 64, _gen(9))
    heads = bridge.head_contributions(model, batch.inputs)
    bare = batch.bare_queries(tokens.double())
    targets = batch.targets[:, -1].double()
    weights, history = bridge.fit_learned_vector(model, bare, heads, targets, steps=40, lr=0.1, batch_size=64,
                                                 generator=_gen(10), eval_every=20)
    assert weights.shape == (2, 2) and history.step == [0, 20, 40]
    assert history.train_mse[-1] < history.train_mse[0]
    assert all(p.requires_grad for p in model.parameters())  # the model's weights are given back unfrozen
    with pytest.raises(ValueError, match="heads"):
        bridge.fit_learned_vector(model, bare, heads[:3], targets, generator=_gen(1))
    with pytest.raises(ValueError, match="lr"):
        bridge.fit_learned_vector(model, bare, heads, targets, lr=0.0, generator=_gen(1))


# ------------------------------------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("arrow", [True, False])
def test_evaluate_model(dictionary, arrow):
    tokens, Z_all = dictionary
    report = bridge.evaluate_model(_model(arrow=arrow), tokens, Z_all, N, TAU, arrow=arrow, n_dev=20, n_test=40,
                                   learned_steps=3)
    assert set(report.baselines) == set(bridge.emergence.BASELINES)
    assert all(isinstance(v, stats.Interval) for v in report.baselines.values())
    assert report.patched.shape == report.patched_dev.shape == report.dong.shape == report.own.shape == (2,)
    assert report.best.estimate == pytest.approx(report.patched[report.best_block])
    assert report.best_block == int(np.argmin(report.patched_dev))
    assert report.learned_weights.shape == (2, 2)
    assert set(report.probes) == {"target", "labels", "random image", "dummy answer"}
    assert report.n_test == 40 and report.n_dev == 20 and report.sample["ridge"].shape == (40,)
    assert set(report.against_ridge) == {"icl", "one_shot", "best"}
    assert set(report.controls) == {"best_other", "learned_other"}
    # an untrained model answers everything near 0: every error is near that of predicting 0
    assert abs(report.baselines["zero_shot"].estimate - 1) < 0.5
    with pytest.raises(ValueError, match="n_test"):
        bridge.evaluate_model(_model(), tokens, Z_all, N, TAU, n_test=5)
    with pytest.raises(ValueError, match="n_dummies"):
        bridge.evaluate_model(_model(), tokens, Z_all, N, TAU, n_dummies=K)


def test_relative_error():
    labels = torch.tensor([1.0, -1.0, 2.0])
    assert float(bridge.relative_error(torch.zeros(3), labels)) == pytest.approx(1.0)
    assert float(bridge.relative_error(labels, labels)) == 0.0
    assert bridge.relative_error(torch.zeros(3, 2), labels).shape == (2,)
    with pytest.raises(ValueError, match="rows"):
        bridge.relative_error(torch.zeros(2), labels)
