"""On-disk cache of results, keyed by a hash of the configuration and the library version.

A chapter wraps each expensive computation in :func:`cached`; a rebuild of the book then reads the result back
instead of recomputing it. The key covers every argument that changes the result, so a changed configuration
never returns a stale value. ``ICL_NO_CACHE=1`` turns reading off (results are still written).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from icllib import __version__
from icllib.settings import cache_dir

T = TypeVar("T")


def config_key(name: str, config: dict[str, Any]) -> str:
    """A stable hex key for ``name`` and a JSON-serialisable ``config`` (plus the library version)."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    try:
        text = json.dumps({"name": name, "version": __version__, "config": config}, sort_keys=True, default=str)
    except TypeError as err:  # pragma: no cover - json with default=str accepts everything
        raise TypeError(f"config must be JSON-serialisable: {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_path(name: str, config: dict[str, Any]) -> Path:
    """Where the result for ``(name, config)`` lives."""
    return cache_dir() / "results" / f"{name}-{config_key(name, config)}.pkl"


def cached(name: str, config: dict[str, Any], compute: Callable[[], T]) -> T:
    """Return ``compute()``, reading it from disk when this ``(name, config)`` was computed before."""
    path = cache_path(name, config)
    if path.is_file() and os.environ.get("ICL_NO_CACHE", "0") != "1":
        with path.open("rb") as handle:
            return pickle.load(handle)
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        pickle.dump(result, handle, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written entry
    return result
