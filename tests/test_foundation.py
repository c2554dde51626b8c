"""The shared modules: switches and argument checks (the cache has tests/test_cache.py)."""

import numpy as np
import pytest
import torch

from icllib import _checks, settings


def test_switches_read_the_environment(monkeypatch):
    monkeypatch.delenv("ICL_FULL", raising=False)
    monkeypatch.delenv("ICL_MODEL", raising=False)
    assert settings.full_size() is False and settings.model_name() is None
    monkeypatch.setenv("ICL_FULL", "1")
    monkeypatch.setenv("ICL_MODEL", "EleutherAI/pythia-2.8b")
    assert settings.full_size() is True and settings.model_name() == "EleutherAI/pythia-2.8b"
    monkeypatch.setenv("ICL_DEVICE", "cpu")
    assert settings.device() == "cpu"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path / "c"))
    assert settings.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_as_float_tensor_keeps_precision_and_refuses_the_rest():
    assert _checks.as_float_tensor("x", np.zeros(3, dtype=np.float32)).dtype == torch.float32
    assert _checks.as_float_tensor("x", torch.zeros(3, dtype=torch.float64)).dtype == torch.float64
    with pytest.raises(TypeError, match="x must be a float32 or float64 array"):
        _checks.as_float_tensor("x", np.zeros(3, dtype=np.int64))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        _checks.as_float_tensor("x", [1.0, 2.0])
    with pytest.raises(ValueError, match="x must have 2 dimension"):
        _checks.as_float_tensor("x", torch.zeros(3), ndim=2)
    with pytest.raises(ValueError, match="NaN"):
        _checks.as_float_tensor("x", torch.tensor([float("nan")]))


def test_scalar_checks():
    assert _checks.check_int("n", 3, minimum=1) == 3
    with pytest.raises(TypeError, match="n must be an integer"):
        _checks.check_int("n", 3.0)
    with pytest.raises(TypeError):
        _checks.check_int("n", True)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        _checks.check_int("n", 0, minimum=1)
    assert _checks.check_float("tau", 0.0, minimum=0.0) == 0.0
    with pytest.raises(ValueError, match="tau must be > 0"):
        _checks.check_float("tau", 0.0, minimum=0.0, strict=True)
    with pytest.raises(ValueError, match="finite"):
        _checks.check_float("tau", float("inf"))
    with pytest.raises(ValueError, match="must be one of"):
        _checks.check_choice("mode", "x", ["a", "b"])
    with pytest.raises(TypeError, match="torch.Generator"):
        _checks.check_generator("generator", 0)


def test_check_pairs():
    assert _checks.check_pairs("pairs", [["a", "A"], ("b", "B")]) == [("a", "A"), ("b", "B")]
    assert _checks.check_pairs("demos", [], allow_empty=True) == []
    with pytest.raises(ValueError, match="pairs must hold at least one"):
        _checks.check_pairs("pairs", [])
    with pytest.raises(TypeError, match="pairs must be a sequence"):
        _checks.check_pairs("pairs", "ab")
    with pytest.raises(TypeError, match=r"pairs\[1\] must be a pair of strings"):
        _checks.check_pairs("pairs", [("a", "A"), ("b", 2)])
    with pytest.raises(TypeError, match=r"pairs\[0\] must be a pair of strings"):
        _checks.check_pairs("pairs", [("a", "A", "x")])


def test_dtype_switch(monkeypatch):
    monkeypatch.delenv("ICL_DTYPE", raising=False)
    assert settings.dtype() == "float32"
    monkeypatch.setenv("ICL_DTYPE", "bfloat16")
    assert settings.dtype() == "bfloat16"
    monkeypatch.setenv("ICL_DTYPE", "fp8")
    with pytest.raises(ValueError, match="ICL_DTYPE must be one of"):
        settings.dtype()


def test_check_bool_and_float_dtype():
    assert _checks.check_bool("flag", True) is True
    with pytest.raises(TypeError, match="flag must be a bool, got 1"):
        _checks.check_bool("flag", 1)
    assert _checks.check_float_dtype("dtype", torch.float64) is torch.float64
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64, got torch.float16"):
        _checks.check_float_dtype("dtype", torch.float16)
