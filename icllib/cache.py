"""On-disk cache of results, keyed by what was computed, from which arguments, by which source code.

A chapter wraps each expensive computation in :func:`cached_call` (or :func:`cached`); a rebuild of the book then
reads the result back instead of recomputing it. The key of an entry is made of

- the arguments: :func:`fingerprint` turns every argument (numbers, strings, arrays, tensors, dataclasses such as a
  task or a prompt format, a model loaded by :func:`icllib.llm.load_model`, a tokenizer, a generator's state, a
  function) into a stable JSON description, so equal calls share one entry and a changed argument never returns a
  stale value;
- the source: :func:`source_hash` hashes the ``icllib`` files that the computing function's module imports,
  directly or through other ``icllib`` modules, so an edit of the library recomputes what depends on it.

An entry that cannot be read back (truncated, corrupt, or pickled from classes that no longer exist) is recomputed
with a warning, never trusted. ``ICL_NO_CACHE=1`` turns reading off (results are still written). The entries are
pickles: they are written and read on one machine by its own user (the records of the full edition, which are
shared, use safe formats instead).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import hashlib
import inspect
import io
import json
import math
import os
import pickle
import time
import tokenize
import types
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from icllib.settings import cache_dir

T = TypeVar("T")

__all__ = ["fingerprint", "source_hash", "code_only", "closure", "closure_digest", "is_computation", "config_key",
           "cache_path", "cached", "cached_call", "timed_call", "not_in_key"]

_PACKAGE_ROOT = Path(__file__).resolve().parent
# Modules that cannot change a computed result (tables of the papers' numbers, what a page shows, how records and
# cache entries are stored and stamped, test stand-ins): editing them neither recomputes a cached result nor marks a
# record of the full edition as stale.
_NOT_COMPUTATION = ("icllib.papers", "icllib.book", "icllib.plotting", "icllib.records", "icllib.restamp",
                    "icllib.testing", "icllib.cache")
# Arguments that never change a result; functions name more with :func:`not_in_key`.
_ALWAYS_IGNORED = ("progress",)


# ----------------------------------------------------------------------------------------------------------------
# Which source computed a result
# ----------------------------------------------------------------------------------------------------------------
def _module_files() -> dict[str, Path]:
    """Every module of the package, ``{"icllib.task_vectors.forward": path, ...}``."""
    files = {}
    for path in sorted(_PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(_PACKAGE_ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    return files


def _imported_modules(name: str, filename: str, source: bytes, known: Mapping[str, Any]) -> set[str]:
    """The ``icllib`` modules that module ``name`` (``filename``, ``source``) imports (static: read from its syntax
    tree)."""
    package = name if filename.endswith("__init__.py") else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import: resolve it against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import icllib.a.b` also runs icllib.a and icllib
                target = target.rpartition(".")[0]
            while target:
                found.add(target)
                target = target.rpartition(".")[0]
    return found & set(known)


def code_only(source: bytes) -> bytes:
    """``source`` without what cannot change a result: comments, string statements (docstrings) and blank lines,
    and with trailing spaces removed. Read from the syntax tree and the tokens, which name the same spans on every
    Python version, so the hash of a file is the same on a laptop, in CI and on Colab."""
    text = source.decode("utf-8")
    lines = text.splitlines()
    spans = []  # (first line, first column, last line, last column), 1-based lines, character columns
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            spans.append((node.lineno, _char_column(lines, node.lineno, node.col_offset),
                          node.end_lineno, _char_column(lines, node.end_lineno, node.end_col_offset)))
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            spans.append((*token.start, *token.end))
    for first, start, last, end in sorted(spans, reverse=True):  # from the end, so earlier spans keep their places
        head, tail = lines[first - 1][:start], lines[last - 1][end:]
        lines[first - 1:last] = [head + tail]
    return "\n".join(line.rstrip() for line in lines if line.strip()).encode()


def _char_column(lines: list[str], lineno: int, byte_offset: int) -> int:
    """The syntax tree counts columns in UTF-8 bytes; the lines are characters."""
    return len(lines[lineno - 1].encode()[:byte_offset].decode())


def closure(roots: tuple[str, ...], sources: Mapping[str, tuple[str, bytes]]) -> set[str]:
    """The modules ``roots`` (those present in ``sources``) and every module of ``sources`` they import."""
    todo, seen = [r for r in roots if r in sources], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imported_modules(name, *sources[name], sources) - seen)
    return seen


def closure_digest(roots: tuple[str, ...], sources: Mapping[str, tuple[str, bytes]], code: bool = True) -> str:
    """The hash of the modules ``roots`` and of every module they import, from ``sources`` (``{module name:
    (file name, source)}``, the modules that can change a result). ``code``: hash :func:`code_only` of each file
    (the default); ``False`` hashes the raw bytes, as records made before 2026-12 did (to verify those)."""
    digest = hashlib.sha256()
    for name in sorted(closure(roots, sources)):
        source = sources[name][1]
        digest.update(name.encode() + b"\0" + (code_only(source) if code else source) + b"\0")
    return digest.hexdigest()[:16]


def is_computation(name: str) -> bool:
    """Whether editing module ``name`` can change a result (see ``_NOT_COMPUTATION``)."""
    return not any(name == m or name.startswith(m + ".") for m in _NOT_COMPUTATION)


@functools.lru_cache(maxsize=None)
def _closure_digest(roots: tuple[str, ...]) -> str:
    sources = {name: (str(path), path.read_bytes()) for name, path in _module_files().items() if is_computation(name)}
    return closure_digest(roots, sources)


def source_hash(*modules: str | types.ModuleType | Callable) -> str:
    """A hash of the source of the given ``icllib`` modules and of every ``icllib`` module they import.

    Each argument is a module, a module name or a function (its module is used); with none, the whole package.
    Imports are read statically from the files, so the hash changes exactly when the code of a file that the code
    can reach changes; comments, docstrings and blank lines do not count (:func:`code_only`). Modules that cannot
    change a result (the papers' tables, page helpers, record and cache storage, test stand-ins) are left out.
    """
    names = []
    for item in modules:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, types.ModuleType):
            names.append(item.__name__)
        elif callable(item) and getattr(item, "__module__", None):
            names.append(item.__module__)
        else:
            raise TypeError(f"modules must be modules, module names or functions, got {item!r}")
    if not names:
        names = list(_module_files())
    return _closure_digest(tuple(sorted(set(names))))


# ----------------------------------------------------------------------------------------------------------------
# What was computed from which arguments
# ----------------------------------------------------------------------------------------------------------------
def _digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def fingerprint(value: Any) -> Any:
    """A JSON-serialisable description of ``value`` that is equal for equal values (the cache key's material).

    Numbers, strings, ``None`` and containers describe themselves (floats exactly, by their ``repr``); arrays and
    tensors by dtype, shape and a hash of their bytes; dataclasses (tasks, prompt formats, configurations) by class
    and fields; a model by the name :func:`icllib.llm.load_model` recorded on it, its dtype and size (other models
    by a hash of their weights); a tokenizer by its class and name; random generators by their state; functions by
    module, name and source. Anything else raises ``TypeError`` naming its type.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return fingerprint(value.item())
    if isinstance(value, enum.Enum):
        return {"enum": f"{type(value).__qualname__}.{value.name}"}
    if isinstance(value, (list, tuple, range)):
        return [fingerprint(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"set": sorted(json.dumps(fingerprint(v), sort_keys=True) for v in value)}
    if isinstance(value, Mapping):
        return {"mapping": sorted([json.dumps(fingerprint(k), sort_keys=True), fingerprint(v)]
                                  for k, v in value.items())}
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous()
        raw = data.view(torch.uint8) if data.dtype == torch.bfloat16 else data
        return {"tensor": str(data.dtype), "shape": list(data.shape), "bytes": _digest_bytes(raw.numpy().tobytes())}
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"array": str(data.dtype), "shape": list(data.shape), "bytes": _digest_bytes(data.tobytes())}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value)}
    if isinstance(value, torch.device):
        return {"device": value.type}
    if isinstance(value, torch.Generator):
        return {"torch.Generator": _digest_bytes(value.get_state().numpy().tobytes())}
    if isinstance(value, np.random.Generator):
        return {"numpy.Generator": fingerprint(value.bit_generator.state)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: fingerprint(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"class": type(value).__qualname__, "fields": fields}
    if isinstance(value, torch.nn.Module):
        return _module_fingerprint(value)
    if callable(getattr(value, "encode", None)) and callable(getattr(value, "decode", None)):
        # A tokenizer read from a local folder (the de-quantised GGUF model under ICL_CACHE_DIR) is named by that
        # folder's name, not its path: moving the cache or the checkout must not change a key or a record's arguments.
        name = str(getattr(value, "name_or_path", ""))
        return {"tokenizer": type(value).__qualname__, "name": Path(name).name if Path(name).is_absolute() else name,
                "vocab": int(getattr(value, "vocab_size", 0) or 0)}
    if isinstance(value, types.MethodType):
        return {"method": value.__func__.__qualname__, "of": fingerprint(value.__self__)}
    if callable(value):
        return _function_fingerprint(value)
    raise TypeError(f"cannot fingerprint a value of type {type(value).__name__} for the cache key; pass plain data")


def _module_fingerprint(model: torch.nn.Module) -> dict:
    param = next(model.parameters(), None)
    described = {"model": type(model).__qualname__, "dtype": str(param.dtype) if param is not None else None,
                 "parameters": sum(p.numel() for p in model.parameters())}
    name = getattr(model, "icl_model_id", None)
    if name is not None:  # a model loaded by icllib.llm.load_model: its name identifies the weights
        return {**described, "name": name}
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(key.encode() + (data.view(torch.uint8) if data.dtype == torch.bfloat16 else data).numpy()
                      .tobytes())
    return {**described, "weights": digest.hexdigest()[:20]}


def _function_fingerprint(fn: Callable) -> dict:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # a builtin, or a function typed at an interactive prompt
        source = ""
    # Only the code: what a function reads from its closure or globals is not part of the key (pass it in).
    return {"function": f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}",
            "source": _digest_bytes(source.encode())}


# ----------------------------------------------------------------------------------------------------------------
# Reading and writing entries
# ----------------------------------------------------------------------------------------------------------------
def config_key(name: str, config: dict[str, Any], source: str | None = None) -> str:
    """A stable hex key for ``name``, a configuration dict and a source hash (default: the whole package)."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    text = json.dumps({"name": name, "source": source or source_hash(), "config": fingerprint(config)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_path(name: str, config: dict[str, Any], source: str | None = None) -> Path:
    """Where the result for ``(name, config, source)`` lives."""
    return cache_dir() / "results" / f"{name}-{config_key(name, config, source)}.pkl"


def _read(path: Path) -> tuple[bool, Any]:
    """``(True, value)`` for a readable entry; ``(False, None)`` (with a warning) for a corrupt one."""
    try:
        with path.open("rb") as handle:
            return True, pickle.load(handle)
    except Exception as err:  # noqa: BLE001 - any failure to unpickle means the entry cannot be trusted
        warnings.warn(f"cache entry {path.name} could not be read ({type(err).__name__}: {err}); recomputing it",
                      RuntimeWarning, stacklevel=3)
        return False, None


def _write(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        pickle.dump(value, handle, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written entry


def _entry(name: str, config: dict[str, Any], compute: Callable[[], T], depends: tuple) -> tuple[T, float]:
    """``(value, seconds the computation took when it ran)``, read from disk when present and readable."""
    path = cache_path(name, config, source_hash(*depends))
    if path.is_file() and os.environ.get("ICL_NO_CACHE", "0") != "1":
        ok, entry = _read(path)
        if ok and isinstance(entry, dict) and entry.keys() == {"value", "wall_s"}:
            return entry["value"], entry["wall_s"]
    start = time.perf_counter()
    value = compute()
    wall_s = time.perf_counter() - start
    _write(path, {"value": value, "wall_s": wall_s})
    return value, wall_s


def cached(name: str, config: dict[str, Any], compute: Callable[[], T], depends: tuple = ()) -> T:
    """Return ``compute()``, reading it from disk when this ``(name, config)`` was computed by the same source.

    ``config`` must hold every value that changes the result (anything :func:`fingerprint` accepts). ``depends``
    names the ``icllib`` modules or functions the computation uses (:func:`source_hash`); by default every module
    of the package, so any library edit recomputes the entry.
    """
    return _entry(name, config, compute, depends)[0]


def not_in_key(*names: str) -> Callable[[Callable], Callable]:
    """Decorator: arguments of the function that :func:`cached_call` leaves out of the key (they do not change the
    result, e.g. ``batch_size`` of an inference pass or ``method`` of an exact re-implementation)."""
    def mark(fn: Callable) -> Callable:
        fn.cache_ignore = tuple(names)
        return fn

    return mark


def cached_call(fn: Callable[..., T], /, *args, **kwargs) -> T:
    """``fn(*args, **kwargs)``, read from the cache when the same call was computed by the same source before.

    The key is derived from the call itself: ``fn``'s module and name, every bound argument with defaults filled in
    (:func:`fingerprint`; ``progress`` and the names given by :func:`not_in_key` are left out), and the source of
    ``fn``'s module and everything it imports from ``icllib`` (:func:`source_hash`). A generator passed in is keyed
    by its state and is not advanced when the result comes from the cache. A function defined outside ``icllib``
    is keyed by its source and its arguments only: values it reads from globals must be passed as arguments.
    """
    return timed_call(fn, *args, **kwargs)[0]


def timed_call(fn: Callable[..., T], /, *args, **kwargs) -> tuple[T, float]:
    """:func:`cached_call`, returning ``(value, seconds)``: how long the computation took when it actually ran."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    ignored = set(_ALWAYS_IGNORED) | set(getattr(fn, "cache_ignore", ()))
    config = {k: v for k, v in bound.arguments.items() if k not in ignored}
    module = getattr(fn, "__module__", "") or ""
    depends = (module,) if module.split(".")[0] == "icllib" else ()
    name = f"{module.rpartition('.')[2] or 'call'}.{fn.__qualname__}".replace("<", "").replace(">", "")
    if not depends:  # a function defined outside the library (a chapter's): key it by its own source too
        config["__function__"] = _function_fingerprint(fn)
    return _entry(name, config, lambda: fn(*args, **kwargs), depends)
