"""Argument checks shared by every public entry point.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (wrong value) with a message that names
the parameter, the value received and what is allowed, so that bad input never surfaces as a torch traceback.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

_FLOATS = (torch.float32, torch.float64)


def as_float_tensor(name: str, value, ndim: int | Sequence[int] | None = None, dtype=None) -> torch.Tensor:
    """Return ``value`` (numpy array or torch tensor, float32 or float64) as a torch tensor.

    Integer arrays and Python lists are refused (ask for floats explicitly); ``ndim`` may be one number or a set.
    Without ``dtype`` the input's precision is kept; no copy is made when none is needed.
    """
    if isinstance(value, np.ndarray):
        if value.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {value.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, torch.Tensor):
        if value.dtype not in _FLOATS:
            raise TypeError(f"{name} must be a float32 or float64 tensor, got dtype {value.dtype}")
        tensor = value
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if tensor.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimension(s), got shape {tuple(tensor.shape)}"
            )
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if dtype is not None:
        tensor = tensor.to(dtype)
    return tensor


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (bool refused) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    name: str, value, minimum: float | None = None, maximum: float | None = None, strict: bool = False
) -> float:
    """A finite real number within ``[minimum, maximum]`` (``(minimum, ...]`` when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_choice(name: str, value, allowed: Sequence) -> object:
    """One of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_generator(name: str, value) -> torch.Generator:
    """A ``torch.Generator`` (randomness is always explicit in icllib)."""
    if not isinstance(value, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, got {type(value).__name__}")
    return value


def check_pairs(name: str, pairs, allow_empty: bool = False) -> list[tuple[str, str]]:
    """A sequence of ``(x, y)`` string pairs (a task's demonstrations or queries) as a list of tuples."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"{name} must be a sequence of (x, y) string pairs, got {type(pairs).__name__}")
    out = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2 \
                or not all(isinstance(s, str) for s in pair):
            raise TypeError(f"{name}[{i}] must be a pair of strings (x, y), got {pair!r}")
        out.append((pair[0], pair[1]))
    if not out and not allow_empty:
        raise ValueError(f"{name} must hold at least one (x, y) pair, got none")
    return out


def check_bool(name: str, value) -> bool:
    """A Python bool (0, 1 and numpy bools are refused: a switch is spelled True or False)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_float_dtype(name: str, dtype) -> torch.dtype:
    """``torch.float32`` or ``torch.float64``, the precisions of the Part I and Part III models."""
    if dtype not in _FLOATS:
        raise TypeError(f"{name} must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype
