"""Tests of icllib.function_vectors: the projections per architecture, head edits, the three mediation passes,
the function vector, its addition and generation, the evaluation, the nnsight versions, bad inputs."""

from __future__ import annotations

import importlib.util
import string
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from icllib import function_vectors as fv
from icllib import llm, testing
from icllib import task_vectors as tv

ARCHS = ["llama", "gpt_neox", "gptj", "gpt2"]
PROJECTIONS = {"llama": "o_proj", "gpt_neox": "dense", "gptj": "out_proj", "gpt2": "c_proj"}
LETTERS = [(c, chr(ord(c) + 1)) for c in string.ascii_lowercase[:-1]]  # next_letter, 25 pairs
PROMPTS = ["example:a-> b\nexample:c->", "example:k->", "example:q-> r\nexample:x-> y\nexample:m->"]
ANSWERS = ["d", "l", "n"]


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    model = testing.tiny_random_model(request.param, n_layers=3, seed=2)
    model.arch = request.param
    return model


@pytest.fixture(scope="module")
def tok():
    return testing.CharTokenizer()


def _means(model, tok, scale=30.0):
    """Mean head activations over PROMPTS, scaled so that a patch moves the tiny model's probabilities visibly."""
    return fv.head_activations(model, tok, PROMPTS).mean(0) * scale


# ----------------------------------------------------------------------------------------------------------------
# The projections and the head edits
# ----------------------------------------------------------------------------------------------------------------
def test_attention_outputs_per_architecture(tiny):
    outputs = fv.attention_outputs(tiny)
    assert outputs.n_layers == 3 and outputs.n_heads == 4 and outputs.head_dim == 8
    assert all(name.endswith(PROJECTIONS[tiny.arch]) for name in outputs.names)
    assert all(name.split(".")[-3] == str(l) or name.split(".")[-4] == str(l) for l, name in enumerate(outputs.names))
    modules = dict(tiny.named_modules())
    assert all(modules[name] is proj for name, proj in zip(outputs.names, outputs.projections))


def test_attention_outputs_rejects_models_without_attention():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Linear(8, 8)

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block()])
            self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 5)

        def model_parts(self):
            return llm.ModelParts(self.blocks, self.norm, self.head)

    with pytest.raises(ValueError, match="no attention submodule"):
        fv.attention_outputs(Plain())
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fv.attention_outputs("gpt2")


def test_head_activations_shape_and_states(tiny, tok):
    heads, states = fv.head_activations(tiny, tok, PROMPTS, with_states=True, batch_size=2)
    assert heads.shape == (3, 3, 4, 8) and heads.dtype == torch.float32
    # the states are the task vectors' h_l[-1] of the same prompts
    torch.testing.assert_close(states, tv.last_position_states(tiny, tok, PROMPTS), atol=1e-5, rtol=1e-5)
    # batching (left padding) changes nothing
    alone = torch.cat([fv.head_activations(tiny, tok, [p]) for p in PROMPTS])
    torch.testing.assert_close(heads, alone, atol=1e-5, rtol=1e-5)


def test_head_outputs_sum_to_the_attention_output(tiny, tok):
    """Sanity check (holds by construction): W_O [a_1; ...; a_H] + b = sum_j W_O[:, j] a_j + b."""
    outputs = fv.attention_outputs(tiny)
    acts = fv.head_activations(tiny, tok, PROMPTS)  # (n, L, H, D)
    per_head = fv.head_outputs(tiny, acts)  # (n, L, H, d)
    for l, projection in enumerate(outputs.projections):
        with torch.no_grad():
            full = projection(acts[:, l].flatten(-2)) - projection(torch.zeros(1, 32))
        torch.testing.assert_close(per_head[:, l].sum(1), full, atol=1e-5, rtol=1e-5)


def test_write_then_read_heads(tiny, tok):
    outputs = fv.attention_outputs(tiny)
    batch = llm.tokenize_left_padded(tok, PROMPTS)
    value = torch.arange(8, dtype=torch.float32)
    patches = {1: (torch.tensor([0, 2]), torch.tensor([3, 1]), torch.stack([value, -value]))}
    before, after = {}, {}
    with tv.trace(outputs.modules([1]), edit_input=fv.read_heads(before, 4)):
        llm.forward_last(tiny, **batch)
    with tv.trace(outputs.modules([1]), edit_input=fv.write_heads(patches, 4)), \
            tv.trace(outputs.modules([1]), edit_input=fv.read_heads(after, 4)):
        llm.forward_last(tiny, **batch)
    torch.testing.assert_close(after[1][0, 3], value)
    torch.testing.assert_close(after[1][2, 1], -value)
    untouched = torch.ones(3, 4, dtype=torch.bool)
    untouched[0, 3] = untouched[2, 1] = False
    torch.testing.assert_close(after[1][untouched], before[1][untouched])


# ----------------------------------------------------------------------------------------------------------------
# Indirect effects
# ----------------------------------------------------------------------------------------------------------------
def test_three_mediation_passes_agree(tiny, tok):
    means = _means(tiny, tok)
    answers = fv.answer_ids(tok, ANSWERS)
    got = {m: fv.indirect_effects(tiny, tok, PROMPTS, answers, means, method=m, max_rows=10, batch_size=2)
           for m in fv.METHODS}
    assert got["naive"].shape == (3, 3, 4)
    assert got["naive"].abs().max() > 1e-3  # the patches do something (an all-zero CIE means a hook did not fire)
    for method in ("kv", "batched"):
        torch.testing.assert_close(got[method], got["naive"], atol=1e-6, rtol=1e-4)
    # a subset of blocks is the same columns
    part = fv.indirect_effects(tiny, tok, PROMPTS, answers, means, layers=[2, 0])
    torch.testing.assert_close(part, got["naive"][:, [0, 2]], atol=1e-6, rtol=1e-4)


def test_indirect_effect_is_the_probability_gain(tiny, tok):
    """CIE of one head = P(y | patched) - P(y | clean), checked with an independent hook on one prompt."""
    means = _means(tiny, tok)
    outputs = fv.attention_outputs(tiny)
    answer = fv.answer_ids(tok, ANSWERS[:1])
    got = fv.indirect_effects(tiny, tok, PROMPTS[:1], answer, means)[0, 2, 1]

    def hook(module, args):
        x = args[0].clone()
        x[:, -1, 8:16] = means[2, 1]
        return (x,)

    batch = llm.tokenize_left_padded(tok, PROMPTS[:1])
    clean = torch.softmax(llm.forward_last(tiny, **batch)[0], -1)[0, answer[0]]
    handle = outputs.projections[2].register_forward_pre_hook(hook)
    try:
        patched = torch.softmax(llm.forward_last(tiny, **batch)[0], -1)[0, answer[0]]
    finally:
        handle.remove()
    torch.testing.assert_close(got, patched - clean, atol=1e-6, rtol=1e-4)


def test_head_effects_shape_and_seed(tiny, tok):
    kwargs = dict(n_prompts=3, n_demos=3, n_mean_prompts=4)
    a = fv.head_effects(tiny, tok, LETTERS, seed=1, **kwargs)
    b = fv.head_effects(tiny, tok, LETTERS, seed=1, **kwargs)
    assert a.shape == (3, 4) and a.dtype == torch.float64
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, fv.head_effects(tiny, tok, LETTERS, seed=2, **kwargs))


def test_draw_prompts_shuffles_labels_only():
    rng = np.random.default_rng(0)
    drawn = fv.draw_prompts(LETTERS, 20, 5, rng, shuffle_labels=True)
    answers = dict(LETTERS)
    for demos, (x, y) in drawn:
        assert len(demos) == 5 and x not in {d for d, _ in demos} and answers[x] == y
        assert sorted(d for _, d in demos) == sorted(answers[d] for d, _ in demos)  # the same labels, permuted
    assert any(answers[d] != label for demos, _ in drawn for d, label in demos)
    held = LETTERS[20:]
    drawn = fv.draw_prompts(LETTERS[:20], 3, 4, rng, queries=held)
    assert [q for _, q in drawn] == held[:3]


def test_answer_ids(tok):
    assert fv.answer_ids(tok, ["bc", "d"]).tolist() == [tok.encode(" bc")[0], tok.encode(" d")[0]]
    bare = tv.PromptFormat(output_space=False)
    assert fv.answer_ids(tok, ["bc"], bare).tolist() == [tok.encode("b")[0]]


# ----------------------------------------------------------------------------------------------------------------
# The function vector, its addition, generation
# ----------------------------------------------------------------------------------------------------------------
def test_top_heads_and_function_vector(tiny, tok):
    effects = torch.zeros(3, 4, dtype=torch.float64)
    effects[2, 1], effects[0, 3], effects[1, 0] = 0.3, 0.2, 0.1
    assert fv.top_heads(effects, 3) == [(2, 1), (0, 3), (1, 0)]
    assert fv.top_heads(effects.numpy(), 1) == [(2, 1)]
    means = _means(tiny, tok, 1.0)
    per_head = fv.head_outputs(tiny, means)
    torch.testing.assert_close(fv.function_vector(tiny, means, [(2, 1), (0, 3)]), per_head[2, 1] + per_head[0, 3])


def test_add_vector_predictions(tiny, tok):
    parts = llm.model_parts(tiny)
    zero = fv.add_vector_predictions(tiny, tok, PROMPTS, torch.zeros(32), None)
    assert zero.shape == (3, 3)
    assert torch.equal(zero, tv.predict(tiny, tok, PROMPTS)[:, None].expand(-1, 3))
    v = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 3
    got = fv.add_vector_predictions(tiny, tok, PROMPTS, v, [1])[:, 0]
    batch = llm.tokenize_left_padded(tok, PROMPTS)
    with tv.patch_last_position(tiny, {1: (torch.arange(3), v[None].expand(3, -1))}, mode="add"):
        ref = llm.forward_last(tiny, **batch)[0].argmax(-1)
    assert torch.equal(got, ref)
    per_block = torch.randn(parts.n_layers, 32, generator=torch.Generator().manual_seed(1))
    assert fv.add_vector_predictions(tiny, tok, PROMPTS, per_block, None).shape == (3, 3)


def test_generate_with_and_without_vector(tiny, tok):
    plain = fv.generate(tiny, tok, PROMPTS, 3)
    assert len(plain) == 3 and all(len(text) <= 3 for text in plain)
    zero = fv.generate(tiny, tok, PROMPTS, 3, torch.zeros(32), 1)
    assert zero == plain
    v = torch.randn(32, generator=torch.Generator().manual_seed(0)) * 3
    first = fv.generate(tiny, tok, PROMPTS, 1, v, 1)
    assert first == [tok.decode([int(i)]) for i in fv.add_vector_predictions(tiny, tok, PROMPTS, v, [1])[:, 0]]


def test_contains_answer():
    score = fv.contains_answer()
    assert score(' "B" is it', "b", "B") and score("well, New York.", "x", "New York")
    assert not score("the b", "b", "B")


def test_split_queries():
    train, dev, test = fv.split_queries(LETTERS, 0.3, seed=4)
    assert len(dev) + len(test) == 8 and len(dev) == 2 and len(train) == 17
    assert set(train) | set(dev) | set(test) == set(LETTERS)
    assert (train, dev, test) == fv.split_queries(LETTERS, 0.3, seed=4)


def test_evaluate_end_to_end(tiny, tok):
    kwargs = dict(n_heads=3, seed=0, n_demos=3, n_prompts=2, n_mean_prompts=3, templates=("{x} ->",), n_new=2)
    result = fv.evaluate(tiny, tok, LETTERS, **kwargs)
    assert 0 <= result.layer < 3 and result.dev_curve.shape == (3,) and result.effects.shape == (3, 4)
    assert len(result.heads) == 3 and len(result.test_queries) == 6
    for which in ("zero_shot", "zero_shot_fv", "shuffled", "shuffled_fv", "icl"):
        assert result.interval(which).estimate == getattr(result, which)
    assert set(result.natural) == {"{x} ->"}
    assert result.dev_curve[result.layer] == result.dev_curve.max()
    fixed = fv.evaluate(tiny, tok, LETTERS, layer=2, effects=result.effects, **kwargs)
    assert fixed.layer == 2 and fixed.heads == result.heads


# ----------------------------------------------------------------------------------------------------------------
# nnsight gives the same results (run in a subprocess: importing nnsight patches torch.Tensor.backward)
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("nnsight") is None, reason="nnsight is not installed")
def test_nnsight_versions_agree():
    script = textwrap.dedent("""
        import torch
        from icllib import function_vectors as fv, testing
        from icllib.function_vectors import via_nnsight
        tok = testing.CharTokenizer()
        prompts = %r
        for arch in ("llama", "gpt_neox", "gptj", "gpt2"):
            model = testing.tiny_random_model(arch, n_layers=3, seed=2)
            means = fv.head_activations(model, tok, prompts).mean(0) * 30
            answers = fv.answer_ids(tok, %r)
            ours = fv.indirect_effects(model, tok, prompts, answers, means)
            for i, (layer, head) in enumerate([(0, 1), (2, 3), (1, 0)]):
                theirs = via_nnsight.indirect_effect(model, tok, prompts[i], int(answers[i]), layer, head,
                                                     means[layer, head])
                assert abs(theirs - float(ours[i, layer, head])) < 1e-6, (arch, theirs, ours[i, layer, head])
            vector = fv.function_vector(model, means / 30, [(1, 2), (0, 0)]) * 20
            for layer in range(3):
                a = fv.add_vector_predictions(model, tok, prompts, vector, [layer])[:, 0]
                b = via_nnsight.add_vector_predictions(model, tok, prompts, vector, layer)
                assert torch.equal(a, b), (arch, layer, a, b)
        print("ok")
    """ % (PROMPTS, ANSWERS))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    return testing.tiny_random_model("llama", n_layers=3, seed=2)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, t: fv.head_activations(m, t, "example:a->"), ValueError, "prompts"),
        (lambda m, t: fv.head_activations(m, t, PROMPTS, batch_size=0), ValueError, "batch_size"),
        (lambda m, t: fv.head_outputs(m, torch.zeros(3, 4, 7)), ValueError, "activations"),
        (lambda m, t: fv.head_outputs(m, np.zeros((3, 4, 8))), TypeError, "activations"),
        (lambda m, t: fv.top_heads(torch.zeros(3, 4), 13), ValueError, "k"),
        (lambda m, t: fv.top_heads(torch.zeros(12), 1), ValueError, "effects"),
        (lambda m, t: fv.function_vector(m, torch.zeros(3, 4, 8), [(3, 0)]), ValueError, "heads"),
        (lambda m, t: fv.function_vector(m, torch.zeros(3, 4, 8), []), ValueError, "heads"),
        (lambda m, t: fv.function_vector(m, torch.zeros(3, 4, 8), [(0, 1.5)]), TypeError, "heads"),
        (lambda m, t: fv.indirect_effects(m, t, PROMPTS, torch.zeros(2, dtype=torch.long), torch.zeros(3, 4, 8)),
         ValueError, "answers"),
        (lambda m, t: fv.indirect_effects(m, t, PROMPTS, torch.zeros(3, dtype=torch.long), torch.zeros(3, 4, 7)),
         ValueError, "mean_activations"),
        (lambda m, t: fv.indirect_effects(m, t, PROMPTS, torch.zeros(3, dtype=torch.long), torch.zeros(3, 4, 8),
                                          method="fast"), ValueError, "method"),
        (lambda m, t: fv.indirect_effects(m, t, PROMPTS, torch.zeros(3, dtype=torch.long), torch.zeros(3, 4, 8),
                                          layers=[5]), ValueError, "layers"),
        (lambda m, t: fv.head_effects(m, t, LETTERS, n_prompts=0), ValueError, "n_prompts"),
        (lambda m, t: fv.head_effects(m, t, LETTERS, n_demos=25), ValueError, "n_demos"),
        (lambda m, t: fv.head_effects(m, t, "ab"), TypeError, "pairs"),
        (lambda m, t: fv.draw_prompts(LETTERS, 2, 3, 0), TypeError, "rng"),
        (lambda m, t: fv.draw_prompts(LETTERS, 2, 3, np.random.default_rng(0), queries=LETTERS[:1]), ValueError,
         "queries"),
        (lambda m, t: fv.answer_ids(t, []), ValueError, "answers"),
        (lambda m, t: fv.add_vector_predictions(m, t, PROMPTS, torch.zeros(31), None), ValueError, "vectors"),
        (lambda m, t: fv.add_vector_predictions(m, t, PROMPTS, torch.zeros(2, 32), [0, 1, 2]), ValueError,
         "vectors"),
        (lambda m, t: fv.add_vector_predictions(m, t, PROMPTS, torch.zeros(32), [3]), ValueError, "layers"),
        (lambda m, t: fv.generate(m, t, PROMPTS, 0), ValueError, "n_new"),
        (lambda m, t: fv.generate(m, t, PROMPTS, 2, torch.zeros(32), None), TypeError, "layer"),
        (lambda m, t: fv.split_queries(LETTERS, 0.05, 0), ValueError, "query_fraction"),
        (lambda m, t: fv.split_queries(LETTERS, 1.5, 0), ValueError, "query_fraction"),
        (lambda m, t: fv.evaluate(m, t, LETTERS, n_heads=13), ValueError, "n_heads"),
        (lambda m, t: fv.evaluate(m, t, LETTERS, layer=3), ValueError, "layer"),
        (lambda m, t: fv.evaluate(m, t, LETTERS, effects=torch.zeros(2, 4)), ValueError, "effects"),
        (lambda m, t: fv.evaluate(m, t, LETTERS, templates=("no slot",)), ValueError, "templates"),
        (lambda m, t: fv.evaluate(m, t, LETTERS, n_demos=18), ValueError, "n_demos"),
    ],
)
def test_bad_inputs(llama, tok, call, error, match):
    with pytest.raises(error, match=match):
        call(llama, tok)


def test_generate_needs_a_hugging_face_model(tok):
    class Tiny(nn.Module):
        def forward(self, input_ids):
            return torch.zeros(*input_ids.shape, 5)

    with pytest.raises(ValueError, match="Hugging Face"):
        fv.generate(Tiny(), tok, PROMPTS, 2)
