"""Tiny stand-ins for the unit tests: a character tokenizer and randomly initialised Hugging Face models.

Nothing here is downloaded. :class:`CharTokenizer` is the smallest tokenizer-like object the Part II code accepts
(``encode``, ``decode``, ``pad_token_id``, ``bos_token_id``); :func:`tiny_random_model` builds a two-block model of
any architecture that :mod:`icllib.llm` takes apart, so that every code path runs in milliseconds.
"""

from __future__ import annotations

import torch

__all__ = ["CharTokenizer", "tiny_random_model"]

class CharTokenizer:
    """One token per printable ASCII character, plus pad (0), BOS (1) and EOS (2).

    The smallest tokenizer-like object the Part II code accepts: ``encode``, ``decode``, ``pad_token_id``,
    ``bos_token_id``. Tests pair it with :func:`tiny_random_model`; Part III's small transformer can use it too.
    """

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    _offset = 3

    def __init__(self) -> None:
        self.vocab_size = self._offset + 95  # characters 32..126
        self.padding_side = "left"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = []
        for char in text:
            code = ord(char) if char != "\n" else ord("~")  # newline shares a slot: the vocabulary stays ASCII
            if not 32 <= code <= 126:
                raise ValueError(f"CharTokenizer handles printable ASCII only, got {char!r}")
            ids.append(code - 32 + self._offset)
        return ([self.bos_token_id] if add_special_tokens else []) + ids

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        elif isinstance(ids, int):
            ids = [ids]
        return "".join(chr(i - self._offset + 32) for i in ids if i >= self._offset)


_TINY_ARCHS = ("llama", "gpt_neox", "gptj", "gpt2")


def tiny_random_model(arch: str = "llama", n_layers: int = 2, hidden: int = 32, vocab_size: int = 128, seed: int = 0):
    """A randomly initialised Hugging Face causal LM of the given architecture, small enough for unit tests.

    ``arch`` is one of ``"llama"`` (SmolLM2's layout), ``"gpt_neox"`` (Pythia), ``"gptj"``, ``"gpt2"``; nothing is
    downloaded. Eval mode, gradients off, float32.
    """
    from transformers import (AutoModelForCausalLM, GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig)

    arch = str(arch)
    if arch not in _TINY_ARCHS:
        raise ValueError(f"arch must be one of {list(_TINY_ARCHS)}, got {arch!r}")
    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             tie_word_embeddings=True, **common)
    elif arch == "gpt_neox":
        config = GPTNeoXConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=n_layers,
                               num_attention_heads=4, max_position_embeddings=256, **common)
    elif arch == "gptj":
        config = GPTJConfig(n_embd=hidden, n_layer=n_layers, n_head=4, rotary_dim=4, n_positions=256, **common)
    else:
        config = GPT2Config(n_embd=hidden, n_layer=n_layers, n_head=4, n_positions=256, **common)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the weights are a pure function of `seed`; the global stream is restored below
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    finally:
        torch.random.set_rng_state(state)
    model.eval()
    model.requires_grad_(False)
    return model
