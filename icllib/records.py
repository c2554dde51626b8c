"""The full edition: paper-size results recorded once, with their provenance, and replayed by every build.

A chapter routes each expensive computation through :func:`result`::

    history = records.result("ch03/four-layer", train_four_layer, seed=0, steps=STEPS)

What that does depends on the edition being built (:func:`mode`):

``live`` (default; ``ICL_FULL`` unset)
    compute at the chapter's CI size, through the on-disk cache (:func:`icllib.cache.cached_call`).
``record`` (``ICL_FULL=1 ICL_RECORD=1``, what ``make record`` sets)
    compute at the papers' size (cached, so a run cut off by a time limit resumes) and write the result into
    ``records/<chapter>/<name>.json`` (scalars, tables, provenance) and ``.npz`` (arrays), never pickle.
``replay`` (``ICL_FULL=1``)
    read the record. A missing record, or one made with other arguments, raises :class:`RecordError` naming the
    ``make record`` command: the full edition never starts a multi-hour computation by itself. A record listed
    in ``records/pending.json`` and not yet made comes back as a :class:`Pending` value, which the chapter shows
    as pending. A record made by other ``icllib`` source is used, with a visible note giving its commit and date.
``compute`` (``ICL_FULL=1 ICL_COMPUTE=1``)
    compute at the papers' size without writing a record (the explicit switch to recompute on the spot).

Results are plain data: numbers, strings, lists, tuples, dicts, numpy arrays and torch tensors, and dataclasses
defined in ``icllib`` (rebuilt field by field on reading; no code from a record is ever executed).
"""

from __future__ import annotations

import dataclasses
import datetime
import fnmatch
import hashlib
import importlib
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icllib import cache, settings

__all__ = ["RecordError", "Pending", "is_pending", "Record", "mode", "records_dir", "result", "read", "write",
           "pending", "describe_arguments", "provenance", "selected"]

_MODES = ("live", "record", "replay", "compute")
_FORMAT = 1  # bumped when the file layout changes


class RecordError(RuntimeError):
    """A full-edition record is missing or was made with other arguments (the message names ``make record``)."""


@dataclasses.dataclass(frozen=True)
class Pending:
    """A record that is listed as pending (``records/pending.json``): not computed yet, and never faked."""

    name: str
    command: str
    reason: str

    def __str__(self) -> str:
        return f"pending: {self.name} ({self.reason}); to make it: {self.command}"


def is_pending(value: Any) -> bool:
    """True for the :class:`Pending` stand-in of a record that has not been made."""
    return isinstance(value, Pending)


@dataclasses.dataclass(frozen=True)
class Record:
    """A record as read from disk: ``value`` (the result), ``arguments`` (what it was computed from, as JSON),
    ``provenance`` (commit, date, device, dtype, versions, wall time, source hash) and ``stale`` (made by other
    ``icllib`` source than the one reading it)."""

    name: str
    value: Any
    arguments: dict
    provenance: dict
    stale: bool


# ----------------------------------------------------------------------------------------------------------------
# Where and in which edition
# ----------------------------------------------------------------------------------------------------------------
def mode() -> str:
    """``"live"``, ``"record"``, ``"record-ci"``, ``"replay"`` or ``"compute"``, from ``ICL_FULL``, ``ICL_RECORD``
    and ``ICL_COMPUTE``. ``"record-ci"`` (``ICL_RECORD=1`` without ``ICL_FULL``) records the CI-size results too,
    under ``records/chNN/ci/``, for the reproduction table that sets both editions side by side."""
    recording = os.environ.get("ICL_RECORD", "").strip() == "1"
    if not settings.full_size():
        return "record-ci" if recording else "live"
    if recording:
        return "record"
    if os.environ.get("ICL_COMPUTE", "").strip() == "1":
        return "compute"
    return "replay"


def selected(name: str) -> bool:
    """Whether ``make record`` computes the record ``name``: all of them, unless ``ICL_RECORD_ONLY`` (``ONLY=`` in
    ``make record``) names some, as comma-separated shell patterns (``ch03/four-layer,ch10/grid/d8-*``). The others
    are read back (or stay pending), so that several processes can record disjoint parts of one chapter at once."""
    patterns = [p.strip() for p in os.environ.get("ICL_RECORD_ONLY", "").split(",") if p.strip()]
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def records_dir() -> Path:
    """``ICL_RECORDS_DIR``, else ``records/`` in the repository checkout."""
    explicit = os.environ.get("ICL_RECORDS_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    root = settings.repository_root()
    if root is None:
        raise RecordError("the full edition reads records/ from a checkout of the book's repository; clone it "
                          "(or set ICL_RECORDS_DIR)")
    return root / "records"


def _paths(name: str) -> tuple[Path, Path]:
    if not isinstance(name, str) or not name or name.startswith("/") or ".." in name or "\\" in name:
        raise ValueError(f"name must be a relative record name such as 'ch03/four-layer', got {name!r}")
    base = records_dir() / name
    # Names may hold dots (``ch09/train-tau0.5-seed1``): append the extension, never replace a "suffix".
    return base.with_name(base.name + ".json"), base.with_name(base.name + ".npz")


def ci_name(name: str) -> str:
    """Where the CI-size twin of record ``name`` lives: ``"ch05/tasks"`` -> ``"ch05/ci/tasks"``."""
    head, _, rest = name.partition("/")
    return f"{head}/ci/{rest}" if rest else f"ci/{head}"


def _chapter(name: str) -> str:
    head = name.split("/")[0]
    return head[2:] if head.startswith("ch") else head


def _command(name: str) -> str:
    return f"make record CHAPTERS={_chapter(name)}"


def pending() -> dict[str, dict]:
    """The records listed as pending: ``{name: {"command": ..., "reason": ...}}``, from ``records/pending.json``
    and each chapter's ``records/chNN/pending.json``."""
    listed: dict[str, dict] = {}
    root = records_dir()
    for path in sorted([root / "pending.json", *root.glob("*/pending.json")]):
        if path.is_file():
            listed.update(json.loads(path.read_text()))
    return listed


def _unlist(name: str) -> None:
    """Take a record that has just been made off the pending lists (it is no longer pending)."""
    root = records_dir()
    for path in [root / "pending.json", *root.glob("*/pending.json")]:
        if path.is_file():
            listed = json.loads(path.read_text())
            if name in listed:
                del listed[name]
                path.write_text(json.dumps(listed, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Encoding: plain data in JSON, arrays in .npz
# ----------------------------------------------------------------------------------------------------------------
def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        kind = "tensor" if isinstance(value, torch.Tensor) else "array"
        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).replace("torch.", "")
            value = value.detach().cpu()
            value = (value.float() if value.dtype == torch.bfloat16 else value).numpy()
        else:
            dtype = str(value.dtype)
        if value.dtype == object:
            raise TypeError("object arrays cannot be recorded (they would need pickle)")
        key = f"a{len(arrays)}"
        arrays[key] = np.ascontiguousarray(value)
        return {f"__{kind}__": key, "dtype": dtype}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith("icllib"):
            raise TypeError(f"only icllib dataclasses can be recorded, got {cls.__module__}.{cls.__qualname__}")
        fields = {f.name: _encode(getattr(value, f.name), arrays) for f in dataclasses.fields(value)}
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, arrays) for k, v in value.items()}
        return {"__items__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    raise TypeError(f"a record holds plain data (numbers, strings, containers, arrays, icllib dataclasses); "
                    f"got {type(value).__name__}")


def _dataclass(path: str) -> type:
    module, _, qualname = path.partition(":")
    if not module.startswith("icllib"):
        raise RecordError(f"record names a class outside icllib ({path}); refusing to read it")
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise RecordError(f"record names {path}, which is not a dataclass")
    return cls


def _decode(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if "__float__" in value:
        return float(value["__float__"])
    if "__array__" in value:
        return arrays[value["__array__"]]
    if "__tensor__" in value:
        tensor = torch.from_numpy(arrays[value["__tensor__"]].copy())
        return tensor.to(getattr(torch, value["dtype"]))
    if "__tuple__" in value:
        return tuple(_decode(v, arrays) for v in value["__tuple__"])
    if "__items__" in value:
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in value["__items__"]}
    if "__dataclass__" in value:
        cls = _dataclass(value["__dataclass__"])
        fields = {k: _decode(v, arrays) for k, v in value["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        obj = cls(**{k: v for k, v in fields.items() if k in init})
        for k, v in fields.items():
            if k not in init:
                object.__setattr__(obj, k, v)
        return obj
    return {k: _decode(v, arrays) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


# ----------------------------------------------------------------------------------------------------------------
# What a record was made from, and how
# ----------------------------------------------------------------------------------------------------------------
def _describe(value: Any) -> Any:
    """A readable JSON description of one argument (models by name only: precision and device are provenance)."""
    if isinstance(value, torch.nn.Module) and getattr(value, "icl_model_id", None):
        return {"model": value.icl_model_id}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _describe(v) for k, v in value.items()}
    return cache.fingerprint(value)


def describe_arguments(fn: Callable, *args, **kwargs) -> dict:
    """The bound arguments of ``fn(*args, **kwargs)`` (defaults filled, ``progress`` left out), as JSON: what a
    record is matched on."""
    bound = inspect.signature(fn).bind(*args, **kwargs)
    bound.apply_defaults()
    ignored = {"progress", *getattr(fn, "cache_ignore", ())}
    return json.loads(json.dumps({k: _describe(v) for k, v in bound.arguments.items() if k not in ignored},
                                 sort_keys=True))


def _git(*args: str) -> str:
    root = settings.repository_root()
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _device_name(used: str | torch.device | None = None) -> str:
    device = str(used) if used is not None else settings.device()
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _device_used(fn: Callable, args: tuple, kwargs: dict) -> str | torch.device:
    """The device a computation ran on, as far as its arguments say: a ``device`` argument, else the device of a
    model passed in, else the CPU (the book's small trainings and closed forms never leave it)."""
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
        bound.apply_defaults()
    except (TypeError, ValueError):
        return settings.device()
    if isinstance(bound.arguments.get("device"), (str, torch.device)):
        return bound.arguments["device"]
    for value in bound.arguments.values():
        if isinstance(value, torch.nn.Module):
            parameter = next(value.parameters(), None)
            if parameter is not None:
                return parameter.device
    return "cpu"


def provenance(fn: Callable, wall_s: float, device: str | torch.device | None = None) -> dict:
    """Commit, date, device (``device``, else ICL_DEVICE's), dtype, versions, wall time and the hash of the source
    that computed the record."""
    try:
        import transformers
        transformers_version = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        transformers_version = None
    return {
        # ICL_COMMIT names the commit of a clean tree copied to another machine (a GPU machine's copy may carry a
        # stale .git, or none); otherwise git says, and whether icllib differs from it
        "commit": os.environ.get("ICL_COMMIT", "").strip() or _git("rev-parse", "HEAD"),
        "dirty": False if os.environ.get("ICL_COMMIT", "").strip() else bool(_git("status", "--porcelain", "--",
                                                                                     "icllib")),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(device), "dtype": settings.dtype(), "torch": torch.__version__,
        "transformers": transformers_version, "python": platform.python_version(), "wall_s": round(wall_s, 3),
        "function": f"{fn.__module__}.{fn.__qualname__}", "source": _source(fn),
    }


def _source(fn: Callable) -> str:
    module = getattr(fn, "__module__", "") or ""
    if module.split(".")[0] == "icllib":
        return cache.source_hash(module)
    digest = hashlib.sha256(json.dumps(cache.fingerprint(fn), sort_keys=True).encode())
    return f"{cache.source_hash()}+{digest.hexdigest()[:8]}"  # a chapter's own function: its code and the library


# ----------------------------------------------------------------------------------------------------------------
# Reading and writing
# ----------------------------------------------------------------------------------------------------------------
def write(name: str, value: Any, arguments: dict, info: dict) -> Path:
    """Write one record atomically: ``<name>.json`` and, when it holds arrays, ``<name>.npz``."""
    json_path, npz_path = _paths(name)
    arrays: dict[str, np.ndarray] = {}
    document = {"format": _FORMAT, "name": name, "arguments": arguments, "provenance": info,
                "value": _encode(value, arrays)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if arrays:
        tmp = npz_path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(npz_path)
    elif npz_path.exists():
        npz_path.unlink()
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    tmp.replace(json_path)
    _unlist(name)
    return json_path


def read(name: str, source: str | None = None) -> Record:
    """Read a record (``source``: the current source hash, to tell whether the record is stale)."""
    json_path, npz_path = _paths(name)
    if not json_path.is_file():
        raise RecordError(f"no record {name!r} in {records_dir()}: make it with `{_command(name)}` (the full "
                          f"edition replays records and never computes them on the spot; ICL_COMPUTE=1 computes "
                          f"instead)")
    document = json.loads(json_path.read_text())
    arrays = {}
    if npz_path.is_file():
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    info = document["provenance"]
    stale = source is not None and info.get("source") != source
    return Record(name, _decode(document["value"], arrays), document["arguments"], info, stale)


def _note(record: Record) -> None:
    info = record.provenance
    text = (f"**Note.** The record `{record.name}` was made by older `icllib` source (commit "
            f"`{info.get('commit', '?')[:10]}`, {info.get('date', '?')}, {info.get('device', '?')}); the library "
            f"has changed since. Re-run `{_command(record.name)}` to refresh it.")
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:  # pragma: no cover - IPython comes with every notebook
        pass
    print(text.replace("**", "").replace("`", ""))


def result(name: str, fn: Callable, /, *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` in the edition being built (see the module docstring): computed and cached (live,
    compute), computed and written (record) or read back (replay)."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    json_path, _ = _paths(name)
    current = mode()
    if current in ("live", "compute"):
        return cache.cached_call(fn, *args, **kwargs)
    arguments = describe_arguments(fn, *args, **kwargs)
    if current in ("record", "record-ci") and not selected(name):
        current = "replay" if current == "record" else "live"  # outside ICL_RECORD_ONLY: read, never recompute
        if current == "live":
            return cache.cached_call(fn, *args, **kwargs)
    if current in ("record", "record-ci"):
        value, wall_s = cache.timed_call(fn, *args, **kwargs)  # resumable: a finished step is read back
        write(name if current == "record" else ci_name(name), value, arguments, provenance(fn, wall_s, _device_used(fn, args, kwargs)))
        return value
    if not json_path.is_file() and name in pending():
        entry = pending()[name]
        return Pending(name, entry.get("command", _command(name)), entry.get("reason", "not recorded yet"))
    record = read(name, _source(fn))
    if record.arguments != arguments:
        changed = sorted(k for k in set(record.arguments) | set(arguments)
                         if record.arguments.get(k) != arguments.get(k))
        raise RecordError(f"record {name!r} was made with other arguments (differing: {changed}); re-make it with "
                          f"`{_command(name)}`")
    if record.stale:
        _note(record)
    return record.value


# ----------------------------------------------------------------------------------------------------------------
# `make record`: run chapters as scripts at the papers' size, writing their records
# ----------------------------------------------------------------------------------------------------------------
def record_chapters(chapters: list[str], environ: Mapping[str, str] | None = None,
                    editions: tuple[str, ...] = ("full", "ci")) -> None:
    """Run each chapter (``"03"`` or ``"03_ridge_generalisation"``) as a script with ``ICL_RECORD=1``: at the
    papers' size (``"full"``, ``ICL_FULL=1``) and at the CI size (``"ci"``, whose records under
    ``records/chNN/ci/`` feed the reproduction table).

    The chapter's own cells compute, write their records and check their asserts at each size. Every step is
    cached, so a run cut off by a time limit resumes where it stopped.
    """
    root = settings.repository_root()
    if root is None:
        raise RecordError("make record runs in a checkout of the book's repository")
    for edition in editions:
        if edition not in ("full", "ci"):
            raise ValueError(f"editions must hold 'full' and/or 'ci', got {edition!r}")
        env = {**os.environ, **(environ or {}), "ICL_FULL": "1" if edition == "full" else "0", "ICL_RECORD": "1",
               "MPLBACKEND": "Agg"}
        _run_scripts(root, chapters, env, edition)


def _run_scripts(root: Path, chapters: list[str], env: Mapping[str, str], edition: str) -> None:
    for chapter in chapters:
        matches = sorted((root / "chapters").glob(f"{chapter}*.md"))
        if len(matches) != 1:
            raise ValueError(f"chapter {chapter!r} names {len(matches)} files in chapters/ (give its number, e.g. 03)")
        script = root / ".cache" / "record" / f"{matches[0].stem}.py"
        script.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "jupytext", "--quiet", "--to", "py:percent", "-o", str(script),
                        str(matches[0])], check=True)
        print(f"== recording {matches[0].stem} ({edition} size)", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, str(script)], cwd=root / "chapters", env=env, check=True)
        print(f"== {matches[0].stem}: done in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    # python -m icllib.records [CHAPTERS ...] [--edition full|ci]   (default: every chapter, both sizes)
    words = [w for arg in sys.argv[1:] for w in arg.replace(",", " ").split()]
    chosen = tuple(words[i + 1] for i, w in enumerate(words[:-1]) if w == "--edition") or ("full", "ci")
    wanted = [w for i, w in enumerate(words) if w != "--edition" and (i == 0 or words[i - 1] != "--edition")]
    if not wanted:
        wanted = sorted(p.name[:2] for p in (settings.repository_root() / "chapters").glob("[0-9][0-9]_*.md"))
    record_chapters(wanted, editions=chosen)
