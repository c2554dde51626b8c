"""The parts of a causal LM that task vectors touch: decoder blocks, final norm, unembedding.

The task vector theta_l(S) of Hendel, Geva & Globerson (2023) is the residual stream after decoder block ``l`` at
the last position; it is read and overwritten there, and projected to the vocabulary through the final norm and the
unembedding. :func:`model_parts` finds these three parts in Llama-like models (SmolLM2, LLaMA, Mistral, Qwen),
GPT-NeoX/Pythia, GPT-J, GPT-2 and OPT, or asks a model that defines its own ``model_parts()`` method (Part III's
small transformer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ModelParts", "model_parts", "decoder_blocks", "final_norm", "unembedding", "n_layers", "hidden_size",
           "model_device", "is_hf_model"]


@dataclass(frozen=True)
class ModelParts:
    """The decoder blocks, the final norm and the unembedding of a causal LM.

    ``blocks[l]`` maps the residual stream h_{l-1} to h_l (0-based ``l``); the task vector theta_l(S) is block
    ``l``'s output at the last position. ``final_norm`` then ``unembedding`` turn a residual vector into logits.
    """

    blocks: Sequence[nn.Module]
    final_norm: nn.Module
    unembedding: nn.Module

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks L."""
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        """Width d of the residual stream."""
        weight = getattr(self.unembedding, "weight", None)
        if weight is None:
            raise AttributeError("the unembedding module has no weight; cannot infer the hidden size")
        return int(weight.shape[-1])


# (path to blocks, path to final norm) for each architecture family, tried in order.
_LAYOUTS = (
    ("model.layers", "model.norm"),  # Llama, SmolLM2, Mistral, Qwen2, Gemma
    ("gpt_neox.layers", "gpt_neox.final_layer_norm"),  # GPT-NeoX, Pythia
    ("transformer.h", "transformer.ln_f"),  # GPT-2, GPT-J, GPT-Neo
    ("model.decoder.layers", "model.decoder.final_layer_norm"),  # OPT
)


def _get_path(obj, path: str):
    for attr in path.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj


def model_parts(model) -> ModelParts:
    """Decoder blocks, final norm and unembedding of ``model`` (see :class:`ModelParts`).

    A model that defines ``model_parts()`` (a non-Hugging-Face model) is asked directly; otherwise the known
    Hugging Face layouts are tried.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    own = getattr(model, "model_parts", None)
    if callable(own):
        parts = own()
        if not isinstance(parts, ModelParts):
            raise TypeError(f"{type(model).__name__}.model_parts() must return icllib.llm.ModelParts")
        return parts
    unembedding = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for blocks_path, norm_path in _LAYOUTS:
        blocks, norm = _get_path(model, blocks_path), _get_path(model, norm_path)
        if isinstance(blocks, nn.ModuleList) and isinstance(norm, nn.Module) and unembedding is not None:
            return ModelParts(blocks=blocks, final_norm=norm, unembedding=unembedding)
    raise ValueError(
        f"model {type(model).__name__} has no known layout (Llama-like, GPT-NeoX, GPT-J, GPT-2, OPT); "
        "give it a model_parts() method returning icllib.llm.ModelParts"
    )


def decoder_blocks(model) -> Sequence[nn.Module]:
    """The L decoder blocks, in order."""
    return model_parts(model).blocks


def final_norm(model) -> nn.Module:
    """The norm applied to the residual stream before the unembedding."""
    return model_parts(model).final_norm


def unembedding(model) -> nn.Module:
    """The linear map from the (normed) residual stream to vocabulary logits."""
    return model_parts(model).unembedding


def n_layers(model) -> int:
    """Number of decoder blocks L."""
    return model_parts(model).n_layers


def hidden_size(model) -> int:
    """Width d of the residual stream."""
    return model_parts(model).hidden_size


def model_device(model) -> torch.device:
    """Device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


def is_hf_model(model) -> bool:
    """True for a Hugging Face ``PreTrainedModel`` (KV caches and ``logits_to_keep`` are then available)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)
