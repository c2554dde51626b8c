"""Tests of the one-layer multi-head model (icllib.models.one_layer)."""

import numpy as np
import pytest
import torch

from icllib.models.one_layer import GeneralFormWeights, OneLayerMultiHead, general_form_predictions

K, D, N, H = 12, 5, 4, 6




def _tokens(seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)


def _model(seed: int = 0, n_heads: int = H, dtype=torch.float64, random_w: bool = True) -> OneLayerMultiHead:
    g = torch.Generator().manual_seed(seed)
    model = OneLayerMultiHead(_tokens(seed, dtype), N, n_heads, generator=g, dtype=dtype)
    if random_w:
        with torch.no_grad():
            model.w.copy_(torch.randn(n_heads, K, generator=g, dtype=torch.float64).to(dtype))
    return model


def test_shapes_and_init():
    model = _model(random_w=False)
    assert model.Q.shape == (H, D, D) and model.w.shape == (H, K)
    assert model.attention_matrix().shape == (N, K)
    assert model.attention_scores().shape == (H, N, K)
    # w = 0 at initialisation: every prediction is 0.
    y = torch.randn(7, N, dtype=torch.float64)
    assert torch.equal(model(y), torch.zeros(7, K, dtype=torch.float64))


def test_init_scale_and_reproducibility():
    a = OneLayerMultiHead(_tokens(), N, 200, generator=torch.Generator().manual_seed(3), init_scale=0.5)
    b = OneLayerMultiHead(_tokens(), N, 200, generator=torch.Generator().manual_seed(3), init_scale=0.5)
    assert torch.equal(a.Q, b.Q)
    assert abs(float(a.Q.detach().std()) - 0.5) < 0.02


def test_scores_are_softmax_over_prompt_positions():
    model = _model()
    S = model.attention_scores()
    assert torch.all(S > 0)
    torch.testing.assert_close(S.sum(dim=1), torch.ones(H, K, dtype=torch.float64))
    # Direct formula for one head and one token: s_k^h = softmax(V^T Q_h v_k).
    h, k = 2, 7
    V = model.tokens[:N]
    expected = torch.softmax(V @ model.Q[h] @ model.tokens[k], dim=0)
    torch.testing.assert_close(S[h, :, k], expected)


def test_forward_is_linear_in_labels_and_batched():
    model = _model()
    y = torch.randn(3, 2, N, dtype=torch.float64)
    out = model(y)
    assert out.shape == (3, 2, K)
    torch.testing.assert_close(out, y @ model.attention_matrix())
    torch.testing.assert_close(model(y[0, 0]), out[0, 0])
    # numpy input and float32 input are accepted
    torch.testing.assert_close(model(y.numpy()), out)
    assert model(y.float()).dtype == torch.float64


def test_general_form_equals_model():
    for dtype in (torch.float64, torch.float32):
        model = _model(seed=1, dtype=dtype)
        y = torch.randn(5, N, dtype=dtype)
        weights = model.to_general_form()
        assert isinstance(weights, GeneralFormWeights)
        assert weights.W_Q.shape == (H, D + 1, D + 1) and weights.W_O.shape == (K, H * (D + 1))
        general = general_form_predictions(weights, model.tokens, y, N)
        tol = 1e-12 if dtype == torch.float64 else 1e-4
        torch.testing.assert_close(general, model(y).detach(), atol=tol, rtol=tol)


def test_general_form_with_generic_weights_runs():
    g = torch.Generator().manual_seed(0)
    weights = GeneralFormWeights(*(torch.randn(H, D + 1, D + 1, generator=g, dtype=torch.float64) for _ in range(3)),
                                 W_O=torch.randn(K, H * (D + 1), generator=g, dtype=torch.float64))
    out = general_form_predictions(weights, _tokens(), torch.randn(N, dtype=torch.float64), N)
    assert out.shape == (K,) and torch.isfinite(out).all()


def test_gradients_flow_to_both_parameters():
    model = _model()
    model(torch.randn(4, N, dtype=torch.float64)).pow(2).sum().backward()
    assert model.Q.grad is not None and model.Q.grad.abs().sum() > 0
    assert model.w.grad is not None and model.w.grad.abs().sum() > 0


def test_float32_model():
    model = _model(dtype=torch.float32)
    assert model.Q.dtype == torch.float32 and model(torch.randn(2, N)).dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_labeled": K}, ValueError, "n_labeled"),
        ({"n_labeled": 0}, ValueError, "n_labeled"),
        ({"n_labeled": 2.5}, TypeError, "n_labeled"),
        ({"n_heads": 0}, ValueError, "n_heads"),
        ({"init_scale": 0.0}, ValueError, "init_scale"),
        ({"generator": 0}, TypeError, "generator"),
        ({"dtype": torch.int64}, TypeError, "dtype"),
        ({"tokens": np.ones((K, D), dtype=np.int64)}, TypeError, "tokens"),
        ({"tokens": torch.ones(K)}, ValueError, "tokens"),
        ({"tokens": torch.ones(1, D, dtype=torch.float64)}, ValueError, "K >= 2"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    args = {"tokens": _tokens(), "n_labeled": N, "n_heads": H, "generator": torch.Generator().manual_seed(0)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        OneLayerMultiHead(**args)


def test_bad_forward_arguments():
    model = _model()
    with pytest.raises(ValueError, match="n_labeled"):
        model(torch.zeros(3, N + 1, dtype=torch.float64))
    with pytest.raises(TypeError, match="y"):
        model(torch.zeros(3, N, dtype=torch.int64))
    with pytest.raises(TypeError, match="y"):
        model([0.0] * N)
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((N,), float("nan"), dtype=torch.float64))


def test_bad_general_form_arguments():
    model = _model()
    weights = model.to_general_form()
    y = torch.zeros(N, dtype=torch.float64)
    with pytest.raises(ValueError, match="W_O"):
        general_form_predictions(GeneralFormWeights(weights.W_Q, weights.W_K, weights.W_V, weights.W_O[:-1]),
                                 model.tokens, y, N)
    with pytest.raises(ValueError, match="W_K"):
        general_form_predictions(GeneralFormWeights(weights.W_Q, weights.W_K[:, :-1], weights.W_V, weights.W_O),
                                 model.tokens, y, N)
    with pytest.raises(ValueError, match="y must have shape"):
        general_form_predictions(weights, model.tokens, torch.zeros(N + 1, dtype=torch.float64), N)
    with pytest.raises(ValueError, match="n_labeled"):
        general_form_predictions(weights, model.tokens, y, K)
