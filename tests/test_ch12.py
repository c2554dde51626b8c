"""Tests of icllib.experiments.ch12 on a tiny model: shapes, determinism, the head-space identities, records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icllib import records, testing
from icllib.experiments import ch12
from icllib.papers import todd

CONFIG = ch12.Config(n_demos=3, n_mean_prompts=4, n_prompts=2, n_bare=4, n_dev=2, n_test=4, templates=("{x} ->",),
                     n_new=2)
TASKS = ["to_upper", "to_lower"]  # single characters: one token each for the character tokenizer


@pytest.fixture(scope="module")
def tiny():
    return testing.tiny_random_model("llama", n_layers=3, seed=2), testing.CharTokenizer()


def test_task_activations(tiny):
    model, tok = tiny
    acts = ch12.task_activations(model, tok, "to_upper", CONFIG)
    assert acts.heads.shape == (4, 3, 4, 8) and acts.states.shape == (4, 3, 32)
    assert acts.bare_heads.shape == (3, 4, 8) and acts.bare_states.shape == (3, 32)
    again = ch12.task_activations(model, tok, "to_upper", CONFIG)
    torch.testing.assert_close(acts.heads, again.heads)


def test_head_effects(tiny):
    model, tok = tiny
    effects = ch12.head_effects(model, tok, TASKS, CONFIG)
    assert list(effects) == TASKS
    assert all(e.shape == (2, 3, 4) and e.dtype == np.float32 for e in effects.values())


def test_compare(tiny):
    model, tok = tiny
    heads = [(2, 1), (1, 0), (0, 3)]
    result = ch12.compare(model, tok, TASKS[:1], heads, CONFIG)["to_upper"]
    assert set(result.dev_hits) == {"fv", "delta", "tv"} and all(h.shape == (2, 3) for h in result.dev_hits.values())
    assert all(0 <= layer < 3 for layer in result.layers.values())
    expected = {"zero_shot", "shuffled", "icl", "template0", "template0_fv", "zero_shot_fv_third",
                *(f"{w}_{m}" for w in ("zero_shot", "shuffled") for m in ("fv", "delta", "tv"))}
    assert set(result.hits) == expected and all(h.shape == (4,) and h.dtype == bool for h in result.hits.values())
    assert result.cosine.shape == (3,) and result.delta_norm.shape == (3,)
    # the result is plain data: it survives a record's round trip
    arrays: dict = {}
    encoded = records._encode(result, arrays)
    back = records._decode(encoded, arrays)
    assert back.layers == result.layers and np.array_equal(back.hits["icl"], result.hits["icl"])


def test_head_space_identities(tiny):
    model, tok = tiny
    acts = ch12.task_activations(model, tok, "to_upper", CONFIG)
    every = [(l, j) for l in range(2) for j in range(4)]
    space = ch12.head_space(model, acts, every, layer=1, n_random=3)
    # Sanity check: the top set that is every head at blocks <= L measures exactly what "all" does.
    assert space["n_top"] == 8 and space["top_share"] == pytest.approx(space["all_share"])
    assert space["top_var"] == pytest.approx(space["all_var"])
    later = ch12.head_space(model, acts, [(2, 0)], layer=1, n_random=3)  # a head after block L carries nothing
    assert later["n_top"] == 0 and later["top_share"] == 0.0 and later["random_share"] == 0.0


def test_todd_numbers_have_sources():
    assert set(todd.SOURCES) == set(todd.__all__) - {"SOURCES"}
    assert set(todd.TABLE2) == set(todd.TABLE2_SE)
    assert all(0 <= a <= 1 and 0 <= b <= 1 for a, b in todd.TABLE2.values())
    assert all(todd.FV_LAYER[m] < todd.N_LAYERS[m] for m in todd.FV_LAYER)
    assert len(todd.GPTJ_TOP_HEADS) == todd.N_HEADS["GPT-J"]
