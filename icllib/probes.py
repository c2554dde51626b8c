"""Linear probes: how much of a target (e.g. the closed-form task vector lambda_hat) a hidden state holds linearly.

A probe fits ``Y ~ X W + b`` by ridge regression on training examples and reports the coefficient of
determination on held-out ones,

    R^2 = 1 - sum_i ||Y_i - Yhat_i||^2 / sum_i ||Y_i - Ybar||^2,                                              (P1)

pooled over the output coordinates (``Ybar`` the training mean, so a probe that has learned nothing scores about 0
and a perfect one 1; held-out R^2 can be negative). Chapter 10 probes lambda_hat (m numbers) from the residual stream
at each layer of a trained causal transformer, to compare the layer where lambda_hat is most linearly decodable with
the layer where patching the task vector works best, with the controls of :func:`probe_with_controls` (the raw labels,
a random linear image of them), which tell a state that holds lambda_hat from one that merely holds the labels.

The ridge penalty is relative: ``reg`` times the mean eigenvalue of the centred Gram matrix ``X_c^T X_c``, so the
same ``reg`` means the same thing at every layer whatever the scale of the hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from icllib._checks import as_float_tensor, check_float, check_generator, check_int

__all__ = ["LinearProbe", "fit_linear_probe", "r2_score", "ProbeCurve", "probe_layers", "random_linear_image",
           "probe_with_controls"]


def _pair(X, Y, x_name: str = "X", y_name: str = "Y") -> tuple[torch.Tensor, torch.Tensor]:
    X = as_float_tensor(x_name, X, ndim=2).double()
    Y = as_float_tensor(y_name, Y, ndim=(1, 2)).double()
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"{x_name} {tuple(X.shape)} and {y_name} {tuple(Y.shape)} must have the same number of rows")
    return X, Y


def r2_score(Y, Y_pred, Y_mean=None) -> float:
    """Pooled coefficient of determination (P1): ``1 - SSE / SST`` over all rows and output coordinates.

    ``Y`` and ``Y_pred`` (n,) or (n, q); ``Y_mean`` (q,) is the reference mean (default: the mean of ``Y``; a probe
    passes its training mean so that held-out R^2 measures what the probe learned). Raises ``ValueError`` when ``Y``
    has no spread around the mean.
    """
    Y = as_float_tensor("Y", Y, ndim=(1, 2)).double()
    Y_pred = as_float_tensor("Y_pred", Y_pred, ndim=(1, 2)).double()
    if Y.shape != Y_pred.shape:
        raise ValueError(f"Y and Y_pred must have the same shape, got {tuple(Y.shape)} and {tuple(Y_pred.shape)}")
    if Y.ndim == 1:
        Y, Y_pred = Y[:, None], Y_pred[:, None]
    if Y_mean is None:
        mean = Y.mean(0)
    else:
        mean = as_float_tensor("Y_mean", Y_mean, ndim=(0, 1)).double().reshape(-1)
        if mean.numel() != Y.shape[1]:
            raise ValueError(f"Y_mean must have {Y.shape[1]} entries (one per output), got {mean.numel()}")
    return _r2(Y, Y_pred, mean)


def _r2(Y: torch.Tensor, Y_pred: torch.Tensor, mean: torch.Tensor) -> float:
    """(P1) for float64 ``Y``, ``Y_pred`` (n, q) and ``mean`` (q,)."""
    total = float(((Y - mean) ** 2).sum())
    if total <= 0:
        raise ValueError("Y has no spread around its mean: R^2 is undefined")
    return 1.0 - float(((Y - Y_pred) ** 2).sum()) / total


@dataclass
class LinearProbe:
    """A fitted linear probe ``Yhat = (X - x_mean) W + y_mean`` (ridge on centred data).

    ``weight`` (p, q), ``x_mean`` (p,), ``y_mean`` (q,) (float64); ``reg`` the relative penalty used.
    """

    weight: torch.Tensor
    x_mean: torch.Tensor
    y_mean: torch.Tensor
    reg: float

    def predict(self, X) -> torch.Tensor:
        """Predictions (n, q) for inputs ``X`` (n, p)."""
        return self._predict(self._features(as_float_tensor("X", X, ndim=2).double()))

    def _features(self, X: torch.Tensor) -> torch.Tensor:
        if X.shape[1] != self.weight.shape[0]:
            raise ValueError(f"X must have {self.weight.shape[0]} columns (features), got {tuple(X.shape)}")
        return X

    def _predict(self, X: torch.Tensor) -> torch.Tensor:
        return (X - self.x_mean) @ self.weight + self.y_mean

    def r2(self, X, Y) -> float:
        """Held-out R^2 (P1) of the probe on ``(X, Y)``, relative to the training mean."""
        X, Y = _pair(X, Y)
        X = self._features(X)
        if Y.shape[1] != self.weight.shape[1]:
            raise ValueError(f"Y must have {self.weight.shape[1]} columns (outputs), got {tuple(Y.shape)}")
        return _r2(Y, self._predict(X), self.y_mean)


def fit_linear_probe(X, Y, reg: float = 1e-6) -> LinearProbe:
    """Ridge regression of ``Y`` (n, q) or (n,) on ``X`` (n, p), centred, with penalty ``reg * mean eig(X_c^T X_c)``.

    ``reg = 0`` gives least squares (minimum-norm when ``X_c`` is rank deficient).
    """
    X, Y = _pair(X, Y)
    reg = check_float("reg", reg, minimum=0.0)
    if X.shape[0] < 2:
        raise ValueError(f"X must hold at least 2 examples (rows) to fit a probe, got {X.shape[0]}")
    return _fit(X, Y, reg)


def _fit(X: torch.Tensor, Y: torch.Tensor, reg: float) -> LinearProbe:
    """:func:`fit_linear_probe` on float64 ``X`` (n, p) and ``Y`` (n, q), n >= 2."""
    x_mean, y_mean = X.mean(0), Y.mean(0)
    Xc, Yc = X - x_mean, Y - y_mean
    gram = Xc.T @ Xc
    scale = float(torch.trace(gram)) / gram.shape[0]
    if reg == 0.0 or scale == 0.0:
        weight = torch.linalg.pinv(Xc) @ Yc
    else:
        weight = torch.linalg.solve(gram + reg * scale * torch.eye(gram.shape[0], dtype=torch.float64), Xc.T @ Yc)
    return LinearProbe(weight=weight, x_mean=x_mean, y_mean=y_mean, reg=reg)


@dataclass
class ProbeCurve:
    """Probe quality per layer: ``r2_test[l]`` held-out R^2 (P1), ``r2_train[l]`` on the training rows.

    ``best_layer`` the first maximum of ``r2_test``; ``n_train``/``n_test`` the split sizes.
    """

    r2_test: np.ndarray
    r2_train: np.ndarray
    n_train: int
    n_test: int

    @property
    def best_layer(self) -> int:
        return int(np.argmax(self.r2_test))


def probe_layers(
    states, targets, n_train: int | None = None, reg: float = 1e-6, generator: torch.Generator | None = None
) -> ProbeCurve:
    """Fit one linear probe per layer and report held-out R^2: ``states`` (n, L, p), ``targets`` (n, q) or (n,).

    The first ``n_train`` rows (default: 70 %) train every probe and the others test it; with a ``generator`` the
    rows are shuffled first.
    """
    states = as_float_tensor("states", states, ndim=3)
    n, n_layers, _ = states.shape
    targets = as_float_tensor("targets", targets, ndim=(1, 2))
    if targets.shape[0] != n:
        raise ValueError(f"targets must have {n} rows like states, got {tuple(targets.shape)}")
    n_train = int(0.7 * n) if n_train is None else check_int("n_train", n_train, minimum=2, maximum=n - 1)
    if n_train < 2 or n - n_train < 1:
        raise ValueError(f"states must hold enough rows to split into train and test, got n={n}")
    reg = check_float("reg", reg, minimum=0.0)
    order = torch.arange(n)
    if generator is not None:
        check_generator("generator", generator)
        order = torch.randperm(n, generator=generator)
    train, test = order[:n_train], order[n_train:]
    states = states.double()
    targets = targets.double() if targets.ndim == 2 else targets.double()[:, None]
    r2_test, r2_train = np.empty(n_layers), np.empty(n_layers)
    for layer in range(n_layers):
        X = states[:, layer, :]
        probe = _fit(X[train], targets[train], reg)
        r2_train[layer] = _r2(targets[train], probe._predict(X[train]), probe.y_mean)
        r2_test[layer] = _r2(targets[test], probe._predict(X[test]), probe.y_mean)
    return ProbeCurve(r2_test=r2_test, r2_train=r2_train, n_train=n_train, n_test=n - n_train)


def random_linear_image(labels, q: int, generator: torch.Generator) -> torch.Tensor:
    """``labels @ G^T`` for a fixed random ``G`` (q, N) with N(0, 1/N) entries: a linear image of the labels
    (n, N) that is not lambda_hat, of the same size q as it (the probe's control). Returns (n, q) float64."""
    labels = as_float_tensor("labels", labels, ndim=2).double()
    q = check_int("q", q, minimum=1)
    check_generator("generator", generator)
    G = torch.randn(q, labels.shape[1], generator=generator, dtype=torch.float64) / labels.shape[1] ** 0.5
    return labels @ G.T


def probe_with_controls(states, target, labels, n_train: int | None = None, reg: float = 1e-6,
                        generator: torch.Generator | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Held-out R^2 per layer (P1) of three linear probes from the same ``states`` (n, L, p):

    - ``"target"``: the quantity of interest (n, q), e.g. lambda_hat(S);
    - ``"labels"``: the raw labels (n, N) in the order the prompt shows them;
    - ``"random image"``: a random linear image of those labels of the target's size q
      (:func:`random_linear_image`, ``G`` drawn from ``seed``).

    When the prompt's order is fixed, lambda_hat is a fixed linear image of the labels, so its probe scores what the
    labels' probe scores; only with the order shuffled per prompt does a target probe above the random image's say
    that the state holds the target rather than the labels. Split and ``reg`` as in :func:`probe_layers`.
    """
    target = as_float_tensor("target", target, ndim=(1, 2))
    labels = as_float_tensor("labels", labels, ndim=2)
    if labels.shape[0] != target.shape[0]:
        raise ValueError(f"labels must have {target.shape[0]} rows like target, got {tuple(labels.shape)}")
    seed = check_int("seed", seed, minimum=0)
    q = 1 if target.ndim == 1 else target.shape[1]
    image = random_linear_image(labels, q, torch.Generator().manual_seed(seed))
    curves = {}
    for name, values in (("target", target), ("labels", labels), ("random image", image)):
        split = None if generator is None else torch.Generator().set_state(generator.get_state())
        curves[name] = probe_layers(states, values, n_train, reg, split).r2_test
    return curves
