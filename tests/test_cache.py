"""The on-disk cache: keys derived from calls and source, corrupt entries recomputed."""

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from icllib import cache, testing


@pytest.fixture
def cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ICL_NO_CACHE", raising=False)
    return tmp_path


def _counted(calls):
    def work(a, b=2, progress=True):
        calls.append((a, b))
        return np.arange(a) * b

    return work


# ---------------------------------------------------------------------------------------------------------------
# fingerprint
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    n: int
    rate: float


def _key(value):
    return json.dumps(cache.fingerprint(value), sort_keys=True)


def test_fingerprint_is_equal_for_equal_values_and_differs_otherwise():
    same = [(1, 1), (1.5, 1.5), ("a", "a"), (np.arange(3.0), np.arange(3.0)), (torch.ones(2), torch.ones(2)),
            (Config(1, 0.1), Config(1, 0.1)), ({"a": 1, "b": 2}, {"b": 2, "a": 1}), ({1, 2}, {2, 1}),
            (torch.Generator().manual_seed(3), torch.Generator().manual_seed(3))]
    for left, right in same:
        assert _key(left) == _key(right)
    different = [(1, 1.0), (0.1, 0.1 + 1e-17 + 1e-16), (np.arange(3.0), np.arange(3.0) + 1e-9),
                 (torch.ones(2), torch.ones(2, dtype=torch.float64)), (Config(1, 0.1), Config(2, 0.1)),
                 (torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)), ([1, 2], [2, 1])]
    for left, right in different:
        assert _key(left) != _key(right), (left, right)


def test_fingerprint_of_models_uses_the_recorded_name_or_the_weights():
    a, b = testing.tiny_random_model("gpt2", seed=0), testing.tiny_random_model("gpt2", seed=1)
    assert cache.fingerprint(a) != cache.fingerprint(b)
    assert cache.fingerprint(a) == cache.fingerprint(testing.tiny_random_model("gpt2", seed=0))
    a.icl_model_id = b.icl_model_id = "some/model"
    assert cache.fingerprint(a) == cache.fingerprint(b)
    assert cache.fingerprint(testing.CharTokenizer())["tokenizer"] == "CharTokenizer"


def test_fingerprint_refuses_what_it_cannot_describe():
    with pytest.raises(TypeError, match="cannot fingerprint a value of type object"):
        cache.fingerprint(object())


# ---------------------------------------------------------------------------------------------------------------
# cached and cached_call
# ---------------------------------------------------------------------------------------------------------------
def test_cached_computes_once_per_configuration(cache_dir, monkeypatch):
    calls = []
    first = cache.cached("demo", {"a": 1}, lambda: calls.append(1) or np.arange(3))
    again = cache.cached("demo", {"a": 1}, lambda: calls.append(1) or np.arange(3))
    cache.cached("demo", {"a": 2}, lambda: calls.append(1) or np.arange(3))
    assert len(calls) == 2
    np.testing.assert_array_equal(first, again)
    monkeypatch.setenv("ICL_NO_CACHE", "1")
    cache.cached("demo", {"a": 1}, lambda: calls.append(1) or np.arange(3))
    assert len(calls) == 3


def test_cached_call_derives_the_key_from_the_bound_arguments(cache_dir):
    calls = []
    work = _counted(calls)
    cache.cached_call(work, 3)
    cache.cached_call(work, a=3, b=2)  # the same call spelled with keywords and the default
    cache.cached_call(work, 3, progress=False)  # progress never changes a result
    assert calls == [(3, 2)]
    np.testing.assert_array_equal(cache.cached_call(work, 3, b=5), np.arange(3) * 5)
    assert calls == [(3, 2), (3, 5)]


def test_not_in_key_leaves_arguments_out(cache_dir):
    calls = []

    @cache.not_in_key("batch_size")
    def infer(x, batch_size=8):
        calls.append(batch_size)
        return x + 1

    assert cache.cached_call(infer, 1, batch_size=8) == cache.cached_call(infer, 1, batch_size=64) == 2
    assert calls == [8]


def test_a_corrupt_entry_is_recomputed_with_a_warning(cache_dir):
    calls = []
    cache.cached("demo", {"a": 1}, lambda: calls.append(1) or list(range(100)))
    (entry,) = (cache_dir / "results").glob("demo-*.pkl")
    entry.write_bytes(entry.read_bytes()[:5])  # truncated, as by a full disk
    with pytest.warns(RuntimeWarning, match="could not be read"):
        assert cache.cached("demo", {"a": 1}, lambda: calls.append(1) or list(range(100))) == list(range(100))
    assert len(calls) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten entry reads back cleanly
        assert cache.cached("demo", {"a": 1}, lambda: calls.append(1) or 7) == list(range(100))
    assert len(calls) == 2


# ---------------------------------------------------------------------------------------------------------------
# source_hash: an edit of the library recomputes what depends on it
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def fake_package(monkeypatch, tmp_path):
    root = tmp_path / "icllib"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "base.py").write_text("X = 1\n")
    (root / "user.py").write_text("from icllib.base import X\n")
    (root / "other.py").write_text("Y = 2\n")
    files = {"icllib": root / "__init__.py", "icllib.base": root / "base.py", "icllib.user": root / "user.py",
             "icllib.other": root / "other.py"}
    monkeypatch.setattr(cache, "_module_files", lambda: files)
    cache._closure_digest.cache_clear()
    yield root
    cache._closure_digest.cache_clear()


def test_source_hash_follows_imports(fake_package):
    before = {name: cache.source_hash(f"icllib.{name}") for name in ("base", "user", "other")}
    (fake_package / "base.py").write_text("X = 2\n")
    cache._closure_digest.cache_clear()
    after = {name: cache.source_hash(f"icllib.{name}") for name in ("base", "user", "other")}
    assert after["base"] != before["base"] and after["user"] != before["user"]  # user imports base
    assert after["other"] == before["other"]  # other does not


def test_source_hash_bad_input():
    with pytest.raises(TypeError, match="modules must be modules, module names or functions"):
        cache.source_hash(3)


def test_the_real_package_hash_is_stable():
    assert cache.source_hash("icllib.kernels") == cache.source_hash(cache.source_hash.__module__ and "icllib.kernels")
    assert cache.source_hash("icllib.kernels") != cache.source_hash("icllib.cache")


@pytest.mark.parametrize("name,config,error", [("", {}, ValueError), ("a/b", {}, ValueError), ("n", [1], TypeError)])
def test_cache_bad_input(name, config, error):
    with pytest.raises(error):
        cache.config_key(name, config)


def test_cached_call_bad_input():
    with pytest.raises(TypeError, match="fn must be callable"):
        cache.cached_call(3)


def test_a_local_tokenizer_is_keyed_by_its_folder_name_not_its_path():
    # Records made in one checkout are replayed in another: the de-quantised model's folder may live anywhere.
    class Tok:
        vocab_size = 10

        def __init__(self, path):
            self.name_or_path = path

        def encode(self, text):
            return [0]

        def decode(self, ids):
            return ""

    a, b = cache.fingerprint(Tok("/one/cache/models/Model-x")), cache.fingerprint(Tok("/other/models/Model-x"))
    assert a == b and a["name"] == "Model-x"
    assert cache.fingerprint(Tok("org/model"))["name"] == "org/model"  # a Hugging Face id stays as it is
