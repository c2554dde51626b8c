"""Tests of icllib.experiments.ch10: configurations, grids and one tiny configuration run end to end."""

from __future__ import annotations

import pytest

from icllib import bridge
from icllib.experiments import ch10

TINY = {"K": 10, "N": 3, "d": 4, "tau": 0.1, "heads": 2, "steps": 3, "batch": 4, "lr": 1e-3, "warmup": 1,
        "eval_every": 3, "tvp_weight": 1.0, "n_dev": 10, "n_test": 20, "n_fit": 20, "learned_steps": 2}


def test_configurations_and_names():
    base = ch10.configuration()
    assert base == ch10.BASE and ch10.config_name(base) == "d2-w16-m1-full-arrow"
    assert ch10.config_name(ch10.configuration(tvp=1, arrow=False)) == "d2-w16-m1-full-noarrow-tvp1"
    grid = ch10.ci_grid()
    assert grid[0] == base and len({ch10.config_name(c) for c in grid}) == len(grid)
    for config in grid[1:]:  # one factor at a time
        assert sum(config[k] != base[k] for k in ch10.FACTORS) == 1
    full = ch10.full_grid()
    assert len(full) == 3 * 2 * 2 * 2 * 2 and len({ch10.config_name(c) for c in full}) == len(full)
    assert len(ch10.record_order(False)) == len(grid) + 1
    assert {c["depth"] for c in full} == {2, 4, 8} and {c["m"] for c in full} >= {1}
    assert all(c["tvp"] is not None for c in ch10.tvp_configs(True))
    order = ch10.record_order(True)
    assert len(order) == len(full) + len(ch10.tvp_configs(True)) and order[0]["width"] == 16


def test_bad_configurations():
    with pytest.raises(ValueError, match="factors"):
        ch10.configuration(colour="red")
    with pytest.raises(ValueError, match="depth"):
        ch10.configuration(depth=0)
    with pytest.raises(ValueError, match="tvp"):
        ch10.configuration(tvp=2)  # the base has 2 blocks
    with pytest.raises(ValueError, match="full-length"):
        ch10.configuration(tvp=0, every_length=True)
    with pytest.raises(TypeError, match="arrow"):
        ch10.configuration(arrow="yes")
    with pytest.raises(TypeError, match="full"):
        ch10.tvp_configs(1)
    with pytest.raises(ValueError, match="size"):
        ch10.check_size({"K": 4})


def test_run_config_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path))
    config = ch10.configuration(depth=1, width=8, tvp=0, arrow=False)
    out = ch10.run_config(config, TINY, [0, 1])
    assert out["config"] == config and len(out["reports"]) == 2 and len(out["training"]) == 2
    report = out["reports"][0]
    assert isinstance(report, bridge.ModelReport) and report.patched.shape == (1,)
    assert report.n_test == 20 and set(out["training"][0]) == {"query", "floor", "seconds"}
    again = ch10.run_config(config, TINY, [0, 1])  # cached models give the same evaluation
    assert again["reports"][0].patched.tolist() == report.patched.tolist()
    with pytest.raises(ValueError, match="seeds"):
        ch10.run_config(config, TINY, [0, 0])
    with pytest.raises(ValueError, match="training"):
        ch10.train_model(config, TINY, 0)  # the training keys only
