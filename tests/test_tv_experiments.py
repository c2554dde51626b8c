"""Tests of icllib.tv_experiments: spreads and rates, averaging, interpolation, addition vectors, the model sweeps."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch

from icllib import lang_tasks, llm, testing
from icllib import task_vectors as tv
from icllib import tv_experiments as tx

LETTERS = [(c, c.upper()) for c in string.ascii_lowercase]  # to_upper, 26 pairs


@pytest.fixture(scope="module")
def tiny():
    return testing.tiny_random_model("llama", n_layers=3, seed=2)


@pytest.fixture(scope="module")
def tok():
    return testing.CharTokenizer()


# ----------------------------------------------------------------------------------------------------------------
# Spread and the 1/k law
# ----------------------------------------------------------------------------------------------------------------
def test_set_spread_is_the_trace_of_the_covariance_and_cosine_ignores_length():
    theta = torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(tx.set_spread(theta), torch.cov(theta.T).trace())
    assert float(tx.set_spread(torch.tensor([[0.0], [2.0]]))) == pytest.approx(2.0)
    parallel = torch.tensor([[1.0, 2.0], [3.0, 6.0], [0.5, 1.0]])
    assert float(tx.set_spread(parallel, "cosine")) == pytest.approx(0.0, abs=1e-6)
    layered = torch.randn(4, 3, 6, generator=torch.Generator().manual_seed(1))
    per_layer = tx.set_spread(layered)
    assert per_layer.shape == (3,)
    assert torch.allclose(per_layer[1], tx.set_spread(layered[:, 1]))


def test_fit_inverse_k_recovers_floor_and_rate():
    k = np.array([1, 2, 4, 8, 16])
    fit = tx.fit_inverse_k(k, 0.5 + 3.0 / k)
    assert fit.a == pytest.approx(0.5) and fit.b == pytest.approx(3.0) and fit.r2 == pytest.approx(1.0)
    assert fit.floor_share == pytest.approx(0.5 / 3.5)
    np.testing.assert_allclose(fit(k), 0.5 + 3.0 / k)
    pure = tx.fit_inverse_k(k, 2.0 / k)
    assert pure.slope == pytest.approx(-1.0) and pure.a == pytest.approx(0.0, abs=1e-12)
    rising = tx.fit_inverse_k(k, 0.1 * k)  # a negative floor is refused: falls back to b / k or a constant
    assert rising.a >= 0 and rising.b >= 0


def test_ridge_spread_falls_like_one_over_k_when_k_exceeds_m():
    g = torch.Generator().manual_seed(0)
    m, K = 3, 600
    Z_all = torch.randn(m, K, generator=g, dtype=torch.float64)
    lam = torch.randn(m, generator=g, dtype=torch.float64)
    ks = [25, 100, 400]
    v = tx.ridge_spread(Z_all, lam, 0.01, 0.5, ks, 300, g)
    assert v.shape == (3,) and v.dtype == torch.float64
    fit = tx.fit_inverse_k(ks, v.numpy())
    assert -1.25 < fit.slope < -0.8
    # the asymptotic law noise^2 tr(Sigma^{-1}) / k, Sigma the features' second moment
    predicted = 0.25 * torch.linalg.inv(Z_all @ Z_all.T / K).trace() / 100
    assert float(v[1]) == pytest.approx(float(predicted), rel=0.25)


# ----------------------------------------------------------------------------------------------------------------
# Averaging, interpolation, the addition vector
# ----------------------------------------------------------------------------------------------------------------
def test_group_means():
    theta = torch.arange(12.0).reshape(6, 2)
    assert torch.equal(tx.group_means(theta, 1), theta)
    assert torch.allclose(tx.group_means(theta, 6), theta.mean(0, keepdim=True))
    pairs = tx.group_means(theta, 2)
    assert pairs.shape == (3, 2) and torch.allclose(pairs[0], theta[:2].mean(0))
    assert tx.group_means(theta, 4).shape == (1, 2)  # leftovers dropped
    shuffled = tx.group_means(theta, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(shuffled.mean(0), theta.mean(0))
    layered = torch.randn(8, 4, 5, generator=torch.Generator().manual_seed(2))
    assert tx.group_means(layered, 2).shape == (4, 4, 5)


def test_interpolate_and_mean_difference():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    out = tx.interpolate(a, b, [0.0, 0.5, 1.0])
    assert torch.allclose(out, torch.tensor([[1.0, 0.0], [0.5, 1.5], [0.0, 3.0]]))
    assert tx.interpolate(torch.zeros(3, 4), torch.ones(3, 4), np.linspace(0, 1, 5)).shape == (5, 3, 4)
    theta = torch.tensor([[[1.0, 1.0]], [[3.0, 1.0]]])  # (2 sets, 1 layer, d = 2)
    bare = torch.tensor([[[0.0, 1.0]], [[0.0, 3.0]], [[0.0, 2.0]]])
    assert torch.allclose(tx.mean_difference(theta, bare), torch.tensor([[2.0, -1.0]]))


def test_answer_shares_and_switch_point():
    inputs = ["a", "a", "b", "c"]
    upper, following = [(x, x.upper()) for x in inputs], [(x, chr(ord(x) + 1)) for x in inputs]
    shares = tx.answer_shares(["A", "b", "?", "C"], upper, following)  # exact match by default
    assert (shares.a, shares.b, shares.neither) == (0.5, 0.25, 0.25)
    by_rule = tx.answer_shares(["A", "b", "?", "C"], upper, following, lambda p, x, y: p == x.upper(),
                               lambda p, x, y: p == chr(ord(x) + 1))
    assert by_rule == shares
    alphas = np.linspace(0, 1, 11)
    step_b = (alphas > 0.45).astype(float)
    sharp = tx.switch_point(alphas, 1 - step_b, step_b)
    assert sharp.alpha_star == pytest.approx(0.45) and sharp.width == pytest.approx(0.08)
    smooth = tx.switch_point(alphas, 1 - alphas, alphas)
    assert smooth.alpha_star == pytest.approx(0.5) and smooth.width == pytest.approx(0.8)
    never = tx.switch_point(alphas, np.ones(11), np.zeros(11))
    assert np.isnan(never.alpha_star) and np.isnan(never.width)


def test_answer_labels_and_shares_of():
    inputs = ["a", "a", "b", "c"]
    upper, following = [(x, x.upper()) for x in inputs], [(x, chr(ord(x) + 1)) for x in inputs]
    labels = tx.answer_labels(["A", "b", "?", "C"], upper, following)
    np.testing.assert_array_equal(labels, [tx.ANSWER_A, tx.ANSWER_B, tx.NEITHER, tx.ANSWER_A])
    assert labels.dtype == np.int8
    assert tx.shares_of(labels) == tx.answer_shares(["A", "b", "?", "C"], upper, following)


def test_switch_interval_brackets_a_sharp_switch_and_a_gradual_one_is_wide():
    alphas = np.linspace(0, 1, 11)
    # 20 queries, each switching from A to B at its own alpha: sharp when the switch points agree
    sharp = np.where(alphas[:, None] < 0.45, tx.ANSWER_A, tx.ANSWER_B).repeat(20, axis=1)
    at, width = tx.switch_interval(alphas, sharp, n_resamples=200)
    assert at.estimate == pytest.approx(0.45) and at.low == at.high == pytest.approx(0.45)
    assert width.high <= 0.1
    cut = np.linspace(0.05, 0.95, 20)  # gradual: the queries switch one after another
    gradual = np.where(alphas[:, None] < cut[None, :], tx.ANSWER_A, tx.ANSWER_B)
    at, width = tx.switch_interval(alphas, gradual, n_resamples=200, seed=1)
    assert at.contains(0.5) and width.estimate > 0.6 and width.low > 0.4
    assert at.method == "bootstrap" and at.n == 20
    # no switch at all counts as alpha = 1 with the full width (the conservative reading)
    never = np.full((11, 5), tx.ANSWER_A)
    at, width = tx.switch_interval(alphas, never, n_resamples=50)
    assert at.estimate == 1.0 and width.estimate == 1.0


def test_spread_slope_interval_finds_the_rate_and_the_demonstrations_part():
    g = torch.Generator().manual_seed(0)
    ks = [2, 4, 8, 16]
    # vectors whose spread falls exactly like 1/k in expectation: noise of variance 1/k per coordinate
    thetas = [torch.randn(400, 6, generator=g, dtype=torch.float64) / k ** 0.5 for k in ks]
    slope = tx.spread_slope_interval(ks, thetas, n_resamples=300)
    assert slope.contains(-1.0) and slope.width < 0.2 and slope.n == 400
    point = np.polyfit(np.log(ks), np.log([float(tx.set_spread(t)) for t in thetas]), 1)[0]
    assert slope.estimate == pytest.approx(point)
    # add a floor that the per-set "dummy" variances account for: the total falls slower, the rest like 1/k
    floor = [t + torch.randn(400, 6, generator=g, dtype=torch.float64) for t in thetas]
    dummy = [torch.full((400,), 6.0, dtype=torch.float64) for _ in ks]
    assert tx.spread_slope_interval(ks, floor, n_resamples=300).high < -0.0
    assert tx.spread_slope_interval(ks, floor, n_resamples=300).low > -0.6
    assert tx.spread_slope_interval(ks, floor, dummy, n_resamples=300).contains(-1.0)


def test_split_pairs_is_disjoint_seeded_and_the_same_for_shared_inputs():
    demos, queries = tx.split_pairs(LETTERS, 0.3, seed=3)
    assert len(demos) + len(queries) == 26 and 2 <= len(queries) <= 16
    assert not {x for x, _ in demos} & {x for x, _ in queries}
    assert tx.split_pairs(LETTERS, 0.3, seed=3) == (demos, queries)
    assert tx.split_pairs(LETTERS, 0.3, seed=4) != (demos, queries)
    next_letter = [(c, chr(ord(c) + 1)) for c in string.ascii_lowercase[:-1]]  # shares 25 inputs with LETTERS
    _, held = tx.split_pairs(next_letter, 0.3, seed=3)
    assert {x for x, _ in held} == {x for x, _ in queries} - {"z"}


# ----------------------------------------------------------------------------------------------------------------
# On a tiny random model
# ----------------------------------------------------------------------------------------------------------------
def test_patch_grid_matches_patched_predictions(tiny, tok):
    vectors = torch.randn(3, llm.hidden_size(tiny), generator=torch.Generator().manual_seed(0))
    queries = ["a", "q", "z"]
    grid = tx.patch_grid(tiny, tok, vectors, queries, layer=1)
    assert len(grid) == 3 and all(len(row) == 3 for row in grid)
    direct = tv.patched_predictions(tiny, tok, [tv.format_prompt([], "q", "example")], vectors[2:3], [1])
    assert grid[2][1] == tok.decode([int(direct[0, 0])])
    added = tx.patch_grid(tiny, tok, torch.zeros(1, llm.hidden_size(tiny)), queries, layer=2, mode="add")
    plain = tv.predict(tiny, tok, [tv.format_prompt([], x, "example") for x in queries])
    assert added[0] == [tok.decode([int(i)]) for i in plain.tolist()]  # adding zero changes nothing


def test_demo_count_sweep_on_a_tiny_model(tiny, tok):
    demos, queries = tx.split_pairs(LETTERS, 0.25, seed=0)
    sweep = tx.demo_count_sweep(tiny, tok, demos, queries, [1, 3], layer=1, n_sets=4, n_queries=2, seed=5,
                                all_layers_at=3)
    assert sweep.n_demos == [1, 3] and sweep.layer == 1
    assert sweep.theta_all.shape == (4, 3, llm.hidden_size(tiny))
    np.testing.assert_allclose(sweep.theta_all[:, 1], sweep.theta[3], rtol=1e-6)
    assert np.all(sweep.dummy_spread >= 0) and sweep.dummy_spread.shape == (2,)
    assert sweep.theta[3].shape == (4, llm.hidden_size(tiny)) and sweep.spread_by_layer[1].shape == (3,)
    assert sweep.spread.shape == (2,)
    assert sweep.spread[1] == pytest.approx(float(tx.set_spread(torch.tensor(sweep.theta[3]).double())), rel=1e-5)
    assert all(0.0 <= sweep.icl[k] <= 1.0 and 0.0 <= sweep.tv[k] <= 1.0 for k in (1, 3))
    assert sweep.icl_hits[3].shape == (4,) and sweep.tv_hits[3].shape == (4, 2) and sweep.tv_hits[3].dtype == bool
    assert sweep.tv[3] == pytest.approx(sweep.tv_hits[3].mean())
    # the per-set dummy variances average to the dummies' part of the spread at the patched block
    assert sweep.dummy_var[3].shape == (4,) and np.all(sweep.dummy_var[3] >= 0)
    assert sweep.dummy_var[3].mean() == pytest.approx(sweep.dummy_spread[1], rel=1e-6)
    again = tx.demo_count_sweep(tiny, tok, demos, queries, [1, 3], layer=1, n_sets=4, n_queries=2, seed=5)
    np.testing.assert_allclose(again.theta[3], sweep.theta[3])  # seeded
    # a Task is a scorer; an exact-rule task scores like exact match
    task = lang_tasks.Task("letters", "algorithmic", tuple(LETTERS), "exact")
    scored = tx.demo_count_sweep(tiny, tok, demos, queries, [1, 3], layer=1, n_sets=4, n_queries=2, seed=5,
                                 scorer=task)
    assert (scored.icl, scored.tv) == (again.icl, again.tv)
    always = tx.demo_count_sweep(tiny, tok, demos, queries, [1], layer=1, n_sets=2, seed=5,
                                 scorer=lambda p, x, y: True)
    assert always.icl[1] == always.tv[1] == 1.0


def test_interpolation_labels_are_answer_labels_of_the_patch_grid(tiny, tok):
    generator = torch.Generator().manual_seed(3)
    theta_a, theta_b = torch.randn(2, llm.hidden_size(tiny), generator=generator)
    pairs_a = [(c, c.upper()) for c in "abc"]
    pairs_b = [(c, chr(ord(c) + 1)) for c in "abc"]
    alphas = [0.0, 0.5, 1.0]
    labels = tx.interpolation_labels(tiny, tok, theta_a, theta_b, alphas, pairs_a, pairs_b, layer=1)
    assert labels.shape == (3, 3) and labels.dtype == np.int8
    grid = tx.patch_grid(tiny, tok, tx.interpolate(theta_a, theta_b, alphas), ["a", "b", "c"], 1)
    assert [tx.shares_of(row) for row in labels] == [tx.answer_shares(row, pairs_a, pairs_b) for row in grid]
    task_b = lang_tasks.Task("next", "algorithmic", tuple(pairs_b), "exact")
    np.testing.assert_array_equal(
        tx.interpolation_labels(tiny, tok, theta_a, theta_b, alphas, pairs_a, pairs_b, 1, scorer_b=task_b), labels)


def test_averaged_accuracy_and_replace_vs_add_on_a_tiny_model(tiny, tok):
    demos, queries = tx.split_pairs(LETTERS, 0.25, seed=0)
    sets = [demos[i:i + 3] for i in range(0, 12, 3)]
    dummies = [[demos[-1][0], demos[-2][0]]] * 4
    theta = tv.extract_task_vectors(tiny, tok, sets, dummies)  # (4, L, d)
    out = tx.averaged_accuracy(tiny, tok, theta[:, 1], queries, 1, [1, 2, 4], n_queries=10, seed=0)
    assert out.group_sizes == [1, 2, 4] and len(out.queries) == 10  # more queries than the pool: it is reused
    assert set(out.queries) <= set(queries) and len(set(out.queries)) == len(queries)
    assert all(out.hits[j].shape == (10,) and out.hits[j].dtype == bool for j in (1, 2, 4))
    np.testing.assert_array_equal(out.group[2], np.arange(10) % 2)  # the 2 group means dealt out in turn
    # the hit of query q is the patched prediction with its own group mean
    means = tx.group_means(theta[:, 1], 2)
    q = 3
    direct = tv.patched_predictions(tiny, tok, [tv.format_prompt([], out.queries[q][0], "example")],
                                    means[out.group[2][q]][None].float(), [1])
    assert out.hits[2][q] == (tok.decode([int(direct[0, 0])]) == out.queries[q][1])
    assert all(0.0 <= a <= 1.0 for a in out.accuracy.values())
    always = tx.averaged_accuracy(tiny, tok, theta[:, 1], queries, 1, [1, 2], n_queries=4, seed=0,
                                  scorer=lambda p, x, y: True)
    assert always.accuracy == {1: 1.0, 2: 1.0}
    bare = tv.last_position_states(tiny, tok, [tv.format_prompt([], x, "example") for x, _ in demos[:5]])
    result = tx.replace_vs_add(tiny, tok, theta, bare, queries[:4], scales=(0.0, 1.0))
    n_layers = llm.n_layers(tiny)
    assert result.replace_set.shape == (4, n_layers) and result.add[1.0].shape == (4, n_layers)
    assert result.replace_mean.dtype == bool
    assert np.allclose(result.delta_norm, tx.mean_difference(theta, bare).double().norm(dim=-1).numpy())
    # adding 0 * Delta is the bare query: its hits are the zero-shot hits at every block
    plain = tv.predict(tiny, tok, [tv.format_prompt([], x, "example") for x, _ in queries[:4]])
    zero_shot = np.array([tok.decode([int(i)]) == y for (_, y), i in zip(queries[:4], plain.tolist())])
    np.testing.assert_array_equal(result.add[0.0], np.repeat(zero_shot[:, None], n_layers, axis=1))


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: tx.set_spread([[1.0, 2.0]]), TypeError),
        (lambda: tx.set_spread(torch.zeros(1, 3)), ValueError),
        (lambda: tx.set_spread(torch.zeros(3)), ValueError),
        (lambda: tx.set_spread(torch.zeros(3, 2), metric="l1"), ValueError),
        (lambda: tx.fit_inverse_k([1, 2], [1.0]), ValueError),
        (lambda: tx.fit_inverse_k([2, 2], [1.0, 1.0]), ValueError),
        (lambda: tx.fit_inverse_k([0, 2], [1.0, 1.0]), ValueError),
        (lambda: tx.fit_inverse_k([1, 2], [1.0, -1.0]), ValueError),
        (lambda: tx.ridge_spread(torch.zeros(3, 10), torch.zeros(2), 0.1, 0.1, [2], 5,
                                 torch.Generator()), ValueError),
        (lambda: tx.ridge_spread(torch.zeros(3, 10), torch.zeros(3), 0.1, 0.1, [11], 5,
                                 torch.Generator()), ValueError),
        (lambda: tx.ridge_spread(torch.zeros(3, 10), torch.zeros(3), 0.1, 0.1, [2], 5, 0), TypeError),
        (lambda: tx.ridge_spread(torch.zeros(3, 10), torch.zeros(3), -1.0, 0.1, [2], 5,
                                 torch.Generator()), ValueError),
        (lambda: tx.group_means(torch.zeros(4, 2), 5), ValueError),
        (lambda: tx.group_means(torch.zeros(4, 2), 1.5), TypeError),
        (lambda: tx.group_means(torch.zeros(4, 2), 2, generator=3), TypeError),
        (lambda: tx.interpolate(torch.zeros(3), torch.zeros(4), [0.5]), ValueError),
        (lambda: tx.interpolate(torch.zeros(3), torch.zeros(3), [float("nan")]), ValueError),
        (lambda: tx.interpolate(torch.zeros(3), torch.zeros(3), 0.5), TypeError),
        (lambda: tx.interpolate(torch.zeros(3), torch.zeros(3), []), ValueError),
        (lambda: tx.mean_difference(torch.zeros(2, 3, 4), torch.zeros(2, 3, 5)), ValueError),
        (lambda: tx.answer_shares(["A"], [("a", "A"), ("b", "B")], [("a", "b"), ("b", "c")]), ValueError),
        (lambda: tx.answer_shares(["A"], [("a", "A")], [("a", "b")], lambda p, x, y: True, lambda p, x, y: True),
         ValueError),
        (lambda: tx.answer_shares("A", [("a", "A")], [("a", "b")]), TypeError),
        (lambda: tx.answer_shares(["A"], [("a", "A")], [("b", "c")]), ValueError),
        (lambda: tx.answer_shares(["A"], [("a", "A")], [("a", "b")], 3), TypeError),
        (lambda: tx.answer_shares(["A"], "aA", [("a", "b")]), TypeError),
        (lambda: tx.switch_point([0.0, 1.0], [1.0], [0.0, 1.0]), ValueError),
        (lambda: tx.switch_point([1.0, 0.0], [1.0, 0.0], [0.0, 1.0]), ValueError),
        (lambda: tx.shares_of([]), ValueError),
        (lambda: tx.shares_of([0, 3]), ValueError),
        (lambda: tx.switch_interval([0.0, 1.0], np.zeros((3, 4), np.int8)), ValueError),
        (lambda: tx.switch_interval([0.0, 1.0], np.zeros((2, 1), np.int8)), ValueError),
        (lambda: tx.switch_interval([0.0, 1.0], np.full((2, 3), 5)), ValueError),
        (lambda: tx.spread_slope_interval([2], [torch.zeros(3, 2)]), ValueError),
        (lambda: tx.spread_slope_interval([2, 4], [torch.zeros(3, 2)]), ValueError),
        (lambda: tx.spread_slope_interval([2, 4], torch.zeros(2, 3, 2)), TypeError),
        (lambda: tx.spread_slope_interval([2, 4], [torch.zeros(1, 2), torch.zeros(3, 2)]), ValueError),
        (lambda: tx.spread_slope_interval([2, 4], [torch.zeros(3, 2)] * 2, [torch.zeros(2)] * 2), ValueError),
        (lambda: tx.spread_slope_interval([2, 4], [torch.zeros(3, 2)] * 2, n_resamples=1), ValueError),
        (lambda: tx.split_pairs(LETTERS, 1.0, 0), ValueError),
        (lambda: tx.split_pairs(LETTERS, 0.0, 0), ValueError),
        (lambda: tx.split_pairs(LETTERS, 0.3, -1), ValueError),
        (lambda: tx.split_pairs(LETTERS, "0.3", 0), TypeError),
        (lambda: tx.split_pairs("ab", 0.5, 0), TypeError),
        (lambda: tx.split_pairs([("a", 1)], 0.5, 0), TypeError),
    ],
)
def test_bad_inputs(call, error):
    with pytest.raises(error):
        call()


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m, t: tx.patch_grid(m, t, torch.zeros(2, 32), "ab", 1), TypeError),
        (lambda m, t: tx.patch_grid(m, t, torch.zeros(32), ["a"], 1), ValueError),
        (lambda m, t: tx.patch_grid(m, t, torch.zeros(1, 32), ["a"], 1, mode="mul"), ValueError),
        (lambda m, t: tx.demo_count_sweep(m, t, LETTERS[:10], LETTERS[10:], [9], 1, 4), ValueError),
        (lambda m, t: tx.demo_count_sweep(m, t, LETTERS[:10], LETTERS[10:], [1], 1, 4, n_dummies=1), ValueError),
        (lambda m, t: tx.demo_count_sweep(m, t, LETTERS[:10], LETTERS[10:], [1], 1, 4, all_layers_at=2),
         ValueError),
        (lambda m, t: tx.demo_count_sweep(m, t, LETTERS[:10], LETTERS[10:], [1, 1], 1, 4), ValueError),
        (lambda m, t: tx.demo_count_sweep(m, t, LETTERS[:10], LETTERS[10:], [1], 3, 4), ValueError),
        (lambda m, t: tx.demo_count_sweep(m, t, LETTERS[:10], LETTERS[10:], [1], 1, 1), ValueError),
        (lambda m, t: tx.demo_count_sweep(m, t, LETTERS[:10], LETTERS[10:], [1], 1, 4, scorer=3), TypeError),
        (lambda m, t: tx.interpolation_labels(m, t, torch.zeros(2, 32), torch.zeros(2, 32), [0.5], [("a", "A")],
                                              [("a", "b")], 1), ValueError),
        (lambda m, t: tx.interpolation_labels(m, t, torch.zeros(32), torch.zeros(32), [0.5], [("a", "A")],
                                              [("b", "b")], 1), ValueError),
        (lambda m, t: tx.interpolation_labels(m, t, torch.zeros(32), torch.zeros(32), [0.5], [("a", "A")],
                                              [("a", "b")], 1, scorer_a=1), TypeError),
        (lambda m, t: tx.averaged_accuracy(m, t, torch.zeros(4, 32), LETTERS, 1, [1], scorer="x"), TypeError),
        (lambda m, t: tx.replace_vs_add(m, t, torch.zeros(2, 3, 32), torch.zeros(4, 3, 32), LETTERS[:2],
                                        scorer=2), TypeError),
        (lambda m, t: tx.averaged_accuracy(m, t, torch.zeros(4, 32), LETTERS, 1, [8]), ValueError),
        (lambda m, t: tx.averaged_accuracy(m, t, torch.zeros(4, 32), LETTERS, 1, [1], n_queries=0), ValueError),
        (lambda m, t: tx.averaged_accuracy(m, t, torch.zeros(4, 32), "ab", 1, [1]), TypeError),
        (lambda m, t: tx.replace_vs_add(m, t, torch.zeros(2, 3, 32), torch.zeros(4, 3, 32), LETTERS[:3]),
         ValueError),
        (lambda m, t: tx.replace_vs_add(m, t, torch.zeros(2, 3, 32), torch.zeros(4, 3, 32), LETTERS[:2],
                                        scales=()), TypeError),
        (lambda m, t: tx.replace_vs_add(m, t, torch.zeros(2, 32), torch.zeros(4, 32), LETTERS[:2]), ValueError),
    ],
)
def test_bad_inputs_with_a_model(tiny, tok, call, error):
    with pytest.raises(error):
        call(tiny, tok)
