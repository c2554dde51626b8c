"""Tests of icllib.models.multilayer: shapes, who-attends-to-whom, gradients, dtypes, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from icllib import basis, train
from icllib.models.multilayer import Block, MultiLayerTransformer, TransformerConfig, causal_mask, multi_head_attention

K, D, N = 12, 5, 4
SIZES = dict(d_model=16, n_layers=2, n_heads=4, d_ff=24)


def _tokens(seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    tokens = torch.randn(K, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (tokens / tokens.norm(dim=1, keepdim=True)).to(dtype)


def _model(tokens=None, seed: int = 1, **kwargs) -> MultiLayerTransformer:
    sizes = {**SIZES, **kwargs}
    tokens = _tokens() if tokens is None else tokens
    return MultiLayerTransformer(tokens, N, generator=torch.Generator().manual_seed(seed), **sizes)


def _labels(*shape, seed: int = 2, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_output_shape(batch):
    model = _model()
    out = model(_labels(*batch, N))
    assert out.shape == (*batch, K)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_columns_are_prompt_then_queries():
    model = _model()
    y = _labels(3, N)
    E = model.columns(y)
    assert E.shape == (3, N + K, D + 1)
    torch.testing.assert_close(E[:, :N, :D], model.tokens[:N].expand(3, -1, -1))
    torch.testing.assert_close(E[:, :N, D], y)
    torch.testing.assert_close(E[:, N:, :D], model.tokens.expand(3, -1, -1))
    assert (E[:, N:, D] == 0).all()


def test_batch_entries_are_independent():
    model = _model()
    y = _labels(5, N)
    together = model(y)
    alone = torch.stack([model(row) for row in y])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_n_labeled_equal_to_dictionary_size_is_allowed():
    model = MultiLayerTransformer(_tokens(), K, generator=torch.Generator().manual_seed(0), **SIZES)
    assert model(_labels(2, K)).shape == (2, K)


# ------------------------------------------------------------------------------------------- who sees whom
def test_every_prediction_depends_on_every_prompt_label():
    model = _model()
    y = _labels(N)
    base = model(y)
    for j in range(N):
        changed = y.clone()
        changed[j] += 1.0
        # Every query reads every prompt column, so each of the K predictions moves.
        assert ((model(changed) - base).abs() > 1e-7).all(), f"changing y_{j} left some prediction unchanged"


def test_permuting_other_queries_does_not_change_a_prediction():
    tokens = _tokens()
    perm = torch.cat([torch.arange(N), N + torch.randperm(K - N, generator=torch.Generator().manual_seed(3))])
    model, permuted = _model(tokens), _model(tokens[perm])  # same seed: same weights, queries in another order
    y = _labels(4, N)
    torch.testing.assert_close(permuted(y), model(y)[:, perm], rtol=1e-5, atol=1e-6)


def test_removing_other_queries_does_not_change_a_prediction():
    tokens = _tokens()
    keep = N + 3
    model, smaller = _model(tokens), _model(tokens[:keep])  # a dictionary with fewer unlabelled tokens
    y = _labels(4, N)
    torch.testing.assert_close(smaller(y), model(y)[:, :keep], rtol=1e-5, atol=1e-6)


def test_prompt_order_does_not_matter_without_positions():
    # No positional embedding: permuting the labelled tokens together with their labels permutes nothing else.
    tokens = _tokens()
    perm = torch.cat([torch.randperm(N, generator=torch.Generator().manual_seed(4)), torch.arange(N, K)])
    model, permuted = _model(tokens), _model(tokens[perm])
    y = _labels(3, N)
    torch.testing.assert_close(permuted(y[:, perm[:N]]), model(y)[:, perm], rtol=1e-5, atol=1e-6)


def test_keys_from_prompt_equal_the_dense_mask():
    # The model's attention to the first N positions is the dense attention with mask M[i, j] = (j < N).
    model = _model()
    y = _labels(3, N)
    mask = torch.zeros(N + K, N + K, dtype=torch.bool)
    mask[:, :N] = True
    x = model.embed(model.columns(y)) + torch.cat([model.role[:1].expand(N, -1), model.role[1:].expand(K, -1)])
    for block in model.blocks:
        x = block(x, attn_mask=mask)
    dense = model.readout(model.ln_final(x[:, N:])).squeeze(-1)
    torch.testing.assert_close(model(y), dense, rtol=1e-5, atol=1e-6)


def test_block_with_causal_mask_is_causal():
    block = Block(TransformerConfig(d_model=16, n_heads=4, d_ff=32))
    x = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(5))
    later = x.clone()
    later[:, 4:] += 1.0
    mask = causal_mask(7)
    out, out_later = block(x, attn_mask=mask), block(later, attn_mask=mask)
    torch.testing.assert_close(out[:, :4], out_later[:, :4])
    assert not torch.allclose(out[:, 4:], out_later[:, 4:])
    assert torch.equal(mask, torch.tril(torch.ones(7, 7, dtype=torch.bool)))


# ----------------------------------------------------------------------------------------------- gradients
def test_gradients_reach_every_parameter():
    model = _model()
    y = _labels(8, N)
    target = _labels(8, K, seed=6)
    ((model(y) - target) ** 2).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_input_gradient_matches_finite_differences():
    model = _model().double()
    y = _labels(N, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda labels: model(labels).sum(), (y,))


def test_a_few_adam_steps_fit_a_fixed_batch():
    model = _model()
    y = _labels(16, N)
    target = y @ _labels(N, K, seed=7) / N**0.5  # a map the model can learn: linear in the labels
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = ((model(y) - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


# ---------------------------------------------------------------------------------------- dtypes and seeds
def test_float64_model_matches_float32_model():
    y = _labels(3, N, dtype=torch.float64)
    m32 = _model()
    m64 = MultiLayerTransformer(_tokens(), N, generator=torch.Generator().manual_seed(1), dtype=torch.float64, **SIZES)
    out32, out64 = m32(y), m64(y)
    assert out32.dtype == torch.float32  # a float64 input is converted to the parameters' dtype
    assert out64.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in m64.parameters()) and m64.tokens.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-4, atol=1e-5)


def test_numpy_inputs_are_accepted():
    model = _model()
    tokens = _tokens().numpy()
    from_numpy = MultiLayerTransformer(tokens, N, generator=torch.Generator().manual_seed(1), **SIZES)
    y = _labels(2, N)
    torch.testing.assert_close(from_numpy(y.numpy().astype(np.float64)), model(y))


def test_initialisation_uses_only_the_generator():
    state = torch.get_rng_state()
    first, second = _model(seed=11), _model(seed=11)
    assert torch.equal(torch.get_rng_state(), state), "building a model advanced the global RNG"
    for (name, p), (_, q) in zip(first.named_parameters(), second.named_parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(first.embed.weight, _model(seed=12).embed.weight)


def test_dropout_is_off_in_eval_mode():
    model = _model(dropout=0.5)
    y = _labels(3, N)
    model.eval()
    torch.testing.assert_close(model(y), model(y))
    model.train()
    assert not torch.allclose(model(y), model(y))


# ------------------------------------------------------------------------------------------------- flops
@pytest.mark.parametrize("n_heads", [1, 4, 16])
def test_forward_flops_counts_the_matrix_products(n_heads):
    model = _model(n_heads=n_heads)
    with FlopCounterMode(display=False) as counter:
        model(_labels(1, N))
    # The counter sees the linear layers; the two attention products (scores, weighted sum) are added by hand.
    attention = model.config.n_layers * 2 * 2 * (N + K) * N * model.config.d_model
    assert counter.get_total_flops() + attention == model.forward_flops()
    assert model.forward_flops() == _model(n_heads=2).forward_flops()  # the count does not depend on H


# --------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tokens=torch.ones(K, D, dtype=torch.int64)), TypeError, "tokens"),
        (dict(tokens=torch.ones(K)), ValueError, "tokens"),
        (dict(tokens=[[0.0, 1.0]]), TypeError, "tokens"),
        (dict(n_labeled=0), ValueError, "n_labeled"),
        (dict(n_labeled=K + 1), ValueError, "n_labeled"),
        (dict(n_labeled=2.0), TypeError, "n_labeled"),
        (dict(n_labeled=True), TypeError, "n_labeled"),
        (dict(d_model=16, n_heads=3), ValueError, "n_heads must divide d_model"),
        (dict(d_model=0), ValueError, "d_model"),
        (dict(n_layers=0), ValueError, "n_layers"),
        (dict(n_heads=0), ValueError, "n_heads"),
        (dict(d_ff=0), ValueError, "d_ff"),
        (dict(dropout=1.0), ValueError, "dropout"),
        (dict(dropout=-0.1), ValueError, "dropout"),
        (dict(generator=None), TypeError, "generator"),
        (dict(generator=0), TypeError, "generator"),
        (dict(dtype=torch.float16), TypeError, "dtype"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    args = dict(tokens=_tokens(), n_labeled=N, generator=torch.Generator().manual_seed(0), **SIZES)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        MultiLayerTransformer(**args)


@pytest.mark.parametrize(
    "y, error, match",
    [
        (torch.ones(3, N + 1), ValueError, "n_labeled"),
        (torch.ones(()), ValueError, "y must have shape"),
        (torch.ones(3, N, dtype=torch.int64), TypeError, "y must be a float32 or float64"),
        (torch.full((3, N), float("nan")), ValueError, "NaN"),
        ([1.0] * N, TypeError, "y must be"),
    ],
)
def test_bad_labels(y, error, match):
    with pytest.raises(error, match=match):
        _model()(y)


@pytest.mark.parametrize(
    "mask, error, match",
    [
        (torch.ones(7, 7), TypeError, "boolean"),
        (torch.ones(7, 6, dtype=torch.bool), ValueError, r"\(L, S\)"),
        (torch.zeros(7, 7, dtype=torch.bool), ValueError, "all False"),
    ],
)
def test_bad_attention_masks(mask, error, match):
    block = Block(TransformerConfig(d_model=16, n_heads=4, d_ff=32))
    with pytest.raises(error, match=match):
        block(torch.zeros(1, 7, 16), attn_mask=mask)


def test_bad_causal_mask_length():
    with pytest.raises(ValueError, match="length"):
        causal_mask(0)


def test_trains_with_the_library_loop():
    # The calling convention train_adam_monte_carlo relies on: n_labeled, n_tokens, model(y (B, N)) -> (B, K).
    gen = torch.Generator().manual_seed(8)
    tokens = _tokens()
    Z_all = basis.GaussianLookupFeatures(tokens, 3, gen)(tokens)
    history = train.train_adam_monte_carlo(
        _model(tokens), Z_all, 0.1, steps=4, n_train_prompts=32, batch_size=8, lr=1e-3, generator=gen,
        eval_every=2, progress=False,
    )
    assert history.step == [0, 2, 4]
    assert np.isfinite(history.in_domain).all() and np.isfinite(history.train_loss).all()


def test_multi_head_attention_is_softmax_attention_per_head():
    """The shared head arithmetic: per head h, softmax(q_h k_h^T / sqrt(d_h) + mask) v_h, heads side by side."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, length, 8, generator=gen, dtype=torch.float64) for length in (5, 3, 3))
    mask = torch.rand(5, 3, generator=gen) < 0.7
    mask[:, 0] = True  # every query keeps a key
    out = multi_head_attention(q, k, v, 2, mask)
    assert out.shape == (2, 5, 8)
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / 2.0  # sqrt(head_dim = 4)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        assert torch.allclose(out[..., cols], weights @ v[..., cols], atol=1e-12)
    # a transform of the split queries and keys is applied before the scores
    flipped = multi_head_attention(q, k, v, 2, mask, rotate_qk=lambda a, b: (-a, -b))
    assert torch.allclose(flipped, out, atol=1e-12)  # (-q)(-k)^T = q k^T


def test_attention_numerics_unchanged_by_the_shared_helper():
    """Attention through multi_head_attention gives bit-for-bit the numbers of the inline computation it replaced."""
    config = TransformerConfig(16, 1, 4, 32)
    block = Block(config)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for param in block.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    x = torch.randn(3, 7, 16, generator=gen)
    attn = block.attn
    for mask, n_keys in ((None, None), (causal_mask(7), None), (None, 4)):
        keys = 7 if n_keys is None else n_keys
        q = attn.query(x).view(3, 7, 4, 4).transpose(1, 2)
        k, v = attn.key_value(x[:, :keys]).split(16, dim=-1)
        k, v = (t.reshape(3, keys, 4, 4).transpose(1, 2) for t in (k, v))
        inline = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        inline = attn.proj(inline.transpose(1, 2).reshape(3, 7, 16))
        assert torch.equal(attn(x, attn_mask=mask, n_keys=n_keys), inline)
