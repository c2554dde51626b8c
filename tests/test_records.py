"""The full edition's records: round trips without pickle, replay, refusals, pending and stale records."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from icllib import book, records, testing


def train_like(steps: int, seed: int = 0, progress: bool = True):
    """A stand-in for an expensive chapter computation (module-level, so its source is its key)."""
    rng = np.random.default_rng(seed)
    return {"loss": rng.random(steps), "steps": steps, "final": float(rng.random()), "table": {5: 0.1, 10: 0.2}}


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_RECORDS_DIR", str(tmp_path / "records"))
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("ICL_FULL", "ICL_RECORD", "ICL_COMPUTE", "ICL_NO_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _set_mode(env, which):
    env.setenv("ICL_FULL", "0" if which == "live" else "1")
    env.setenv("ICL_RECORD", "1" if which == "record" else "0")
    env.setenv("ICL_COMPUTE", "1" if which == "compute" else "0")
    assert records.mode() == which


def test_round_trip_keeps_types_and_values(env):
    history = records.Record("r", [1.0, float("nan")], {"a": 1}, {}, stale=False)  # an icllib dataclass
    value = {"array": np.arange(6, dtype=np.float32).reshape(2, 3), "tensor": torch.ones(2, dtype=torch.float64),
             "bf16": torch.ones(2, dtype=torch.bfloat16), "tuple": (1, "a"), "int_keys": {5: 1.5, 10: -np.inf},
             "nested": [{"x": None, "flag": True}], "history": history, "npint": np.int64(3)}
    records.write("ch99/demo", value, {"a": 1}, {"source": "s"})
    got = records.read("ch99/demo", source="s")
    assert not got.stale and got.arguments == {"a": 1}
    out = got.value
    np.testing.assert_array_equal(out["array"], value["array"])
    assert out["array"].dtype == np.float32
    assert out["tensor"].dtype == torch.float64 and out["bf16"].dtype == torch.bfloat16
    assert out["tuple"] == (1, "a") and out["int_keys"] == {5: 1.5, 10: -np.inf} and out["npint"] == 3
    assert out["nested"] == [{"x": None, "flag": True}]
    assert isinstance(out["history"], records.Record) and out["history"].arguments == {"a": 1}
    assert np.isnan(out["history"].value[1])
    assert records.read("ch99/demo", source="other").stale


def test_files_are_json_and_npz_without_pickle(env, tmp_path):
    records.write("ch99/demo", {"x": np.arange(3.0)}, {}, {})
    json.loads((tmp_path / "records/ch99/demo.json").read_text())
    with np.load(tmp_path / "records/ch99/demo.npz", allow_pickle=False) as data:
        assert list(data.files) == ["a0"]


def test_only_plain_data_and_icllib_dataclasses_are_recorded(env):
    @dataclasses.dataclass
    class Foreign:
        x: int

    with pytest.raises(TypeError, match="only icllib dataclasses"):
        records.write("ch99/bad", Foreign(1), {}, {})
    with pytest.raises(TypeError, match="a record holds plain data"):
        records.write("ch99/bad", object(), {}, {})
    with pytest.raises(ValueError, match="name must be a relative record name"):
        records.write("../escape", 1, {}, {})


def test_a_record_naming_a_class_outside_icllib_is_refused(env, tmp_path):
    records.write("ch99/demo", 1, {}, {})
    path = tmp_path / "records/ch99/demo.json"
    document = json.loads(path.read_text())
    document["value"] = {"__dataclass__": "os:system", "fields": {}}
    path.write_text(json.dumps(document))
    with pytest.raises(records.RecordError, match="outside icllib"):
        records.read("ch99/demo")


def test_live_computes_record_writes_replay_reads(env, tmp_path):
    _set_mode(env, "live")
    assert records.result("ch99/run", train_like, 4)["steps"] == 4
    assert not (tmp_path / "records/ch99/run.json").exists()
    _set_mode(env, "record")
    made = records.result("ch99/run", train_like, 5)
    info = json.loads((tmp_path / "records/ch99/run.json").read_text())["provenance"]
    for key in ("commit", "date", "device", "dtype", "torch", "transformers", "wall_s", "source", "function"):
        assert key in info
    _set_mode(env, "replay")
    replayed = records.result("ch99/run", train_like, 5)
    np.testing.assert_array_equal(replayed["loss"], made["loss"])
    assert replayed["table"] == {5: 0.1, 10: 0.2}


def test_replay_refuses_missing_records_and_other_arguments(env):
    _set_mode(env, "replay")
    with pytest.raises(records.RecordError, match="make record CHAPTERS=99"):
        records.result("ch99/run", train_like, 5)
    _set_mode(env, "record")
    records.result("ch99/run", train_like, 5)
    _set_mode(env, "replay")
    with pytest.raises(records.RecordError, match=r"other arguments \(differing: \['steps'\]\).*CHAPTERS=99"):
        records.result("ch99/run", train_like, 6)


def test_editing_a_record_changes_what_replay_returns(env, tmp_path):
    _set_mode(env, "record")
    records.result("ch99/run", train_like, 5)
    path = tmp_path / "records/ch99/run.json"
    document = json.loads(path.read_text())
    document["value"]["final"] = 123.0
    path.write_text(json.dumps(document))
    _set_mode(env, "replay")
    assert records.result("ch99/run", train_like, 5)["final"] == 123.0  # replay reads; it never recomputes


def test_pending_records_come_back_as_pending(env, tmp_path, capsys):
    (tmp_path / "records").mkdir()
    (tmp_path / "records/pending.json").write_text(json.dumps(
        {"ch99/run": {"command": "make record CHAPTERS=99 (on a GPU)", "reason": "needs a GPU"}}))
    _set_mode(env, "replay")
    value = records.result("ch99/run", train_like, 5)
    assert records.is_pending(value) and "GPU" in str(value)
    assert book.show_pending(value, 3) is True and "Pending" in capsys.readouterr().out
    assert book.show_pending(1, 2) is False


def test_a_stale_record_is_used_with_a_visible_note(env, tmp_path, capsys):
    _set_mode(env, "record")
    records.result("ch99/run", train_like, 5)
    path = tmp_path / "records/ch99/run.json"
    document = json.loads(path.read_text())
    document["provenance"]["source"] = "an-older-source"
    path.write_text(json.dumps(document))
    _set_mode(env, "replay")
    assert records.result("ch99/run", train_like, 5)["steps"] == 5
    assert "older `icllib` source".replace("`", "") in capsys.readouterr().out


def test_models_are_matched_by_name_not_precision(env):
    model = testing.tiny_random_model("gpt2")
    model.icl_model_id = "tiny"
    described = records.describe_arguments(lambda model, k=1: None, model)
    assert described == {"model": {"model": "tiny"}, "k": 1}


def test_glue_prints_without_myst_nb(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_myst(name, *args, **kwargs):
        if name.startswith("myst_nb"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_myst)
    assert book.glue("ch00_x", 0.5) == 0.5
    assert "ch00_x = 0.5" in capsys.readouterr().out
    with pytest.raises(ValueError, match="name must be letters"):
        book.glue("bad name", 1)


def test_glue_gives_myst_nb_a_python_number_for_a_numpy_scalar(monkeypatch):
    # myst-nb formats {glue:text}`name:.2f` from the value's text form; numpy 2 writes np.float64(0.25), which the
    # format cannot read (a warning, and the nitpicky build fails)
    import myst_nb

    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=False: glued.update({name: value}))
    assert book.glue("ch00_y", np.float64(0.25)) == 0.25
    assert type(glued["ch00_y"]) is float and repr(glued["ch00_y"]) == "0.25"
    book.glue("ch00_z", np.int64(3))
    assert type(glued["ch00_z"]) is int


def test_sanity_check_says_what_it_is(capsys):
    book.sanity_check(1 + 1 == 2, "one plus one")
    assert "sanity check (holds by construction): one plus one: ok" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="an identity; this is a bug"):
        book.sanity_check(False, "broken")
    with pytest.raises(ValueError, match="what must be a non-empty description"):
        book.sanity_check(True, "")


def test_record_ci_writes_the_ci_twin(env, tmp_path):
    env.setenv("ICL_RECORD", "1")
    env.setenv("ICL_FULL", "0")
    assert records.mode() == "record-ci"
    records.result("ch99/run", train_like, 3)
    assert (tmp_path / "records/ch99/ci/run.json").is_file() and not (tmp_path / "records/ch99/run.json").exists()
    assert records.read(records.ci_name("ch99/run")).value["steps"] == 3


def test_names_with_dots_keep_their_whole_name(env, tmp_path):
    # ch09 names its runs by tau ("train-tau0.5-seed1"): the dot is part of the name, not a file extension.
    records.write("ch99/run-tau0.5-seed1", {"x": np.arange(2.0)}, {"tau": 0.5}, {})
    records.write("ch99/run-tau0.1-seed1", {"x": np.arange(3.0)}, {"tau": 0.1}, {})
    assert (tmp_path / "records/ch99/run-tau0.5-seed1.json").exists()
    assert (tmp_path / "records/ch99/run-tau0.5-seed1.npz").exists()
    assert len(records.read("ch99/run-tau0.5-seed1").value["x"]) == 2
    assert len(records.read("ch99/run-tau0.1-seed1").value["x"]) == 3


def test_record_only_computes_the_selected_records_and_reads_the_others(env, tmp_path):
    _set_mode(env, "record")
    records.result("ch99/a", train_like, 3, seed=1)
    env.setenv("ICL_RECORD_ONLY", "ch99/b*, ch99/other")
    assert records.selected("ch99/b-1") and records.selected("ch99/other") and not records.selected("ch99/a")
    before = (tmp_path / "records/ch99/a.json").read_text()
    np.testing.assert_array_equal(records.result("ch99/a", train_like, 3, seed=1)["loss"], train_like(3, 1)["loss"])
    assert (tmp_path / "records/ch99/a.json").read_text() == before  # read back, not re-written
    with pytest.raises(records.RecordError, match="other arguments"):  # outside the selection: never recomputed
        records.result("ch99/a", train_like, 4, seed=1)
    records.result("ch99/b-1", train_like, 2)
    assert (tmp_path / "records/ch99/b-1.json").is_file()
    env.delenv("ICL_RECORD_ONLY")
    assert records.selected("ch99/a")


def on_device(x: int, device: str = "cpu"):
    return x


def test_provenance_names_the_device_the_computation_used(env, tmp_path):
    _set_mode(env, "record")
    env.setenv("ICL_DEVICE", "cuda:0")  # a GPU machine, as far as the records can tell
    env.setattr(torch.cuda, "is_available", lambda: True)
    env.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    records.result("ch99/gpu", on_device, 1, device="cuda:0")
    assert records.read("ch99/gpu").provenance["device"] == "Fake GPU"
    records.result("ch99/cpu", train_like, 2)
    assert records.read("ch99/cpu").provenance["device"].startswith("cpu")  # no device argument: the CPU
    records.result("ch99/model", lambda model: 1, torch.nn.Linear(2, 2))
    assert records.read("ch99/model").provenance["device"].startswith("cpu")  # the model's own device
    records.result("ch99/dev", on_device, 1, device="cpu")
    assert records.read("ch99/dev").provenance["device"].startswith("cpu")


def test_making_a_pending_record_takes_it_off_the_pending_list(env, tmp_path):
    listed = {"ch99/slow": {"command": "make record CHAPTERS=99", "reason": "hours"}, "ch99/other": {}}
    (tmp_path / "records/ch99").mkdir(parents=True)
    (tmp_path / "records/ch99/pending.json").write_text(json.dumps(listed))
    _set_mode(env, "replay")
    assert records.is_pending(records.result("ch99/slow", train_like, 2))
    _set_mode(env, "record")
    records.result("ch99/slow", train_like, 2)
    assert set(records.pending()) == {"ch99/other"}


def test_the_records_readme_lists_exactly_the_pending_records():
    # records/README.md tells a reader which paper-size results are not recorded yet and how to make them; it must
    # say what the pending lists say (a record made since, or a new pending one, makes this fail until it is edited)
    import re

    readme = (records.records_dir() / "README.md").read_text()
    section = readme.split("## Pending", 1)[1] if "## Pending" in readme else ""
    named = set(re.findall(r"^\| `(ch\d\d/[^`]+)` \|", section, flags=re.MULTILINE))
    listed = records.pending()
    assert named == set(listed), (sorted(named), sorted(listed))
    for name, entry in listed.items():
        assert entry["command"].split(" on ")[0].split(" (")[0] in section, (name, entry["command"])
