"""Tests of icllib.task_vectors: extraction, patching identities, sweep equivalence, evaluation, bad inputs."""

from __future__ import annotations

import dataclasses
import string

import numpy as np
import pytest
import torch
from torch import nn

from icllib import lang_tasks, llm, papers, testing
from icllib import task_vectors as tv
from icllib.task_vectors import hooks, sweeps

ARCHS = ["llama", "gpt_neox", "gptj", "gpt2"]
LETTERS = [(c, chr(ord(c) + 1)) for c in string.ascii_lowercase[:-1]]  # next_letter, 25 pairs
PROMPTS = ["example:a->b\nexample:k->", "example:q->", "zz->y\nh->"]


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    return testing.tiny_random_model(request.param, n_layers=3, seed=2)


@pytest.fixture(scope="module")
def tok():
    return testing.CharTokenizer()


def _logits(model, tokenizer, prompts):
    return llm.forward_last(model, **llm.tokenize_left_padded(tokenizer, prompts))[0]




# ----------------------------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------------------------
def test_format_prompt():
    demos = [("a", "b"), ("c", "d")]
    assert tv.format_prompt(demos, "e") == "example:a-> b\nexample:c-> d\nexample:e->"
    assert tv.format_prompt(demos, "e", "bare") == "a -> b\nc -> d\ne ->"
    assert tv.format_prompt([], "e", "qa+bos") == "Q: e\nA:"
    plain = tv.PromptFormat(prefix="", arrow=":", separator=", ", output_space=False)
    assert tv.format_prompt(demos, "e", plain) == "a:b, c:d, e:"


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: tv.format_prompt([("a", "b")], "e", "nope"), ValueError),
        (lambda: tv.format_prompt([("a", "b")], "e", 3), TypeError),
        (lambda: tv.format_prompt([("a", "b")], 5), TypeError),
        (lambda: tv.format_prompt(["ab"], "e"), TypeError),
        (lambda: tv.PromptFormat(arrow=""), ValueError),
        (lambda: tv.PromptFormat(bos=1), TypeError),
        (lambda: tv.PromptFormat(prefix=None), TypeError),
    ],
)
def test_format_bad_inputs(call, error):
    with pytest.raises(error):
        call()


# ----------------------------------------------------------------------------------------------------------------
# The hook primitive
# ----------------------------------------------------------------------------------------------------------------
def test_trace_reads_edits_and_replaces_any_submodule_and_cleans_up():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    plain = net(x)
    seen = {}
    with tv.trace({"in": net[0], "out": net[2]}, edit_output=lambda key, out: seen.__setitem__(key, out)):
        torch.testing.assert_close(net(x), plain)  # an edit that returns None changes nothing
    assert set(seen) == {"in", "out"} and torch.equal(seen["out"], plain)
    with tv.trace({0: net[2]}, edit_input=lambda key, args, kwargs: ((torch.zeros_like(args[0]),), kwargs)):
        torch.testing.assert_close(net(x), net[2].bias.expand(4, 2))  # the input of a submodule, replaced
    with tv.trace({0: net[2]}, edit_output=lambda key, out: 2 * out):
        torch.testing.assert_close(net(x), 2 * plain)
    with tv.trace({1: net[1]}, forward=lambda key, h: -h):  # the computation itself replaced (no ReLU)
        torch.testing.assert_close(net(x), net[2](-net[0](x)))
    with pytest.raises(RuntimeError), tv.trace({0: net[0]}, edit_output=lambda key, out: 0 * out,
                                               forward=lambda key, h: h):
        raise RuntimeError("inside")
    assert not net[0]._forward_hooks and not net[2]._forward_pre_hooks and "forward" not in net[1].__dict__
    torch.testing.assert_close(net(x), plain)


def test_capture_and_patch_are_edit_functions_of_trace(tiny, tok):
    batch = llm.tokenize_left_padded(tok, PROMPTS)
    with tv.capture_last_position(tiny, layers=[1]) as store:
        llm.forward_last(tiny, **batch)
    assert set(store) == {1} and store[1].shape == (3, llm.hidden_size(tiny))
    blocks = llm.decoder_blocks(tiny)
    mine: dict = {}
    with tv.trace(hooks.blocks_at(blocks, [1]), edit_output=hooks.read_last(mine)):
        llm.forward_last(tiny, **batch)
    assert torch.equal(mine[1], store[1])
    structure: dict = {}
    with tv.trace(hooks.blocks_at(blocks, range(len(blocks))), edit_output=hooks.record_structure(structure)):
        llm.forward_last(tiny, **batch)
    assert set(structure) == set(range(len(blocks))) and all(v >= 0 for v in structure.values())


# ----------------------------------------------------------------------------------------------------------------
# Patching identities (exact, any weights)
# ----------------------------------------------------------------------------------------------------------------
def test_patching_the_state_the_prompt_has_changes_nothing(tiny, tok):
    states = tv.last_position_states(tiny, tok, PROMPTS)  # (3, L, d)
    plain = _logits(tiny, tok, PROMPTS)
    for method in ("kv", "batched", "naive"):
        patched = tv.patched_predictions(tiny, tok, PROMPTS, states, method=method, return_logits=True)
        for k in range(states.shape[1]):
            torch.testing.assert_close(patched[:, k], plain, atol=1e-5, rtol=1e-5)


def test_adding_zero_changes_nothing_and_adding_h_doubles_it(tiny, tok):
    states = tv.last_position_states(tiny, tok, PROMPTS)
    plain = _logits(tiny, tok, PROMPTS)
    added0 = tv.patched_predictions(tiny, tok, PROMPTS, torch.zeros_like(states), mode="add", return_logits=True)
    torch.testing.assert_close(added0[:, 1], plain, atol=1e-5, rtol=1e-5)
    added = tv.patched_predictions(tiny, tok, PROMPTS, states, layers=[1], mode="add", return_logits=True)
    doubled = tv.patched_predictions(tiny, tok, PROMPTS, 2 * states, layers=[1], return_logits=True)
    torch.testing.assert_close(added, doubled, atol=1e-5, rtol=1e-5)


def test_patching_at_the_last_layer_reproduces_that_states_prediction(tiny, tok):
    source = tv.last_position_states(tiny, tok, PROMPTS)[:, -1, :]  # h_{L-1} of each source prompt
    targets = ["q->", "abc->", "hello world->"]  # other prompts, other lengths
    patched = tv.patched_predictions(tiny, tok, targets, source, layers=[llm.n_layers(tiny) - 1],
                                     return_logits=True)[:, 0]
    torch.testing.assert_close(patched, _logits(tiny, tok, PROMPTS), atol=1e-5, rtol=1e-5)
    # ... which the vocabulary projection reads directly
    plain = _logits(tiny, tok, PROMPTS[:1])[0]
    top = tv.project_to_vocabulary(tiny, tok, source[0], k=3, alphabetic=False)
    visible = [i for i in torch.argsort(plain, descending=True).tolist() if tok.decode([i]).strip()][:3]
    assert [text for text, _ in top] == [tok.decode([i]).strip() for i in visible]
    np.testing.assert_allclose([value for _, value in top], plain[visible].numpy(), atol=1e-5)


def test_sweep_methods_agree(tiny, tok):
    """KV-cached sweep == one batched forward per layer == one forward per (prompt, layer)."""
    generator = torch.Generator().manual_seed(0)
    theta = torch.randn(len(PROMPTS), llm.n_layers(tiny), llm.hidden_size(tiny), generator=generator)
    results = {m: tv.patched_predictions(tiny, tok, PROMPTS, theta, method=m, return_logits=True)
               for m in ("kv", "batched", "naive")}
    torch.testing.assert_close(results["kv"], results["naive"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results["batched"], results["naive"], atol=1e-5, rtol=1e-5)
    few = tv.patched_predictions(tiny, tok, PROMPTS, theta[:, [2, 0]], layers=[2, 0], max_rows=2)
    assert torch.equal(few, results["naive"][:, [2, 0]].argmax(-1))


def test_grouped_states_match_prompt_by_prompt(tiny, tok):
    groups = [["ab->c\nd->", "ab->c\nxyz->"], ["q->", "r->"], ["long prefix here->", "long prefix here->"]]
    states, ids = tv.grouped_last_states(tiny, tok, groups)
    flat = [p for g in groups for p in g]
    torch.testing.assert_close(states.view(len(flat), *states.shape[2:]), tv.last_position_states(tiny, tok, flat),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(ids.view(-1), tv.predict(tiny, tok, flat))


def test_task_vector_is_the_mean_over_dummies(tok):
    model = testing.tiny_random_model("llama", n_layers=2, seed=3)
    demos = [LETTERS[:3], LETTERS[5:8]]
    dummies = [["x", "y"], ["p", "q"]]
    theta = tv.extract_task_vectors(model, tok, demos, dummies)
    prompts = [tv.format_prompt(d, q) for d, qs in zip(demos, dummies) for q in qs]
    states = tv.last_position_states(model, tok, prompts).view(2, 2, 2, -1)
    torch.testing.assert_close(theta, states.mean(1), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The default model
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_pair():
    return llm.load_model()


def test_default_model_sweeps_agree(default_pair):
    model, tokenizer = default_pair
    demos = [[("a", "A"), ("b", "B"), ("c", "C")]] * 2
    theta = tv.extract_task_vectors(model, tokenizer, demos, [["x", "y"], ["p", "q"]])
    prompts = [tv.format_prompt([], "d"), tv.format_prompt([], "kite")]
    layers = [0, 15, 29]
    kv = tv.patched_predictions(model, tokenizer, prompts, theta, layers, method="kv", return_logits=True)
    naive = tv.patched_predictions(model, tokenizer, prompts, theta, layers, method="naive", return_logits=True)
    torch.testing.assert_close(kv, naive, atol=2e-3, rtol=1e-4)
    assert torch.equal(kv.argmax(-1), naive.argmax(-1))
    # and the prompt's own state changes nothing
    own = tv.last_position_states(model, tokenizer, prompts)
    same = tv.patched_predictions(model, tokenizer, prompts, own, [20], return_logits=True)[:, 0]
    torch.testing.assert_close(same, _logits(model, tokenizer, prompts), atol=2e-3, rtol=1e-4)


def test_default_model_task_vector_works_on_to_upper(default_pair):
    """The effect the book is about, small: theta(S) of to_upper turns 'x ->' into 'X' at a middle layer."""
    model, tokenizer = default_pair
    letters = [(c, c.upper()) for c in string.ascii_lowercase]
    result = tv.evaluate(model, tokenizer, letters, n_dev=6, n_test=6, n_baseline=6, layers=range(14, 26),
                         progress=False)
    assert result.icl >= 0.8 and result.tv >= 0.5 and result.baseline <= 0.2
    assert 14 <= result.best_layer < 26


# ----------------------------------------------------------------------------------------------------------------
# evaluate / conflicting tasks on tiny models
# ----------------------------------------------------------------------------------------------------------------
def test_evaluate_on_a_tiny_model(tok):
    model = testing.tiny_random_model("gpt2", n_layers=2, seed=4)
    result = tv.evaluate(model, tok, LETTERS, n_demos=3, n_dev=4, n_test=5, n_baseline=7, seed=1, progress=False)
    assert result.dev_curve.shape == (2,) and 0 <= result.best_layer < 2
    for value in (result.baseline, result.icl, result.tv):
        assert 0.0 <= value <= 1.0
    assert len(result.test_queries) == 5 and len(result.baseline_queries) == 7
    assert result.theta_test.shape == (5, 32)
    assert {"tv", "icl", "baseline"} <= set(result.predictions)
    again = tv.evaluate(model, tok, LETTERS, n_demos=3, n_dev=4, n_test=5, n_baseline=7, seed=1, progress=False)
    assert again.test_queries == result.test_queries and np.array_equal(again.dev_curve, result.dev_curve)
    always = tv.evaluate(model, tok, LETTERS, n_demos=3, n_dev=2, n_test=2, n_baseline=2, seed=1,
                         scorer=lambda p, x, y: True, layers=[1], progress=False)
    assert always.icl == always.tv == always.baseline == 1.0 and always.best_layer == 1
    assert np.isnan(always.dev_curve[0])


class _ToyLM(nn.Module):
    """A non-Hugging-Face causal LM (token-wise, so padding is harmless) exposing model_parts()."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(128, 16)
        self.layers = nn.ModuleList([nn.Linear(16, 16) for _ in range(3)])
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 128)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)

    def model_parts(self) -> llm.ModelParts:
        return llm.ModelParts(blocks=self.layers, final_norm=self.norm, unembedding=self.head)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = h + torch.tanh(layer(h))
        return self.head(self.norm(h))


def test_non_hf_model_runs_the_whole_method(tok):
    toy = _ToyLM().eval()
    result = tv.evaluate(toy, tok, LETTERS, n_demos=2, n_dev=3, n_test=3, n_baseline=3, progress=False)
    assert result.n_layers == 3
    states = tv.last_position_states(toy, tok, PROMPTS)
    same = tv.patched_predictions(toy, tok, PROMPTS, states, return_logits=True)
    torch.testing.assert_close(same[:, 0], _logits(toy, tok, PROMPTS))
    with pytest.raises(ValueError, match="kv"):
        tv.patched_predictions(toy, tok, PROMPTS, states, method="kv")


def test_conflicting_tasks_on_a_tiny_model(tok):
    model = testing.tiny_random_model("llama", n_layers=2, seed=5)
    upper = [(c, c.upper()) for c in string.ascii_lowercase]
    result = tv.conflicting_tasks(model, tok, LETTERS, upper, layer=1, n_sets=4, n_demos=3)
    assert result.n_sets == 4 and len(result.predictions_after) == 4
    for value in (result.a_before, result.b_before, result.a_after, result.b_after):
        assert 0.0 <= value <= 1.0
    with pytest.raises(ValueError, match="share no input"):
        tv.conflicting_tasks(model, tok, LETTERS, [("A", "a")], layer=1)
    with pytest.raises(ValueError):
        tv.conflicting_tasks(model, tok, LETTERS, upper, layer=2)
    with pytest.raises(TypeError, match="scorer_b"):
        tv.conflicting_tasks(model, tok, LETTERS, upper, layer=1, scorer_b="exact")
    # a Task is a scorer: always right with its own rule when the prediction is its answer
    task = lang_tasks.Task("upper", "algorithmic", tuple(upper), "exact")
    same = tv.conflicting_tasks(model, tok, LETTERS, upper, layer=1, n_sets=4, n_demos=3, scorer_b=task)
    assert same == result


def test_papers_tables_are_re_exported():
    assert tv.PAPER_AVERAGES is papers.PAPER_AVERAGES and tv.PAPER_LAYER_PEAKS is papers.PAPER_LAYER_PEAKS
    assert tv.PAPER_CATEGORIES is papers.PAPER_CATEGORIES and set(papers.hendel.SOURCES) <= set(papers.hendel.__all__)
    assert tv.exact_match(" A", "a", "A") and not tv.exact_match("a", "a", "A")


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return testing.tiny_random_model("llama", n_layers=2, seed=6)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"pairs": []}, ValueError, "at least one"),
        ({"pairs": "ab"}, TypeError, "pairs"),
        ({"pairs": [("a", 1)]}, TypeError, "pairs"),
        ({"n_demos": 30}, ValueError, "n_demos"),
        ({"n_demos": 0}, ValueError, "n_demos"),
        ({"n_dev": 0}, ValueError, "n_dev"),
        ({"n_test": 2.5}, TypeError, "n_test"),
        ({"seed": -1}, ValueError, "seed"),
        ({"layers": [5]}, ValueError, "layers"),
        ({"layers": [0, 0]}, ValueError, "repeat"),
        ({"scorer": "exact"}, TypeError, "scorer"),
        ({"fmt": "nope"}, ValueError, "fmt"),
        ({"method": "fast"}, ValueError, "method"),
        ({"pairs": [("a", "b"), ("a", "c"), ("d", "e")], "n_demos": 1}, ValueError, "unique"),
    ],
)
def test_evaluate_bad_inputs(small, tok, kwargs, error, match):
    args = {"pairs": LETTERS, "n_demos": 2, "n_dev": 2, "n_test": 2, "n_baseline": 2, "progress": False}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        tv.evaluate(small, tok, **args)


def test_patching_bad_inputs(small, tok):
    theta = torch.zeros(2, 2, 32)
    prompts = ["a->", "b->"]
    with pytest.raises(ValueError, match="layer"):
        tv.patched_predictions(small, tok, prompts, theta[:, 0], layers=[2])
    with pytest.raises(ValueError, match="layer"):
        tv.patched_predictions(small, tok, prompts, theta[:, 0], layers=[-1])
    with pytest.raises(ValueError, match="theta"):
        tv.patched_predictions(small, tok, prompts, torch.zeros(3, 2, 32))
    with pytest.raises(ValueError, match="theta"):
        tv.patched_predictions(small, tok, prompts, torch.zeros(2, 2, 31))
    with pytest.raises(ValueError, match="one layer"):
        tv.patched_predictions(small, tok, prompts, theta[:, 0])
    with pytest.raises(TypeError, match="theta"):
        tv.patched_predictions(small, tok, prompts, np.zeros((2, 2, 32)))
    with pytest.raises(ValueError, match="mode"):
        tv.patched_predictions(small, tok, prompts, theta, mode="swap")
    with pytest.raises(ValueError, match="prompts"):
        tv.patched_predictions(small, tok, [], theta)
    with pytest.raises(ValueError, match="vectors"):
        with tv.patch_last_position(small, {0: (torch.tensor([0, 1]), torch.zeros(1, 32))}):
            pass
    with pytest.raises(ValueError, match="layer"):
        with tv.capture_last_position(small, layers=[7]):
            pass
    with pytest.raises(ValueError, match="differ"):
        tv.extract_task_vectors(small, tok, [LETTERS[:2]], [["x"], ["y"]])
    with pytest.raises(ValueError, match="dummy"):
        tv.extract_task_vectors(small, tok, [LETTERS[:2]], [[]])
    with pytest.raises(ValueError, match="same length"):
        tv.grouped_last_states(small, tok, [["a->"], ["b->", "c->"]])
    with pytest.raises(ValueError, match="shape"):
        tv.project_to_vocabulary(small, tok, torch.zeros(5))
    with pytest.raises(ValueError, match="k"):
        tv.project_to_vocabulary(small, tok, torch.zeros(32), k=0)


def test_evaluate_task_uses_the_tasks_rules_and_the_cache(tok, monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path))
    model = testing.tiny_random_model("llama", n_layers=2, seed=7)
    kwargs = dict(n_dev=2, n_test=2, n_baseline=2, progress=False)
    first = tv.evaluate_task(model, tok, "to_upper", **kwargs)
    assert first.fmt.output_space is False  # one character = one token only without a leading space
    assert list(tmp_path.glob("results/protocol.evaluate-*.pkl"))
    again = tv.evaluate_task(model, tok, "to_upper", n_demos=5, seed=41, **kwargs)  # defaults spelled out
    assert again.test_queries == first.test_queries and len(list(tmp_path.glob("results/*.pkl"))) == 1
    # method and batch_size do not change the result, so they share the entry
    tv.evaluate_task(model, tok, "to_upper", method="batched", batch_size=3, **kwargs)
    assert len(list(tmp_path.glob("results/*.pkl"))) == 1
    # the task is the scorer: the same as evaluate with the filtered task's pairs and its score
    task = lang_tasks.filter_single_token(lang_tasks.TASKS["to_upper"], tok)
    direct = tv.evaluate(model, tok, task.pairs, scorer=task, fmt=tv.format_for_task(task), **kwargs)
    assert (direct.baseline, direct.icl, direct.tv) == (first.baseline, first.icl, first.tv)
    uncached = tv.evaluate_task(model, tok, task, cache=False, **kwargs)
    assert uncached.predictions == first.predictions
    with pytest.raises(TypeError, match="task"):
        tv.evaluate_task(model, tok, 3)
    with pytest.raises(TypeError, match="cache"):
        tv.evaluate_task(model, tok, "to_upper", cache="yes")
    with pytest.raises(TypeError, match="model_id"):  # the model carries its name now
        tv.evaluate_task(model, tok, "to_upper", model_id="tiny", **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# The block-skipping KV sweep, layer_patches, task_vectors_for
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("min_rows", [1, 4, 1000])
def test_block_skipping_kv_sweep_equals_full_forwards_for_any_grouping(tiny, tok, min_rows):
    """Row (prompt, l) skips blocks 0..l at the last position; groups of layers must not change any logit."""
    generator = torch.Generator().manual_seed(1)
    theta = torch.randn(len(PROMPTS), 3, llm.hidden_size(tiny), generator=generator)
    layers = [2, 0, 1]  # unsorted on purpose: groups are formed in block order
    naive = tv.patched_predictions(tiny, tok, PROMPTS, theta, layers, method="naive", return_logits=True)
    batch = llm.tokenize_left_padded(tok, PROMPTS)
    got = sweeps._sweep_kv(tiny, batch, theta, layers, "replace", lambda logits: logits.float(), min_rows=min_rows)
    torch.testing.assert_close(got, naive, atol=1e-5, rtol=1e-5)
    ids = sweeps._sweep_kv(tiny, batch, theta, layers, "replace", lambda logits: logits.argmax(-1), min_rows=min_rows,
                       max_rows=3)
    assert torch.equal(ids, naive.argmax(-1))
    # the skipped blocks are put back
    assert all("forward" not in block.__dict__ for block in llm.decoder_blocks(tiny))


def test_kv_sweep_with_a_one_token_prompt_falls_back_to_batched(tok):
    model = testing.tiny_random_model("llama", n_layers=3, seed=8)
    prompts = ["q", "ab->", "hello->"]
    theta = torch.randn(3, 3, 32, generator=torch.Generator().manual_seed(2))
    kv = tv.patched_predictions(model, tok, prompts, theta, method="kv", max_rows=4, return_logits=True)
    naive = tv.patched_predictions(model, tok, prompts, theta, method="naive", return_logits=True)
    torch.testing.assert_close(kv, naive, atol=1e-5, rtol=1e-5)
    assert torch.equal(tv.patched_predictions(model, tok, prompts, theta, method="kv", max_rows=4), naive.argmax(-1))


def test_layer_patches_rows_and_bad_inputs():
    theta = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    patches = tv.layer_patches(2, theta, [5, 1, 3])
    assert set(patches) == {5, 1, 3}
    rows, vectors = patches[1]
    assert rows.tolist() == [1, 4] and torch.equal(vectors, theta[:, 1])
    assert "layer_patches" in tv.__all__
    with pytest.raises(ValueError, match="theta"):
        tv.layer_patches(3, theta, [5, 1, 3])
    with pytest.raises(ValueError, match="theta"):
        tv.layer_patches(2, theta, [5, 1])
    with pytest.raises(ValueError, match="repeats"):
        tv.layer_patches(2, theta, [1, 1, 3])
    with pytest.raises(TypeError, match="theta"):
        tv.layer_patches(2, theta[0], [1, 2, 3])
    with pytest.raises(TypeError, match="layers"):
        tv.layer_patches(2, theta, 3)
    with pytest.raises(ValueError, match="n_prompts"):
        tv.layer_patches(0, theta, [1, 2, 3])


def test_task_vectors_for_equals_the_loop_by_hand(tok, monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path))
    model = testing.tiny_random_model("llama", n_layers=3, seed=9)
    names = ["to_upper", "next_letter"]
    got = tv.task_vectors_for(model, tok, names, n_sets=3, n_demos=2, seed=5, n_dummies=2)
    assert got.shape == (2, 3, 3, 32) and got.dtype == torch.float32
    rng = np.random.default_rng(5)  # what Chapters 7 and 8 did by hand
    for i, name in enumerate(names):
        task = lang_tasks.filter_single_token(lang_tasks.TASKS[name], tok)
        sets = lang_tasks.sample_demonstrations(task, 3, 2, rng)
        dummies = [[x for x, _ in lang_tasks.sample_dummy_queries(task, [*d, q], 2, rng)] for d, q in sets]
        fmt = dataclasses.replace(tv.FORMATS["example"], output_space=task.leading_space is not False)
        assert torch.equal(got[i], tv.extract_task_vectors(model, tok, [d for d, _ in sets], dummies, fmt))
    assert len(list(tmp_path.glob("results/protocol._task_vectors-*.pkl"))) == 1
    one = tv.task_vectors_for(model, tok, names, n_sets=3, n_demos=2, seed=5, layers=1)
    assert torch.equal(one, got[:, :, 1])
    again = tv.task_vectors_for(model, tok, names, n_sets=3, n_demos=2, seed=5, layers=[2, 0], cache=False)
    assert torch.equal(again, got[:, :, [2, 0]])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tasks": []}, ValueError, "at least one"),
        ({"tasks": "to_upper"}, TypeError, "tasks"),
        ({"tasks": [3]}, TypeError, r"tasks\[0\]"),
        ({"tasks": ["no_such_task"]}, ValueError, "no_such_task"),
        ({"n_sets": 0}, ValueError, "n_sets"),
        ({"n_demos": 40}, ValueError, "n_demos"),
        ({"n_dummies": 0}, ValueError, "n_dummies"),
        ({"layers": [2]}, ValueError, "layers"),
        ({"seed": -3}, ValueError, "seed"),
        ({"fmt": "nope"}, ValueError, "fmt"),
        ({"cache": "yes"}, TypeError, "cache"),
    ],
)
def test_task_vectors_for_bad_inputs(small, tok, kwargs, error, match):
    args = {"tasks": ["to_upper"], "n_sets": 2, "n_demos": 2, "cache": False}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        tv.task_vectors_for(small, tok, **args)


def test_results_carry_per_query_hits_and_intervals():
    model, tokenizer = testing.tiny_random_model("llama", n_layers=2, seed=3), testing.CharTokenizer()
    result = tv.evaluate(model, tokenizer, LETTERS, n_demos=2, n_dev=3, n_test=4, n_baseline=5, progress=False)
    assert {k: len(v) for k, v in result.hits.items()} == {"tv": 4, "icl": 4, "baseline": 5}
    for which in ("tv", "icl", "baseline"):
        interval = result.interval(which)
        assert interval.estimate == getattr(result, which) and interval.low <= interval.estimate <= interval.high
    with pytest.raises(ValueError, match="which must be one of"):
        result.interval("ICL")
    conflict = tv.conflicting_tasks(model, tokenizer, LETTERS, [(x, x.upper()) for x, _ in LETTERS], layer=1,
                                    n_sets=3, n_demos=2)
    assert conflict.interval("b_after").estimate == conflict.b_after and len(conflict.hits["a_before"]) == 3
