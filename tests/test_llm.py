"""Tests of icllib.llm: loading the offline default, model parts of every architecture, left-padded batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from icllib import llm, testing
from icllib.llm import loading

ARCHS = ["llama", "gpt_neox", "gptj", "gpt2"]


def test_public_names_are_importable_from_the_package():
    """The package re-exports every public name of its three modules (chapters import them as llm.X)."""
    from icllib.llm import batching, parts

    for module in (loading, parts, batching):
        for name in module.__all__:
            assert getattr(llm, name) is getattr(module, name), name
    assert set(llm.__all__) == {*loading.__all__, *parts.__all__, *batching.__all__}


# ----------------------------------------------------------------------------------------------------------------
# The offline default model
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gguf_pair():
    """The default model de-quantised straight from the GGUF file (the reference for the cache)."""
    return llm.load_default_from_gguf(torch.float32)


@pytest.fixture(scope="module")
def default_pair(gguf_pair):
    """The default model through load_model; fills the weight cache from the GGUF load when it is empty."""
    folder = llm.default_cache_folder()
    if not (folder / "complete").is_file():
        loading._write_cache(folder, *gguf_pair)  # the same step load_model takes, without a second de-quantisation
    return llm.load_model()


def test_default_model_loads(default_pair):
    model, tokenizer = default_pair
    parts = llm.model_parts(model)
    assert (parts.n_layers, parts.hidden_size) == (30, 576)
    assert llm.n_layers(model) == 30 and llm.hidden_size(model) == 576
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    assert tokenizer.bos_token_id == 1
    # tied embeddings survive the cache
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_default_cache_is_reused(default_pair):
    folder = llm.default_cache_folder()
    assert (folder / "complete").is_file() and (folder / "model.safetensors").is_file()
    again, _ = llm.load_model("smollm2-135m-instruct")
    first, _ = default_pair
    for (name, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_cached_logits_match_gguf(default_pair, gguf_pair):
    model, tokenizer = default_pair
    reference, _ = gguf_pair
    texts = ["example:a->b\nexample:c->", "The capital of France is", "x"]
    batch = llm.tokenize_left_padded(tokenizer, texts)
    cached, _ = llm.forward_last(model, **batch)
    direct, _ = llm.forward_last(reference, **batch)
    # Weights are bitwise equal; the logits differ only by float rounding that depends on memory alignment.
    assert torch.equal(model.state_dict()["model.norm.weight"], reference.state_dict()["model.norm.weight"])
    torch.testing.assert_close(cached, direct, atol=1e-4, rtol=1e-5)
    assert torch.equal(cached.argmax(-1), direct.argmax(-1))


def test_default_model_follows_a_pattern(default_pair):
    model, tokenizer = default_pair
    batch = llm.tokenize_left_padded(tokenizer, ["example:a->A\nexample:b->B\nexample:c->C\nexample:d->"])
    logits, _ = llm.forward_last(model, **batch)
    assert tokenizer.decode(logits.argmax(-1)).strip() == "D"


def test_hub_id_without_network_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # _load_hub looks the probe up in icllib.llm.loading, so that is where it is replaced.
    monkeypatch.setattr(loading, "_network_reachable", lambda host, timeout=3.0: False)
    with pytest.raises(ConnectionError, match="name=None"):
        llm.load_model("EleutherAI/pythia-2.8b")


def test_network_probe_gives_up():
    # An address from TEST-NET-1 (RFC 5737) never answers; the probe must return False, not hang.
    assert loading._network_reachable("192.0.2.1", timeout=0.5) is False


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"name": 3}, TypeError),
        ({"name": "smollm"}, ValueError),
        ({"dtype": torch.int64}, ValueError),
        ({"dtype": "float8"}, ValueError),
        ({"dtype": 3}, TypeError),
        ({"device": "gpu"}, ValueError),
        ({"device": "tpu"}, ValueError),
        ({"device": 5}, TypeError),
    ],
)
def test_load_model_bad_inputs(kwargs, error):
    with pytest.raises(error):
        llm.load_model(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA exists here")
def test_load_model_missing_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        llm.load_model(device="cuda")


# ----------------------------------------------------------------------------------------------------------------
# Model parts on tiny random models of each architecture
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    return testing.tiny_random_model(request.param, n_layers=3, seed=1)


def test_parts_reproduce_logits(tiny):
    """final_norm then unembedding of the last block's output gives the model's logits."""
    parts = llm.model_parts(tiny)
    assert parts.n_layers == 3 and parts.hidden_size == 32
    captured = {}
    handle = parts.blocks[-1].register_forward_hook(
        lambda module, args, out: captured.__setitem__("h", out[0] if isinstance(out, tuple) else out)
    )
    ids = torch.tensor([[5, 9, 17, 33, 4]])
    try:
        logits = tiny(input_ids=ids).logits
    finally:
        handle.remove()
    recomputed = parts.unembedding(parts.final_norm(captured["h"]))
    torch.testing.assert_close(recomputed, logits, atol=1e-5, rtol=1e-5)


def test_left_padding_does_not_change_the_last_logits(tiny):
    tokenizer = testing.CharTokenizer()
    texts = ["a->b", "hello->world,x", "q"]
    batch = llm.tokenize_left_padded(tokenizer, texts)
    together, _ = llm.forward_last(tiny, **batch)
    for i, text in enumerate(texts):
        alone, _ = llm.forward_last(tiny, **llm.tokenize_left_padded(tokenizer, [text]))
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-5)


def test_kv_cache_continuation_matches_full_forward(tiny):
    tokenizer = testing.CharTokenizer()
    batch = llm.tokenize_left_padded(tokenizer, ["ab->c", "hello->"])
    full, _ = llm.forward_last(tiny, **batch)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    _, cache = llm.forward_last(tiny, ids[:, :-1], mask[:, :-1], use_cache=True)
    step, _ = llm.forward_last(tiny, ids[:, -1:], mask, past_key_values=cache)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)


class _Toy(nn.Module):
    """A non-Hugging-Face causal model: embedding, blocks, norm, unembedding, no attention mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(128, 8)
        self.layers = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 128)

    def model_parts(self) -> llm.ModelParts:
        return llm.ModelParts(blocks=self.layers, final_norm=self.norm, unembedding=self.head)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = h + layer(h)
        return self.head(self.norm(h))


def test_non_hf_model_plugs_in():
    toy = _Toy()
    parts = llm.model_parts(toy)
    assert parts.n_layers == 2 and parts.hidden_size == 8
    tokenizer = testing.CharTokenizer()
    logits, cache = llm.forward_last(toy, **llm.tokenize_left_padded(tokenizer, ["abc", "xyz"]))
    assert logits.shape == (2, 128) and cache is None
    with pytest.raises(ValueError, match="padded"):
        llm.forward_last(toy, **llm.tokenize_left_padded(tokenizer, ["abc", "x"]))
    with pytest.raises(ValueError, match="KV caches"):
        llm.forward_last(toy, **llm.tokenize_left_padded(tokenizer, ["abc"]), use_cache=True)


def test_model_parts_bad_inputs():
    with pytest.raises(TypeError):
        llm.model_parts("gpt2")
    with pytest.raises(ValueError, match="layout"):
        llm.model_parts(nn.Linear(2, 2))

    class Wrong(nn.Module):
        def model_parts(self):
            return (1, 2, 3)

    with pytest.raises(TypeError, match="ModelParts"):
        llm.model_parts(Wrong())
    with pytest.raises(ValueError, match="arch"):
        testing.tiny_random_model("mamba")


# ----------------------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------------------
def test_tokenize_left_padded_layout():
    tokenizer = testing.CharTokenizer()
    batch = llm.tokenize_left_padded(tokenizer, ["ab", "abcd"], add_bos=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape == (2, 5)
    assert mask[0].tolist() == [0, 0, 1, 1, 1] and mask[1].tolist() == [1, 1, 1, 1, 1]
    assert ids[0, :2].tolist() == [0, 0] and ids[0, 2].item() == tokenizer.bos_token_id
    assert tokenizer.decode(ids[1]) == "abcd"
    assert llm.position_ids_from_mask(mask)[0].tolist() == [0, 0, 0, 1, 2]


@pytest.mark.parametrize(
    "texts, kwargs, error",
    [
        ([], {}, ValueError),
        ("abc", {}, TypeError),
        (["a", 3], {}, TypeError),
        ([""], {}, ValueError),
        (["a"], {"add_bos": 1}, TypeError),
    ],
)
def test_tokenize_left_padded_bad_inputs(texts, kwargs, error):
    with pytest.raises(error):
        llm.tokenize_left_padded(testing.CharTokenizer(), texts, **kwargs)


def test_tokenize_needs_pad_and_bos():
    class NoPad(testing.CharTokenizer):
        pad_token_id = None

    class NoBos(testing.CharTokenizer):
        bos_token_id = None

    with pytest.raises(ValueError, match="pad"):
        llm.tokenize_left_padded(NoPad(), ["a"])
    with pytest.raises(ValueError, match="bos"):
        llm.tokenize_left_padded(NoBos(), ["a"], add_bos=True)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gptj", "gpt2"])
def test_forward_last_equals_the_full_logits_at_the_last_position(arch):
    """forward_last keeps only the last position's logits (an index, so the slice is contiguous): same values."""
    model = testing.tiny_random_model(arch, n_layers=2, seed=1)
    batch = llm.tokenize_left_padded(testing.CharTokenizer(), ["ab->c", "hello->", "q"])
    full = model(**batch, position_ids=llm.position_ids_from_mask(batch["attention_mask"])).logits[:, -1, :]
    last, _ = llm.forward_last(model, **batch)
    assert last.shape == full.shape and last.is_contiguous()
    torch.testing.assert_close(last, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gptj", "gpt2"])
def test_forward_last_without_logits_gives_the_same_cache_and_block_outputs(arch):
    """logits=False skips the unembedding only: the cache continues exactly as the one of a full pass."""
    model = testing.tiny_random_model(arch, n_layers=2, seed=2)
    batch = llm.tokenize_left_padded(testing.CharTokenizer(), ["ab->c", "hello->"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    full, _ = llm.forward_last(model, ids, mask)
    none, cache = llm.forward_last(model, ids[:, :-1], mask[:, :-1], use_cache=True, logits=False)
    assert none is None
    step, _ = llm.forward_last(model, ids[:, -1:], mask, past_key_values=cache)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    assert llm.forward_last(model, ids, mask, logits=False) == (None, None)
    with pytest.raises(TypeError, match="logits"):
        llm.forward_last(model, ids, mask, logits=1)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda ids, mask: ("ids", mask), TypeError, "input_ids"),
        (lambda ids, mask: (ids, mask.tolist()), TypeError, "attention_mask"),
        (lambda ids, mask: (ids[0], mask), ValueError, "input_ids"),
        (lambda ids, mask: (ids.float(), mask), TypeError, "input_ids"),
        (lambda ids, mask: (ids, mask.float()), TypeError, "attention_mask"),
        (lambda ids, mask: (ids, mask[:1]), ValueError, "attention_mask"),
        (lambda ids, mask: (ids, mask[:, 1:]), ValueError, "attention_mask"),
    ],
)
def test_forward_last_bad_inputs(change, error, match):
    model = testing.tiny_random_model("gpt2", n_layers=1, seed=0)
    batch = llm.tokenize_left_padded(testing.CharTokenizer(), ["ab->c", "hello->"])
    ids, mask = change(batch["input_ids"], batch["attention_mask"])
    with pytest.raises(error, match=match):
        llm.forward_last(model, ids, mask)


def test_forward_last_bad_switches_and_model():
    model = testing.tiny_random_model("gpt2", n_layers=1, seed=0)
    batch = llm.tokenize_left_padded(testing.CharTokenizer(), ["ab->c"])
    with pytest.raises(TypeError, match="use_cache"):
        llm.forward_last(model, **batch, use_cache=1)
    with pytest.raises(TypeError, match="model"):
        llm.forward_last("gpt2", **batch)
