"""Tests of icllib.models.causal: shapes, causality, padding, model parts, determinism, bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from icllib.llm import ModelParts, model_parts
from icllib.models.causal import CausalTransformer, rotary_tables, rotate
from icllib.models.multilayer import MultiLayerTransformer, gpt2_init

D_IN, T = 7, 9
SIZES = dict(d_model=16, n_layers=3, n_heads=4, d_ff=32)


def _model(seed: int = 0, **kwargs) -> CausalTransformer:
    return CausalTransformer(D_IN, 12, generator=torch.Generator().manual_seed(seed), **{**SIZES, **kwargs})


def _inputs(batch: int = 3, length: int = T, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(batch, length, D_IN, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_output_shape_and_dtype():
    model = _model(positions="learned")
    assert model(_inputs()).shape == (3, T, 1)
    model = _model()
    out = model(_inputs())
    assert out.shape == (3, T, 1) and out.dtype == torch.float32
    wide = _model(d_output=2)(_inputs())
    assert wide.shape == (3, T, 2)
    assert _model(dtype=torch.float64)(_inputs()).dtype == torch.float64


def test_causality_later_inputs_do_not_change_earlier_outputs():
    model = _model()
    x = _inputs()
    changed = x.clone()
    changed[:, 5:] += 10 * torch.randn(3, T - 5, D_IN, generator=torch.Generator().manual_seed(9))
    out, out_changed = model(x), model(changed)
    assert torch.allclose(out[:, :5], out_changed[:, :5], atol=1e-6)
    assert not torch.allclose(out[:, 5:], out_changed[:, 5:], atol=1e-3)  # and the later ones do change


def test_causality_by_gradient():
    """d out_t / d u_s = 0 for s > t, nonzero for s <= t (checked for every t through autograd)."""
    model = _model(dtype=torch.float64)
    x = _inputs(batch=1, length=5, dtype=torch.float64).requires_grad_(True)
    out = model(x)[0, :, 0]
    for t in range(5):
        (grad,) = torch.autograd.grad(out[t], x, retain_graph=True)
        per_position = grad[0].abs().sum(-1)
        assert torch.all(per_position[t + 1:] == 0)
        assert torch.all(per_position[: t + 1] > 0)


def test_rotary_positions_are_relative():
    """Shifting every position by the same amount changes nothing with rotary positions, and does with learned."""
    x = _inputs(length=5)
    shift = torch.arange(5) + 6
    rotary = _model()
    assert torch.allclose(rotary(x), rotary(x, position_ids=shift), atol=1e-5)
    learned = _model(positions="learned")
    with torch.no_grad():
        learned.position_table.normal_(0, 1, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(learned(x), learned(x, position_ids=shift), atol=1e-3)


def test_rotate_preserves_norms_and_depends_on_offsets():
    q = torch.randn(1, 1, 4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = torch.randn(1, 1, 4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pos = torch.tensor([0, 3, 5, 9])
    rq = rotate(q, pos)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1))
    scores = rotate(q, pos) @ rotate(k, pos).transpose(-1, -2)
    shifted = rotate(q, pos + 7) @ rotate(k, pos + 7).transpose(-1, -2)
    assert torch.allclose(scores, shifted, atol=1e-10)


def test_prefix_consistency():
    """Running a prefix alone gives the same outputs as the prefix inside a longer sequence."""
    model = _model()
    x = _inputs()
    assert torch.allclose(model(x[:, :4]), model(x)[:, :4], atol=1e-6)


def test_left_padding_matches_unpadded():
    model = _model()
    x = _inputs(batch=1, length=5)
    padded = torch.cat([torch.zeros(1, 3, D_IN), x], dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    out = model(padded, attention_mask=mask)
    assert torch.allclose(out[:, 3:], model(x), atol=1e-5)


def test_hidden_states_match_forward():
    model = _model()
    x = _inputs()
    states = model.hidden_states(x)
    assert states.shape == (SIZES["n_layers"] + 1, 3, T, SIZES["d_model"])
    assert torch.allclose(model.readout(model.ln_final(states[-1])), model(x), atol=1e-6)


def test_model_parts_for_task_vector_code():
    model = _model()
    parts = model_parts(model)
    assert isinstance(parts, ModelParts)
    assert parts.n_layers == SIZES["n_layers"] and parts.hidden_size == SIZES["d_model"]
    # the keywords icllib.llm.forward_last passes to a non-Hugging-Face model
    x = _inputs()
    out = model(x, attention_mask=torch.ones(3, T, dtype=torch.long), position_ids=torch.arange(T).expand(3, -1))
    assert torch.allclose(out, model(x), atol=1e-6)


def test_deterministic_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, b = _model(seed=3), _model(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name
    c = _model(seed=4)
    assert not torch.equal(a.embed.weight, c.embed.weight)


def test_gradients_reach_every_parameter():
    model = _model()
    model(_inputs()).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ------------------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(d_input=0), ValueError, "d_input"),
        (dict(d_input=2.5), TypeError, "d_input"),
        (dict(max_len=0), ValueError, "max_len"),
        (dict(d_output=0), ValueError, "d_output"),
        (dict(n_heads=3), ValueError, "n_heads"),
        (dict(generator=0), TypeError, "generator"),
        (dict(dtype=torch.int64), TypeError, "dtype"),
        (dict(positions="absolute"), ValueError, "positions"),
        (dict(rotary_base=0.5), ValueError, "rotary_base"),
        (dict(d_model=12, n_heads=4), ValueError, "even"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    args = dict(d_input=D_IN, max_len=12, generator=torch.Generator().manual_seed(0), **SIZES)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        CausalTransformer(**args)


def test_forward_rejects_bad_inputs():
    model = _model()
    with pytest.raises(ValueError, match="inputs"):
        model(torch.randn(3, T, D_IN + 1))
    with pytest.raises(ValueError, match="inputs"):
        model(torch.randn(T, D_IN))
    with pytest.raises(TypeError, match="inputs"):
        model(torch.ones(3, T, D_IN, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len"):
        model(torch.randn(1, 13, D_IN))
    with pytest.raises(ValueError, match="attention_mask"):
        model(_inputs(), attention_mask=torch.ones(3, T + 1))
    with pytest.raises(ValueError, match="position_ids"):
        model(_inputs(), position_ids=torch.arange(T) + 10)
    with pytest.raises(TypeError, match="position_ids"):
        model(_inputs(), position_ids=torch.arange(T, dtype=torch.float32))


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_attention_numerics_unchanged_by_the_shared_helper(positions):
    """CausalSelfAttention through multi_head_attention gives bit-for-bit the inline computation it replaced."""
    model = _model(positions=positions, rotary_base=30.0)
    attn = model.blocks[1].attn
    x = torch.randn(2, T, 16, generator=torch.Generator().manual_seed(7))
    mask = model.attention_mask_for(T)
    position_ids = torch.arange(T)
    q, k, v = (t.view(2, T, 4, 4).transpose(1, 2) for t in attn.qkv(x).split(16, dim=-1))
    if positions == "rotary":
        q, k = rotate(q, position_ids, 30.0), rotate(k, position_ids, 30.0)
    inline = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    inline = attn.proj(inline.transpose(1, 2).reshape(2, T, 16))
    assert torch.equal(attn(x, mask, position_ids), inline)
    if positions == "rotary":  # the tables computed once per forward give the same numbers
        tables = rotary_tables(position_ids, 4, 30.0, x.dtype)
        assert torch.equal(attn(x, mask, tables), inline)


def test_both_transformers_share_gpt2_init():
    """The causal and the Part I transformer draw their weights with the one initialisation, gpt2_init."""
    tokens = torch.randn(6, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for model in (_model(seed=3), MultiLayerTransformer(tokens, 2, **SIZES, generator=torch.Generator().manual_seed(3))):
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        gpt2_init(model, SIZES["n_layers"], torch.Generator().manual_seed(3))
        for name, param in model.named_parameters():
            assert torch.equal(param, before[name]), name
        params = {name: p.detach() for name, p in model.named_parameters()}
        assert all(torch.all(p == 0) for n, p in params.items() if n.endswith("bias"))
        assert all(torch.all(p == 1) for n, p in params.items() if "ln_" in n and n.endswith("weight"))
        assert float(params["blocks.0.mlp.down.weight"].std()) < 0.02 / 2  # shrunk by 1/sqrt(2 n_layers)
