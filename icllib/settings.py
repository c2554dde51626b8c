"""The book's run-time switches, read from the environment in one place.

``ICL_FULL=1``   run every experiment at the paper's size (CI runs the smaller default size).
``ICL_MODEL=id`` use another Hugging Face causal LM instead of the offline default (Part II and III).
``ICL_DEVICE``   torch device for the LLM chapters (default: ``cuda`` when available, else ``cpu``).
``ICL_DTYPE``    weights and activations of the LLM: ``float32`` (default), ``bfloat16`` or ``float16``.
``ICL_CACHE_DIR`` where results and de-quantised weights are cached (default: ``.cache/icllib`` in the
repository checkout, else ``~/.cache/icllib``).
"""

from __future__ import annotations

import os
from pathlib import Path


def full_size() -> bool:
    """True when ``ICL_FULL=1``: chapters then run the paper's sizes."""
    return os.environ.get("ICL_FULL", "0").strip() == "1"


def model_name() -> str | None:
    """The model named by ``ICL_MODEL``, or ``None`` for the offline default."""
    name = os.environ.get("ICL_MODEL", "").strip()
    return name or None


def device() -> str:
    """The torch device for LLM work: ``ICL_DEVICE``, else ``cuda`` when available, else ``cpu``."""
    explicit = os.environ.get("ICL_DEVICE", "").strip()
    if explicit:
        return explicit
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


_DTYPES = ("float32", "bfloat16", "float16")


def dtype() -> str:
    """The LLM's dtype named by ``ICL_DTYPE`` (default ``float32``; ``bfloat16`` halves the cost of a full-size run
    on a CPU with bfloat16 instructions and on a GPU, and moves accuracies by a few hundredths)."""
    name = os.environ.get("ICL_DTYPE", "").strip() or "float32"
    if name not in _DTYPES:
        raise ValueError(f"ICL_DTYPE must be one of {list(_DTYPES)}, got {name!r}")
    return name


def repository_root() -> Path | None:
    """The checkout that holds this package (editable install), or ``None`` for a plain install."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "chapters").is_dir() else None


def cache_dir() -> Path:
    """Root of the on-disk cache (created on demand)."""
    explicit = os.environ.get("ICL_CACHE_DIR", "").strip()
    if explicit:
        path = Path(explicit).expanduser()
    elif (root := repository_root()) is not None:
        path = root / ".cache" / "icllib"
    else:
        path = Path.home() / ".cache" / "icllib"
    path.mkdir(parents=True, exist_ok=True)
    return path
