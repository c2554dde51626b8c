"""Tests of icllib.bridge: the closed-form task vector, the one-layer factorisation and swap, the sequence writer,
training of the causal model, and the task-vector adapter (theta extraction and patching)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from icllib import basis, bridge, kernels, prompts, train
from icllib.bridge.training import _arrow_loss
from icllib.models.causal import CausalTransformer

K, D, M, N, TAU = 16, 6, 3, 5, 0.2


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def dictionary():
    gen = _gen(0)
    tokens = basis.gaussian_dictionary(K, D, gen)
    Z_all = basis.GaussianLookupFeatures(tokens, M, gen)(tokens)
    return tokens, Z_all


# ------------------------------------------------------------------------------------------------ closed forms
def test_lambda_hat_is_ridge_with_m_tau(dictionary):
    _, Z_all = dictionary
    Z = Z_all[:, :N]
    y = torch.randn(4, N, generator=_gen(1), dtype=torch.float64)
    direct = torch.linalg.solve(Z @ Z.T + M * TAU * torch.eye(M, dtype=torch.float64), Z @ y.T).T
    assert torch.allclose(bridge.lambda_hat(Z, y, TAU), direct, atol=1e-12)
    R = bridge.ridge_encoder(Z, TAU)
    assert R.shape == (M, N)
    assert torch.allclose(y @ R.T, direct, atol=1e-12)
    # Theorem 2's prediction at unseen tokens = Z_Q^T lambda_hat
    ridge = kernels.ridge_predictions(Z_all, y, N, TAU)
    assert torch.allclose(ridge[:, N:], direct @ Z_all[:, N:], atol=1e-12)


def test_kernel_projector(dictionary):
    _, Z_all = dictionary
    Z = Z_all[:, :N]
    P = bridge.kernel_projector(Z)
    assert torch.allclose(P @ P, P, atol=1e-12) and torch.allclose(P, P.T, atol=1e-12)
    assert int(round(float(torch.trace(P)))) == N - M  # dim ker(Z) = N - rank Z
    assert torch.allclose(Z @ P, torch.zeros(M, N, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(bridge.ridge_encoder(Z, TAU) @ P, torch.zeros(M, N, dtype=torch.float64), atol=1e-12)


def test_target_factors_exactly_and_has_rank_m(dictionary):
    _, Z_all = dictionary
    A = kernels.target_matrix(Z_all, N, TAU)
    fac = bridge.factor_through_lambda_hat(A, Z_all, N, TAU)
    assert fac.decoder.shape == (K - N, M) and fac.rest.shape == (K - N, N)
    assert fac.decoder_error < 1e-10  # the target's decoder is Z_Q^T
    assert fac.rest_energy < 1e-20 and fac.relative_rest < 1e-9
    s = fac.singular_values
    assert s[M - 1] > 1e-3 and s[M] < 1e-12 * s[0]  # numerical rank m


def test_factorisation_identity_and_energy(dictionary):
    _, Z_all = dictionary
    A_tilde = torch.randn(N, K, generator=_gen(2), dtype=torch.float64)
    fac = bridge.factor_through_lambda_hat(A_tilde, Z_all, N, TAU)
    R = bridge.ridge_encoder(Z_all[:, :N], TAU)
    assert torch.allclose(fac.decoder @ R + fac.rest, A_tilde[:, N:].T, atol=1e-10)
    # rest_energy is E ||rest y||^2 over lambda ~ N(0, I) and the noise: compare with Monte Carlo
    batch = prompts.sample_prompts(Z_all, N, TAU, 40_000, _gen(3))
    mc = float(((batch.y @ fac.rest.T) ** 2).sum(-1).mean())
    assert mc == pytest.approx(fac.rest_energy, rel=0.05)
    assert fac.relative_rest > 0.1


def test_swap_predictions(dictionary):
    _, Z_all = dictionary
    A = kernels.target_matrix(Z_all, N, TAU)
    y_a = torch.randn(3, N, generator=_gen(4), dtype=torch.float64)
    y_b = torch.randn(3, N, generator=_gen(5), dtype=torch.float64)
    out = bridge.swap_predictions(A, Z_all, N, TAU, y_a, y_b)
    assert out.shape == (3, K)
    assert torch.allclose(out[:, :N], y_a, atol=1e-12)  # labelled tokens: the context's own labels are copied
    assert torch.allclose(out[:, N:], (y_b @ A)[:, N:], atol=1e-10)  # unseen tokens: the source prompt's answers
    # broadcasting: one source for all contexts
    assert bridge.swap_predictions(A, Z_all, N, TAU, y_a, y_b[0]).shape == (3, K)


def test_same_lambda_hat_labels(dictionary):
    _, Z_all = dictionary
    Z = Z_all[:, :N]
    y = torch.randn(4, N, generator=_gen(6), dtype=torch.float64)
    other = bridge.same_lambda_hat_labels(Z, y, _gen(7), scale=3.0)
    assert (other - y).abs().min() > 1e-6  # every label moved
    assert torch.allclose(bridge.lambda_hat(Z, other, TAU), bridge.lambda_hat(Z, y, TAU), atol=1e-10)


# ------------------------------------------------------------------------------------------------ sequences
def test_sequence_layout_and_writer(dictionary):
    tokens, _ = dictionary
    layout = bridge.SequenceLayout(D)
    assert layout.d_input == D + 5 and layout.length(N) == 3 * N + 3
    assert layout.predict_positions(2).tolist() == [2, 5, 8]
    demo = torch.tensor([[0, 1], [3, 2]])
    y = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    query = torch.tensor([7, 9])
    seq = bridge.write_sequences(tokens, demo, y, query)
    assert seq.shape == (2, 9, D + 5) and seq.dtype == tokens.dtype
    # [BOS] x_1 -> y_1 x_2 -> y_2 x ->
    flags = seq[:, :, D + 1:].argmax(-1)
    assert flags[0].tolist() == [0, 1, 2, 3, 1, 2, 3, 1, 2]
    assert torch.equal(seq[1, 1, :D], tokens[3]) and torch.equal(seq[1, 4, :D], tokens[2])
    assert torch.equal(seq[1, 7, :D], tokens[9])
    assert seq[0, 3, D] == 0.5 and seq[0, 6, D] == -1.0
    assert torch.all(seq[:, layout.predict_positions(2), :D + 1] == 0)  # arrows carry nothing but their flag
    assert torch.all(seq[:, [1, 4, 7], D] == 0)  # token positions have an empty label slot
    assert seq[:, :, D + 1:].sum(-1).eq(1).all()  # exactly one flag per position
    bare = bridge.write_sequences(tokens, demo[:, :0], y[:, :0], query)
    assert bare.shape == (2, 3, D + 5) and torch.equal(bare, seq[:, [0, 7, 8]])
    no_bos = bridge.write_sequences(tokens, demo, y, query, bos=False)
    assert torch.equal(no_bos, seq[:, 1:])


def test_sample_sequences(dictionary):
    tokens, Z_all = dictionary
    batch = bridge.sample_sequences(tokens, Z_all, N, TAU, 50, _gen(8))
    assert batch.inputs.shape == (50, 3 * N + 3, D + 5)
    assert torch.equal(batch.demo_index, torch.arange(N).expand(50, -1))
    assert ((batch.query_index >= N) & (batch.query_index < K)).all()
    assert torch.allclose(batch.targets[:, :N], batch.y) and torch.allclose(batch.y, batch.y_all[:, :N])
    assert torch.allclose(batch.targets[:, -1], batch.y_all.gather(1, batch.query_index[:, None])[:, 0])
    assert torch.allclose(batch.lambda_hat, bridge.lambda_hat(Z_all[:, :N], batch.y_all[:, :N], TAU))
    ridge_all = kernels.ridge_predictions(Z_all, batch.y_all[:, :N], N, TAU)
    assert torch.allclose(batch.ridge, ridge_all.gather(1, batch.query_index[:, None])[:, 0], atol=1e-10)
    # the labels in the sequence are the shown labels
    label_pos = 3 + 3 * torch.arange(N)
    assert torch.allclose(batch.inputs[:, label_pos, D], batch.y)
    shuffled = bridge.sample_sequences(tokens, Z_all, N, TAU, 50, _gen(8), shuffle=True)
    assert not torch.equal(shuffled.demo_index, batch.demo_index)
    assert torch.equal(shuffled.demo_index.sort(1).values, batch.demo_index)
    assert torch.allclose(shuffled.y, shuffled.y_all.gather(1, shuffled.demo_index))
    # same seed, same batch
    again = bridge.sample_sequences(tokens, Z_all, N, TAU, 50, _gen(8))
    assert torch.equal(again.inputs, batch.inputs)
    # with_queries / bare_queries
    other = batch.with_queries(tokens, torch.full((50,), K - 1))
    assert torch.equal(other[:, :-2], batch.inputs[:, :-2]) and torch.equal(other[:, -2, :D], tokens[-1].expand(50, -1))
    assert torch.equal(batch.bare_queries(tokens), batch.inputs[:, [0, -2, -1]])


def test_sample_sequences_with_fewer_demonstrations(dictionary):
    tokens, Z_all = dictionary
    short = bridge.sample_sequences(tokens, Z_all, N, TAU, 30, _gen(13), shuffle=True, n_demos=2)
    assert short.inputs.shape == (30, 3 * 2 + 3, D + 5) and short.targets.shape == (30, 3)
    # lambda_hat of the two shown tokens, prompt by prompt
    for i in range(3):
        Z_shown = Z_all[:, short.demo_index[i]]
        assert torch.allclose(short.lambda_hat[i], bridge.lambda_hat(Z_shown, short.y[i].double(), TAU), atol=1e-10)
    bare = bridge.sample_sequences(tokens, Z_all, N, TAU, 5, _gen(14), n_demos=0)
    assert bare.inputs.shape == (5, 3, D + 5) and torch.all(bare.lambda_hat == 0) and torch.all(bare.ridge == 0)
    exact = bridge.sample_sequences(tokens, Z_all, N, 0.0, 5, _gen(15), n_demos=M)  # tau = 0, N = m: interpolation
    assert torch.allclose(exact.lambda_hat, exact.lam, atol=1e-8)
    with pytest.raises(ValueError, match="n_demos"):
        bridge.sample_sequences(tokens, Z_all, N, TAU, 5, _gen(0), n_demos=N + 1)


def test_sample_sequences_of_several_lengths(dictionary):
    """min_demos: each prompt draws its own length, right-padded; arrows, targets and closed forms follow it."""
    tokens, Z_all = dictionary
    layout = bridge.SequenceLayout(D)
    fixed = bridge.sample_sequences(tokens, Z_all, N, TAU, 200, _gen(30))
    mixed = bridge.sample_sequences(tokens, Z_all, N, TAU, 200, _gen(30), min_demos=0)
    shown = mixed.n_shown
    assert fixed.n_shown is None and torch.equal(fixed.shown, torch.full((200,), N))
    assert shown.shape == (200,) and shown.min() == 0 and shown.max() == N  # every length occurs
    assert mixed.inputs.shape == fixed.inputs.shape == (200, layout.length(N), D + 5)
    # the same labels, order and queries as the fixed-length batch from the same generator state
    assert torch.equal(mixed.query_index, fixed.query_index) and torch.equal(mixed.y, fixed.y)
    assert torch.equal(mixed.query_positions, layout.predict_positions(N)[shown])
    assert torch.equal(fixed.query_positions, torch.full((200,), layout.length(N) - 1))
    for i in range(200):
        n, end = int(shown[i]), int(mixed.query_positions[i]) + 1
        alone = bridge.write_sequences(tokens, mixed.demo_index[i : i + 1, :n], mixed.y[i : i + 1, :n],
                                       mixed.query_index[i : i + 1])
        assert end == layout.length(n) and torch.equal(mixed.inputs[i, :end], alone[0])  # the unpadded prompt
        assert torch.all(mixed.inputs[i, end:] == 0)  # then padding
        assert torch.equal(mixed.arrow_mask[i], torch.arange(N + 1) <= n)
        assert mixed.targets[i, n] == mixed.targets.new_tensor(float(mixed.y_all[i, mixed.query_index[i]]))
        assert torch.equal(mixed.targets[i, :n], mixed.y[i, :n]) and torch.all(mixed.targets[i, n + 1 :] == 0)
        Z_shown = Z_all[:, mixed.demo_index[i, :n]]
        expected = (bridge.lambda_hat(Z_shown, mixed.y[i, :n].double(), TAU) if n
                    else torch.zeros(M, dtype=torch.float64))
        assert torch.allclose(mixed.lambda_hat[i], expected, atol=1e-10)
    # n = 0: the row begins with exactly the bare query [BOS] x -> that the protocol patches into
    bare_rows = torch.nonzero(shown == 0)[:, 0]
    bare = mixed.bare_queries(tokens)
    assert torch.equal(mixed.inputs[bare_rows, :3], bare[bare_rows])
    assert torch.all(mixed.ridge[bare_rows] == 0)
    # other queries keep each prompt's own length
    other = mixed.with_queries(tokens, torch.full((200,), K - 1))
    rows = torch.arange(200)
    assert torch.equal(other[rows, mixed.query_positions - 1, :D], tokens[K - 1].expand(200, -1))
    # a range inside 0..n_demos, and the writer's own checks
    narrow = bridge.sample_sequences(tokens, Z_all, N, TAU, 100, _gen(31), n_demos=3, min_demos=2)
    assert narrow.inputs.shape == (100, layout.length(3), D + 5) and set(narrow.n_shown.tolist()) == {2, 3}
    with pytest.raises(ValueError, match="min_demos"):
        bridge.sample_sequences(tokens, Z_all, N, TAU, 5, _gen(0), n_demos=2, min_demos=3)
    with pytest.raises(ValueError, match="min_demos"):
        bridge.sample_sequences(tokens, Z_all, N, TAU, 5, _gen(0), min_demos=-1)
    with pytest.raises(TypeError, match="n_shown"):
        bridge.write_sequences(tokens, mixed.demo_index, mixed.y, mixed.query_index, n_shown=shown.float())
    with pytest.raises(ValueError, match="n_shown"):
        bridge.write_sequences(tokens, mixed.demo_index, mixed.y, mixed.query_index, n_shown=shown[:5])
    with pytest.raises(ValueError, match="n_shown"):
        bridge.write_sequences(tokens, mixed.demo_index, mixed.y, mixed.query_index, n_shown=shown + N)


def test_variable_length_loss_scores_each_prompts_own_arrows(dictionary):
    """The training loss on a mixed batch: demonstration arrows before each query, the query arrow, no padding."""
    tokens, Z_all = dictionary
    batch = bridge.sample_sequences(tokens.float(), Z_all, N, TAU, 40, _gen(32), min_demos=0)
    out = torch.randn(40, N + 1, generator=_gen(33))
    out_padded = out.clone()
    out_padded[~batch.arrow_mask] = 1e6  # read-outs at padding arrows must not count
    w = 0.3
    loss = _arrow_loss(out_padded, batch, w)
    rows = torch.arange(40)
    sq = (out - batch.targets) ** 2
    query = sq[rows, batch.n_shown].mean()
    demo = torch.cat([sq[i, : int(batch.n_shown[i])] for i in range(40)]).mean()
    assert torch.allclose(loss, (1 - w) * demo + w * query)
    # all prompts of full length: the fixed-length loss
    full = bridge.sample_sequences(tokens.float(), Z_all, N, TAU, 40, _gen(32), min_demos=N)
    plain = bridge.sample_sequences(tokens.float(), Z_all, N, TAU, 40, _gen(32))
    assert torch.equal(full.inputs, plain.inputs)
    assert torch.allclose(_arrow_loss(out, full, w), _arrow_loss(out, plain, w))
    bare = bridge.sample_sequences(tokens.float(), Z_all, N, TAU, 8, _gen(34), n_demos=0, min_demos=0)
    assert torch.allclose(_arrow_loss(out[:8, :1], bare, w), w * ((out[:8, 0] - bare.targets[:, 0]) ** 2).mean())


def test_sample_dummy_queries():
    query = torch.tensor([5, 6, 7, 15])
    dummies = bridge.sample_dummy_queries(query, N, K, 2, _gen(9))
    assert dummies.shape == (4, 2)
    assert ((dummies >= N) & (dummies < K)).all()
    assert (dummies != query[:, None]).all() and (dummies[:, 0] != dummies[:, 1]).all()
    many = bridge.sample_dummy_queries(query, N, K, K - N - 1, _gen(9))
    assert (many != query[:, None]).all()


# ------------------------------------------------------------------------------------------------ training
def _small_model(dictionary, seed: int = 0) -> CausalTransformer:
    tokens, _ = dictionary
    layout = bridge.SequenceLayout(D)
    return CausalTransformer(layout.d_input, layout.length(N), d_model=16, n_layers=2, n_heads=2, d_ff=32,
                             generator=_gen(seed))


def test_training_decreases_the_loss():
    """m = 1, tau = 0: every label is a fixed multiple of the first, learnable in a few dozen steps."""
    gen = _gen(20)
    tokens = basis.gaussian_dictionary(K, D, gen)
    Z_all = basis.GaussianLookupFeatures(tokens, 1, gen)(tokens)
    layout = bridge.SequenceLayout(D)
    model = CausalTransformer(layout.d_input, layout.length(N), d_model=16, n_layers=2, n_heads=2, d_ff=32,
                              generator=_gen(0))
    history = bridge.train_sequence_model(model, tokens.float(), Z_all, N, 0.0, steps=60, batch_size=32, lr=1e-2,
                                          generator=_gen(1), warmup=5, eval_every=30, n_eval=200, progress=False)
    assert history.step == [0, 30, 60]
    assert isinstance(history, train.TrainingHistory) and history.method == "causal transformer"  # the one loop's
    assert history.step_time_s > 0 and history.stop_reason == "steps" and math.isnan(history.train_loss[0])
    assert history.train_loss[-1] < 0.85 * history.train_loss[1]
    assert history.ridge_floor < 1e-10 < history.zero_mse  # tau = 0: ridge is exact
    assert not model.training
    assert history.config["min_demos"] is None
    assert len(history.bare_mse) == 3 and all(np.isfinite(history.bare_mse))
    # variable prompt lengths, down to the bare query
    short = bridge.train_sequence_model(model, tokens.float(), Z_all, N, 0.0, steps=4, batch_size=8,
                                        generator=_gen(2), min_demos=0, warmup=1, eval_every=2, n_eval=20,
                                        progress=False)
    assert np.isfinite(short.train_loss[1:]).all() and short.config["min_demos"] == 0
    with pytest.raises(ValueError, match="min_demos"):
        bridge.train_sequence_model(model, tokens.float(), Z_all, N, 0.0, steps=1, generator=_gen(2), min_demos=N + 1)


# ------------------------------------------------------------------------------------------------ task vectors
def test_task_vectors_and_patching(dictionary):
    tokens, Z_all = dictionary
    model = _small_model(dictionary).eval()
    tokens32 = tokens.float()
    batch = bridge.sample_sequences(tokens32, Z_all, N, TAU, 6, _gen(11))
    dummies = bridge.sample_dummy_queries(batch.query_index, N, K, 2, _gen(12))
    inputs = [batch.with_queries(tokens32, dummies[:, j]) for j in range(2)]
    theta = bridge.sequence_task_vectors(model, inputs)
    assert theta.shape == (6, 2, 16)
    # theta_l is the mean over dummies of the last-position state after block l
    states = [model.hidden_states(x)[1:, :, -1].transpose(0, 1) for x in inputs]  # (n, L, d)
    assert torch.allclose(theta, (states[0] + states[1]) / 2, atol=1e-5)
    assert torch.allclose(bridge.sequence_task_vectors(model, torch.stack(inputs)), theta)
    bare = batch.bare_queries(tokens32)
    # patching the last block's own state back in changes nothing
    own = model.hidden_states(bare)[1:, :, -1].transpose(0, 1)
    same = bridge.sequence_patched_outputs(model, bare, own)
    plain = bridge.sequence_predictions(model, bare)
    assert same.shape == (6, 2) and torch.allclose(same, plain[:, None].expand(-1, 2), atol=1e-5)
    # patching at the last block: the read-out of theta itself, whatever the query
    patched = bridge.sequence_patched_outputs(model, bare, theta, layers=[1])
    direct = model.readout(model.ln_final(theta[:, 1]))[:, 0]
    assert torch.allclose(patched[:, 0], direct, atol=1e-5)
    # chunked rows give the same numbers
    assert torch.allclose(bridge.sequence_patched_outputs(model, bare, theta, max_rows=3),
                          bridge.sequence_patched_outputs(model, bare, theta), atol=1e-6)
    sweep = bridge.layer_sweep(model, tokens32, batch, dummies)
    assert sweep.patched.shape == (6, 2) and torch.allclose(sweep.theta, theta, atol=1e-6)
    assert torch.allclose(sweep.icl, bridge.sequence_predictions(model, batch.inputs))
    assert sweep.patched_error.shape == (2,) and 0 <= sweep.best_layer < 2
    assert sweep.error(torch.zeros(6, dtype=torch.float64)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs(dictionary):
    tokens, Z_all = dictionary
    Z = Z_all[:, :N]
    y = torch.zeros(2, N, dtype=torch.float64)
    with pytest.raises(ValueError, match="tau"):
        bridge.lambda_hat(Z, y, -1.0)
    with pytest.raises(ValueError, match="y"):
        bridge.lambda_hat(Z, torch.zeros(2, N + 1, dtype=torch.float64), TAU)
    with pytest.raises(TypeError, match="Z"):
        bridge.ridge_encoder([[1.0]], TAU)
    with pytest.raises(ValueError, match="A_tilde"):
        bridge.factor_through_lambda_hat(torch.zeros(N, K - 1, dtype=torch.float64), Z_all, N, TAU)
    with pytest.raises(ValueError, match="n_labeled"):
        bridge.factor_through_lambda_hat(torch.zeros(N, K, dtype=torch.float64), Z_all, K, TAU)
    with pytest.raises(ValueError, match="y_source"):
        bridge.swap_predictions(torch.zeros(N, K, dtype=torch.float64), Z_all, N, TAU, y, y[:, :2])
    with pytest.raises(TypeError, match="generator"):
        bridge.same_lambda_hat_labels(Z, y, 0)
    with pytest.raises(ValueError, match="d_token"):
        bridge.SequenceLayout(0)
    with pytest.raises(TypeError, match="bos"):
        bridge.SequenceLayout(3, bos=1)
    with pytest.raises(ValueError, match="name"):
        bridge.SequenceLayout(3).flag("query")
    demo = torch.tensor([[0, 1]])
    with pytest.raises(ValueError, match="demo_index"):
        bridge.write_sequences(tokens, torch.tensor([[0, K]]), torch.zeros(1, 2), torch.tensor([3]))
    with pytest.raises(TypeError, match="demo_index"):
        bridge.write_sequences(tokens, demo.float(), torch.zeros(1, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match="y"):
        bridge.write_sequences(tokens, demo, torch.zeros(1, 3), torch.tensor([3]))
    with pytest.raises(ValueError, match="query_index"):
        bridge.write_sequences(tokens, demo, torch.zeros(1, 2), torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="same K"):
        bridge.sample_sequences(tokens[:-1], Z_all, N, TAU, 2, _gen(0))
    with pytest.raises(ValueError, match="n_labeled"):
        bridge.sample_sequences(tokens, Z_all, K, TAU, 2, _gen(0))
    with pytest.raises(TypeError, match="shuffle"):
        bridge.sample_sequences(tokens, Z_all, N, TAU, 2, _gen(0), shuffle="yes")
    with pytest.raises(ValueError, match="distribution"):
        bridge.sample_sequences(tokens, Z_all, N, TAU, 2, _gen(0), distribution="wide")
    with pytest.raises(TypeError, match="bos"):
        bridge.write_sequences(tokens, demo, torch.zeros(1, 2), torch.tensor([3]), bos=None)
    with pytest.raises(ValueError, match="tau"):
        bridge.swap_predictions(torch.zeros(N, K, dtype=torch.float64), Z_all, N, -TAU, y, y)
    with pytest.raises(ValueError, match="n_dummies"):
        bridge.sample_dummy_queries(torch.tensor([N]), N, K, K - N, _gen(0))
    model = _small_model(dictionary)
    with pytest.raises(ValueError, match="d_input"):
        bridge.train_sequence_model(model, tokens[:, :2], Z_all, N, TAU, 1, generator=_gen(0), progress=False)
    with pytest.raises(ValueError, match="query_weight"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 1, generator=_gen(0), query_weight=2.0)
    with pytest.raises(TypeError, match="model"):
        bridge.train_sequence_model("model", tokens, Z_all, N, TAU, 1, generator=_gen(0))
    with pytest.raises(ValueError, match="steps"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, -1, generator=_gen(0))
    with pytest.raises(ValueError, match="eval_every"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 1, generator=_gen(0), eval_every=0)
    with pytest.raises(TypeError, match="shuffle"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 1, generator=_gen(0), shuffle=1)
    with pytest.raises(TypeError, match="bos"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 1, generator=_gen(0), bos="yes")
    with pytest.raises(TypeError, match="generator"):
        bridge.train_sequence_model(model, tokens, Z_all, N, TAU, 1, generator=None)
    with pytest.raises(ValueError, match="dummy_inputs"):
        bridge.sequence_task_vectors(model, [])
    bare = torch.zeros(2, 3, D + 5)
    with pytest.raises(ValueError, match="theta"):
        bridge.sequence_patched_outputs(model, bare, torch.zeros(3, 2, 16))
    with pytest.raises(ValueError, match="layer"):
        bridge.sequence_patched_outputs(model, bare, torch.zeros(2, 1, 16), layers=[5])
    with pytest.raises(ValueError, match="layers"):
        bridge.sequence_patched_outputs(model, bare, torch.zeros(2, 2, 16), layers=[1, 1])
    batch = bridge.sample_sequences(tokens.float(), Z_all, N, TAU, 2, _gen(0))
    with pytest.raises(ValueError, match="dummy_index"):
        bridge.layer_sweep(model, tokens, batch, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="batch"):
        bridge.layer_sweep(model, tokens, "batch", torch.zeros(2, 2, dtype=torch.long))
