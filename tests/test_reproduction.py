"""The reproduction table: numbers read off the records of both editions, pending and missing records named."""

import json

import numpy as np
import pytest

from icllib import records
from icllib.experiments.reproduction import Claim, measured, table


@pytest.fixture
def store(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_RECORDS_DIR", str(tmp_path / "records"))
    records.write("ch99/result", {"x": np.arange(4.0)}, {"n": 4}, {})
    records.write("ch99/ci/result", {"x": np.arange(2.0)}, {"n": 2}, {})
    (tmp_path / "records/ch98").mkdir(parents=True)
    (tmp_path / "records/ch98/pending.json").write_text(json.dumps({"ch98/big": {"command": "c", "reason": "r"}}))
    return tmp_path


def _claim(record="ch99/result"):
    return Claim("P", "a claim", "99", "1.0", record, lambda read: f"{read[0].value['x'].sum():.1f}", "why")


def test_each_edition_reads_its_own_record(store):
    assert measured(_claim(), "full") == "6.0"
    assert measured(_claim(), "ci") == "1.0"


def test_pending_and_missing_records_are_named(store):
    assert measured(_claim("ch98/big"), "full") == "pending"
    assert measured(_claim("ch97/none"), "full") == "not recorded"
    assert measured(_claim(("ch99/result", "ch97/none")), "full") == "not recorded"


def test_table_has_one_row_per_claim(store):
    frame = table([_claim(), _claim("ch98/big")])
    assert list(frame["full edition"]) == ["6.0", "pending"]
    assert list(frame["CI edition"]) == ["1.0", "not recorded"]


def test_bad_input_is_rejected(store):
    with pytest.raises(ValueError, match="edition"):
        measured(_claim(), "paper")
    with pytest.raises(TypeError, match="claims"):
        table([])
    with pytest.raises(TypeError, match="claims"):
        table(["not a claim"])
