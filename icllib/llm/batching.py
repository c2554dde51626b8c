"""Left-padded batches and the one forward pass the task-vector code runs on every batch.

Left padding puts every prompt's last token at position ``-1``, where the task vector is read and patched; positions
are counted over real tokens only, so padding shifts nothing. :func:`forward_last` returns the logits at that last
position (and, on request, the KV cache) for a Hugging Face model or for any model whose
``forward(input_ids, attention_mask=None, position_ids=None)`` returns logits ``(batch, time, vocab)``; such a
model's tokenizer needs ``encode(text) -> list[int]``, ``decode(ids) -> str`` and ``pad_token_id``
(``bos_token_id`` when ``add_bos`` is used).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from icllib._checks import check_bool
from icllib.llm.parts import is_hf_model

__all__ = ["encode", "tokenize_left_padded", "position_ids_from_mask", "forward_last"]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without any special token added by the tokenizer."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # a tokenizer-like object without the keyword
        return list(tokenizer.encode(text))


def tokenize_left_padded(
    tokenizer, texts: Sequence[str], add_bos: bool = False, device: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` into one left-padded batch: ``{"input_ids", "attention_mask"}`` of shape (B, T).

    Left padding puts every prompt's last token at position ``-1``, where the task vector is read and patched.
    ``add_bos`` puts the tokenizer's BOS token first (no tokenizer here adds it by itself, so it is explicit).
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts must hold at least one string, got an empty list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a string, got {type(text).__name__}")
    check_bool("add_bos", add_bos)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ValueError("tokenizer has no pad_token_id; load it with icllib.llm.load_model or set a pad token")
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos and bos is None:
        raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
    rows = []
    for i, text in enumerate(texts):
        ids = ([bos] if add_bos else []) + encode(tokenizer, text)
        if not ids:
            raise ValueError(f"texts[{i}] = {text!r} gives no tokens")
        rows.append(ids)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, width - len(ids):] = 1
    if device is not None:
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, ... counted over real tokens only, so left padding does not shift absolute positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def _accepts(fn, keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return keyword in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def forward_last(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    past_key_values=None,
    position_ids: torch.Tensor | None = None,
    use_cache: bool = False,
    logits: bool = True,
):
    """One forward pass; returns ``(logits at the last position (B, V), cache or None)``.

    Positions come from the attention mask (:func:`position_ids_from_mask`), and with a cache ``attention_mask``
    covers cached plus new tokens. For a non-Hugging-Face model, ``forward(input_ids, attention_mask=...,
    position_ids=...)`` is called with whichever keywords it accepts; without an ``attention_mask`` keyword the batch
    must be unpadded. ``logits=False`` returns ``(None, cache or None)`` and, for a Hugging Face model, skips the
    unembedding (a pass run only for its KV cache or for hooks on the blocks).

    Called on every batch, so the checks here read shapes and dtypes only, never the values.
    """
    _check_batch(model, input_ids, attention_mask, past_key_values)
    check_bool("use_cache", use_cache)
    check_bool("logits", logits)
    with torch.no_grad():
        if not logits and is_hf_model(model) and model.base_model is not model:
            return None, _base_forward(model.base_model, input_ids, attention_mask, past_key_values, position_ids,
                                       use_cache)
        out = _forward_last(model, input_ids, attention_mask, past_key_values, position_ids, use_cache)
        return out if logits else (None, out[1])


def _check_batch(model, input_ids, attention_mask, past_key_values) -> None:
    """Types and shapes of :func:`forward_last`'s inputs (metadata only: cheap enough for every batch)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(value).__name__}")
        if value.ndim != 2:
            raise ValueError(f"{name} must have shape (batch, time), got {tuple(value.shape)}")
        if value.dtype.is_floating_point or value.dtype.is_complex:
            raise TypeError(f"{name} must be an integer (or bool) tensor, got dtype {value.dtype}")
    (batch, width), (mask_batch, mask_width) = input_ids.shape, attention_mask.shape
    # With a cache the mask covers the cached tokens too, so it may be wider than the new ids.
    if mask_batch != batch or mask_width < width or (past_key_values is None and mask_width != width):
        wider = " or wider (it covers the cached tokens too)" if past_key_values is not None else ""
        raise ValueError(f"attention_mask must have shape {(batch, width)}{wider} to match input_ids, "
                         f"got {tuple(attention_mask.shape)}")


def _hf_kwargs(input_ids, attention_mask, past_key_values, position_ids, use_cache) -> dict:
    """Keyword arguments of a Hugging Face forward, positions taken from the mask when not given."""
    if position_ids is None:
        position_ids = position_ids_from_mask(attention_mask)[:, -input_ids.shape[1]:]
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache)
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    return kwargs


def _base_forward(base, input_ids, attention_mask, past_key_values, position_ids, use_cache):
    """The decoder stack without the unembedding (same blocks, same cache); returns the cache or None."""
    out = base(**_hf_kwargs(input_ids, attention_mask, past_key_values, position_ids, use_cache))
    return out.past_key_values if use_cache else None


def _forward_last(model, input_ids, attention_mask, past_key_values, position_ids, use_cache):
    if is_hf_model(model):
        kwargs = _hf_kwargs(input_ids, attention_mask, past_key_values, position_ids, use_cache)
        if _accepts(model.forward, "logits_to_keep"):
            # The unembedding of the other positions is wasted work. An index tensor (not the int 1) makes the
            # slice of the last position contiguous: on CPU a strided (B, 1, d) input sends the head's matmul
            # down a broadcast bmm path that is about 8 times slower than the plain product (same logits). A CPU
            # index works whichever device (device_map="auto") holds the last hidden state.
            last = input_ids.shape[1] - 1
            kwargs["logits_to_keep"] = 1 if last == 0 else torch.tensor([last])
        out = model(**kwargs)
        return out.logits[:, -1, :], (out.past_key_values if use_cache else None)
    if past_key_values is not None or use_cache:
        raise ValueError("KV caches are only supported for Hugging Face models")
    kwargs = {}
    if _accepts(model.forward, "attention_mask"):
        kwargs["attention_mask"] = attention_mask
    elif not bool(attention_mask.all()):
        raise ValueError(
            f"{type(model).__name__}.forward takes no attention_mask, so the batch must not be padded"
        )
    if _accepts(model.forward, "position_ids"):
        kwargs["position_ids"] = (position_ids if position_ids is not None
                                  else position_ids_from_mask(attention_mask)[:, -input_ids.shape[1]:])
    out = model(input_ids, **kwargs)
    logits = out.logits if hasattr(out, "logits") else out
    return logits[:, -1, :], None
