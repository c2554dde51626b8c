"""The two interventions of function vectors written with ``nnsight`` (Fiotto-Kaufman et al.), a tool many
interpretability researchers use, to show how the book's hooks map onto it.

``nnsight`` wraps a model; inside ``with wrapped.trace(...)`` every submodule's ``.input`` and ``.output`` can be
read and assigned, and the forward runs with those edits when the block exits. The two functions below are the
one-head patch of the causal-mediation pass and the function-vector addition, each a few lines:

- :func:`indirect_effect`: ``CIE(a_{lj} | p)``, by assigning the head's slice of the output projection's input at
  the last position (``icllib``: :func:`icllib.function_vectors.write_heads` as an ``edit_input`` of ``trace``);
- :func:`add_vector_predictions`: the greedy next token with ``v`` added to block ``l``'s output at the last
  position (``icllib``: :func:`icllib.task_vectors.patch_last_position` with ``mode="add"``).

The modules are found by the same structural search as the rest of the package
(:func:`icllib.function_vectors.heads.attention_outputs`, :func:`icllib.llm.model_parts`), and reached in the wrapped
model by their path. ``nnsight`` is an optional
dependency (the ``test`` and ``book`` extras) and is imported here only when a function runs: importing it patches
``torch.Tensor.backward`` for the whole process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from icllib._checks import as_float_tensor, check_int
from icllib.llm import is_hf_model, model_device, model_parts, position_ids_from_mask, tokenize_left_padded
from icllib.task_vectors import PromptFormat, check_format
from icllib.function_vectors.heads import attention_outputs

__all__ = ["indirect_effect", "add_vector_predictions"]


def _wrap(model):
    if not is_hf_model(model):
        raise ValueError("the nnsight versions take a Hugging Face model (they read .logits of its output)")
    from nnsight import NNsight  # optional dependency, imported on use (see the module docstring)

    return NNsight(model)


def _envoy(wrapped, path: str):
    """The ``nnsight`` envoy of the submodule at ``path`` (``"model.layers.3.self_attn.o_proj"``)."""
    envoy = wrapped
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _inputs(model, tokenizer, prompts: Sequence[str], fmt: PromptFormat) -> dict[str, torch.Tensor]:
    batch = tokenize_left_padded(tokenizer, list(prompts), add_bos=fmt.bos, device=model_device(model))
    return {**batch, "position_ids": position_ids_from_mask(batch["attention_mask"])}


def indirect_effect(model, tokenizer, prompt: str, answer: int, layer: int, head: int, value: torch.Tensor,
                    fmt: PromptFormat | str = "example") -> float:
    """``P(answer | prompt, a_{layer,head} := value) - P(answer | prompt)`` at the last position, with ``nnsight``."""
    fmt, outputs = check_format(fmt), attention_outputs(model)
    layer = check_int("layer", layer, minimum=0, maximum=outputs.n_layers - 1)
    head = check_int("head", head, minimum=0, maximum=outputs.n_heads - 1)
    value = as_float_tensor("value", value, ndim=1)
    if value.shape[0] != outputs.head_dim:
        raise ValueError(f"value must have shape ({outputs.head_dim},), got {tuple(value.shape)}")
    wrapped, inputs = _wrap(model), _inputs(model, tokenizer, [prompt], fmt)
    projection = _envoy(wrapped, outputs.names[layer])
    width = slice(head * outputs.head_dim, (head + 1) * outputs.head_dim)
    with torch.no_grad():
        with wrapped.trace(**inputs):
            clean = wrapped.output.logits[:, -1].save()
        with wrapped.trace(**inputs):
            projection.input[:, -1, width] = value  # the head's slice of W_O's input, last token
            patched = wrapped.output.logits[:, -1].save()
    p_clean, p_patched = (torch.softmax(t.float(), -1)[0, answer] for t in (clean, patched))
    return float(p_patched - p_clean)


def add_vector_predictions(model, tokenizer, prompts: Sequence[str], vector: torch.Tensor, layer: int,
                           fmt: PromptFormat | str = "example") -> torch.Tensor:
    """Greedy next-token ids (n,) with ``vector`` added to block ``layer``'s output at the last position, with
    ``nnsight``."""
    fmt, parts = check_format(fmt), model_parts(model)
    layer = check_int("layer", layer, minimum=0, maximum=parts.n_layers - 1)
    vector = as_float_tensor("vector", vector, ndim=1)
    if vector.shape[0] != parts.hidden_size:
        raise ValueError(f"vector must have shape ({parts.hidden_size},), got {tuple(vector.shape)}")
    wrapped, inputs = _wrap(model), _inputs(model, tokenizer, prompts, fmt)
    path = next(name for name, module in model.named_modules() if module is parts.blocks[layer])
    block = _envoy(wrapped, path)
    with torch.no_grad(), wrapped.trace(**inputs):
        output = block.output
        hidden = output[0] if isinstance(output, tuple) else output  # a tensor in transformers 5, a tuple before
        hidden[:, -1] += vector.to(hidden.dtype)
        logits = wrapped.output.logits[:, -1].save()
    return logits.argmax(-1).cpu()
