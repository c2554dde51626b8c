"""Tests of chapter 03's computations (icllib.experiments.ch03) on tiny problems."""

import json

import numpy as np
import pytest
import torch

from icllib import kernels, records, theory, train
from icllib.experiments import ch03
from icllib.models import TransformerConfig

TINY = ch03.Problem(K=16, d=6, m=4, N=5, tau=0.1, n_test=12)


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("ICL_FULL", "ICL_RECORD", "ICL_COMPUTE"):
        monkeypatch.delenv(name, raising=False)


def test_problem_builds_the_same_dictionary_and_prompts_for_the_same_seeds():
    tokens, Z_all = TINY.dictionary()
    assert tokens.shape == (16, 6) and Z_all.shape == (4, 16) and tokens.dtype == torch.float64
    torch.testing.assert_close(tokens.norm(dim=1), torch.ones(16, dtype=torch.float64))
    torch.testing.assert_close(TINY.dictionary()[1], Z_all)
    test = TINY.test_prompts()
    assert test.in_domain.y.shape == (12, 5) and test.star_out.shape == (12, 16)
    other = TINY.with_n(7)
    assert other.N == 7 and other.K == TINY.K and other.seed == TINY.seed
    torch.testing.assert_close(other.dictionary()[1], Z_all)  # the same dictionary for every N
    assert not torch.equal(ch03.Problem(16, 6, 4, 5, 0.1, seed=1).dictionary()[1], Z_all)


def test_configurations_reject_bad_values():
    with pytest.raises(ValueError, match="N"):
        ch03.Problem(K=5, d=3, m=2, N=5, tau=0.1)
    with pytest.raises(ValueError, match="tau"):
        ch03.Problem(K=8, d=3, m=2, N=2, tau=-1.0)
    with pytest.raises(TypeError, match="K"):
        ch03.Problem(K=8.5, d=3, m=2, N=2, tau=0.1)
    with pytest.raises(ValueError, match="eta_Q"):
        ch03.ExactGD(eta_Q=0.0)
    with pytest.raises(ValueError, match="lr"):
        ch03.ExactAdam(lr=-1.0)
    with pytest.raises(ValueError, match="stop_at"):
        ch03.ExactAdam(stop_at=0.0)
    with pytest.raises(ValueError, match="history_size"):
        ch03.ExactLBFGS(history_size=0)
    with pytest.raises(ValueError, match="stop_at"):
        ch03.ExactLBFGS(stop_at=-1e-3)
    with pytest.raises(ValueError, match="precision"):
        ch03.Recipe(precision="fp8")
    with pytest.raises(ValueError, match="batch_size"):
        ch03.Recipe(batch_size=20, n_train_prompts=10)
    with pytest.raises(ValueError, match="n_heads must divide"):
        TransformerConfig(d_model=10, n_heads=4)


def test_one_layer_run_trains_and_is_deterministic():
    run = ch03.one_layer_run(TINY, 10, ch03.ExactGD(), 40, seed=0, eval_every=20)
    assert isinstance(run, ch03.OneLayerRun) and run.seed == 0
    assert run.A_tilde.shape == (5, 16) and run.A_tilde.dtype == torch.float32
    assert run.history.step == [0, 20, 40] and run.history.loss_gap[-1] < run.history.loss_gap[0]
    again = ch03.one_layer_run(TINY, 10, ch03.ExactGD(), 40, seed=0, eval_every=20)
    torch.testing.assert_close(again.A_tilde, run.A_tilde)
    other = ch03.one_layer_run(TINY, 10, ch03.ExactGD(), 40, seed=1, eval_every=20)
    assert not torch.equal(other.A_tilde, run.A_tilde)
    adam = ch03.one_layer_run(TINY, 10, ch03.ExactAdam(1e-2), 20, seed=0, eval_every=10)
    assert adam.history.method == "exact Adam"
    early = ch03.one_layer_run(TINY, 10, ch03.ExactAdam(3e-2, stop_at=1e-2), 400, seed=0, eval_every=10)
    assert early.history.stop_reason == "target" and early.history.in_domain[-1] <= 1e-2
    lbfgs = ch03.one_layer_run(TINY, 10, ch03.ExactLBFGS(stop_at=1e-6), 50, seed=0, eval_every=1)
    assert lbfgs.history.method == "exact L-BFGS" and lbfgs.history.stop_reason == "target"
    recipe = ch03.Recipe(lr=1e-2, batch_size=16, n_train_prompts=64)
    mc = ch03.one_layer_run(TINY, 10, recipe, 20, seed=0, eval_every=10)
    assert mc.history.method == "Monte-Carlo Adam" and mc.history.config["precision"] == "float32"


def test_one_layer_runs_and_last_values():
    runs = ch03.one_layer_runs(TINY, 10, ch03.ExactGD(), 10, [0, 1], eval_every=5)
    assert [r.seed for r in runs] == [0, 1]
    values = ch03.last_values(runs, "in_domain")
    assert values.shape == (2,) and values[0] == runs[0].history.in_domain[-1]
    np.testing.assert_array_equal(ch03.last_values([r.history for r in runs], "in_domain"), values)
    with pytest.raises(TypeError, match="seeds"):
        ch03.one_layer_runs(TINY, 10, ch03.ExactGD(), 10, [])
    with pytest.raises(TypeError, match="seeds"):
        ch03.one_layer_runs(TINY, 10, ch03.ExactGD(), 10, "01")
    with pytest.raises(TypeError, match="runs"):
        ch03.last_values([], "in_domain")
    with pytest.raises(TypeError, match="TrainingHistory"):
        ch03.last_values([1.0], "in_domain")


def test_one_layer_run_bad_inputs():
    with pytest.raises(TypeError, match="problem"):
        ch03.one_layer_run("problem", 4, ch03.ExactGD(), 1, 0)
    with pytest.raises(TypeError, match="optimiser"):
        ch03.one_layer_run(TINY, 4, "adam", 1, 0)
    with pytest.raises(ValueError, match="n_heads"):
        ch03.one_layer_run(TINY, 0, ch03.ExactGD(), 1, 0)
    with pytest.raises(ValueError, match="seed"):
        ch03.one_layer_run(TINY, 4, ch03.ExactGD(), 1, -1)


def test_four_layer_runs():
    arch = TransformerConfig(d_model=8, n_layers=1, n_heads=2, d_ff=8)
    recipe = ch03.Recipe(lr=1e-3, batch_size=8, n_train_prompts=32)
    histories = ch03.four_layer_runs(TINY, arch, recipe, 4, [0, 1], eval_every=2)
    assert len(histories) == 2 and histories[0].step == [0, 2, 4] and not histories[0].exact_gap
    assert histories[0].in_domain[0] != histories[1].in_domain[0]  # another initialisation per seed
    with pytest.raises(TypeError, match="architecture"):
        ch03.four_layer_run(TINY, {"d_model": 8}, recipe, 1, 0)
    with pytest.raises(TypeError, match="recipe"):
        ch03.four_layer_run(TINY, arch, ch03.ExactGD(), 1, 0)


def test_gap_against_n_follows_the_closed_form_once_trained():
    problem = ch03.Problem(K=16, d=6, m=4, N=4, tau=0.1, n_test=20)
    result = ch03.gap_against_n(problem, [3, 4, 6], 2, ch03.ExactAdam(3e-2), 300, [0, 1], eval_every=100)
    assert result.trained_gap.shape == (2, 3) and result.to_ridge.shape == (2, 3)
    assert result.closed_gap[1] < 1e-20 and np.all(result.closed_gap[[0, 2]] > 0)  # zero at N = m
    assert np.all(result.trained_gap.argmin(axis=1) == 1)
    assert result.errors["in", "trained"].shape == (2, 3, 20) and result.errors["out", "n_tau"].shape == (3, 20)
    with pytest.raises(ValueError, match="N"):
        ch03.gap_against_n(problem, [16], 2, ch03.ExactGD(), 1, [0])
    with pytest.raises(ValueError, match="n_grid"):
        ch03.gap_against_n(problem, [], 2, ch03.ExactGD(), 1, [0])


def test_rule_comparison_in_domain_never_below_one_and_equal_at_n_equal_m():
    out = ch03.rule_comparison([4], [0.1, 0.5], [0.5, 1.0, 2.0], [0, 1], d=8)
    assert out["ratio_in"].shape == (1, 2, 3, 2) and out["N"][0, 0, :, 0].tolist() == [2, 4, 8]
    assert np.all(out["ratio_in"] >= 1 - 1e-12)
    np.testing.assert_allclose(out["ratio_in"][:, :, 1], 1.0)
    np.testing.assert_allclose(out["ratio_out"][:, :, 1], 1.0)
    with pytest.raises(ValueError, match="tau"):
        ch03.rule_comparison([4], [0.0], [1.0], [0])
    with pytest.raises(ValueError, match="n_over_m"):
        ch03.rule_comparison([4], [0.1], [-1.0], [0])


def test_out_of_domain_moment_is_that_of_the_test_prompts():
    C = ch03.out_of_domain_moment(3)
    torch.testing.assert_close(C, torch.ones(3, 3, dtype=torch.float64) + 4 * torch.eye(3, dtype=torch.float64))
    lam = TINY.test_prompts().out_of_domain.lam  # lambda ~ N(1, 4 I): E[lambda lambda^T] = 1 1^T + 4 I
    assert lam.mean().item() == pytest.approx(1.0, abs=0.6)
    with pytest.raises(ValueError, match="m"):
        ch03.out_of_domain_moment(0)
    # the label error of the ridge rule with this moment matches its Monte-Carlo estimate on the sampled prompts
    test = ch03.Problem(K=16, d=6, m=4, N=5, tau=0.1, n_test=4000).test_prompts()
    _, Z_all = TINY.dictionary()
    yhat = kernels.ridge_predictions(Z_all, test.out_of_domain.y, 5, 0.1)
    measured = float(((yhat - test.out_of_domain.lam @ Z_all)[:, 5:] ** 2).mean())
    assert measured == pytest.approx(theory.label_error(Z_all, 5, 0.1, 0.4, ch03.out_of_domain_moment(4)), rel=0.1)


def counted(x: int) -> int:
    """A stand-in for an expensive computation (module level, so its source is its key)."""
    return 2 * x


def test_cuda_result_keeps_a_pending_record_pending_on_a_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_RECORDS_DIR", str(tmp_path / "records"))
    (tmp_path / "records" / "ch99").mkdir(parents=True)
    (tmp_path / "records" / "ch99" / "pending.json").write_text(
        json.dumps({"ch99/gpu": {"command": "make record CHAPTERS=99 on a CUDA machine", "reason": "needs a GPU"}}))
    assert ch03.cuda_result("ch99/gpu", counted, 3) == 6  # live edition: computed
    monkeypatch.setenv("ICL_FULL", "1")
    monkeypatch.setenv("ICL_RECORD", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    value = ch03.cuda_result("ch99/gpu", counted, 3)
    assert records.is_pending(value) and "CUDA" in value.command
    assert not (tmp_path / "records" / "ch99" / "gpu.json").exists()
    assert ch03.cuda_result("ch99/cpu", counted, 4) == 8  # not listed as pending: recorded as usual
    assert (tmp_path / "records" / "ch99" / "cpu.json").exists()
    monkeypatch.setenv("ICL_RECORD", "0")  # replay: pending as well
    assert records.is_pending(ch03.cuda_result("ch99/gpu", counted, 3))


def test_training_histories_round_trip_through_a_record(monkeypatch, tmp_path):
    monkeypatch.setenv("ICL_RECORDS_DIR", str(tmp_path / "records"))
    runs = ch03.one_layer_runs(TINY, 6, ch03.ExactGD(), 4, [0], eval_every=2)
    records.write("ch99/runs", runs, {}, {})
    back = records.read("ch99/runs").value
    assert isinstance(back[0], ch03.OneLayerRun) and isinstance(back[0].history, train.TrainingHistory)
    assert back[0].history.in_domain == runs[0].history.in_domain
    torch.testing.assert_close(back[0].A_tilde, runs[0].A_tilde)
