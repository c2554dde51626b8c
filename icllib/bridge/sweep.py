"""Part II's task-vector protocol on sequences of vectors (Chapter 10): a thin adapter over icllib.task_vectors.

The protocol of Hendel et al. (dummy queries, the state at the last position after block l averaged over them as
the task vector theta_l(S), that state written over the last position of the bare query, every block) runs on the
causal transformer of :mod:`icllib.models.causal` through :mod:`icllib.task_vectors`' own hooks
(:func:`~icllib.task_vectors.capture_last_position`, :func:`~icllib.task_vectors.patch_last_position`,
:func:`~icllib.task_vectors.layer_patches`); only the inputs differ (vectors, not tokens) and the score (a squared
error against the ridge prediction, not an exact match). :func:`layer_sweep` runs it all on one set of prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from icllib import llm
from icllib._checks import as_float_tensor, check_int
from icllib.bridge.sequences import SequenceBatch
from icllib.task_vectors import capture_last_position, layer_patches, patch_last_position

__all__ = ["sequence_predictions", "sequence_task_vectors", "sequence_patched_outputs", "LayerSweep", "layer_sweep"]


def sequence_predictions(model: nn.Module, inputs, batch_size: int = 4096) -> torch.Tensor:
    """The model's read-out at the last position of every sequence, shape (n,) (the answer to the query)."""
    return _predictions(model, inputs, check_int("batch_size", batch_size, minimum=1))


def _predictions(model: nn.Module, inputs: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            out.append(model(inputs[start : start + batch_size])[:, -1, 0])
    return torch.cat(out)


def _layers(model: nn.Module, layers) -> tuple[list[int], int]:
    """The chosen block indices (all L blocks by default), checked, and L."""
    n_layers = llm.n_layers(model)
    if layers is None:
        return list(range(n_layers)), n_layers
    return [check_int("layers[i]", layer, 0, n_layers - 1) for layer in layers], n_layers


def sequence_task_vectors(model: nn.Module, dummy_inputs, layers=None) -> torch.Tensor:
    """``theta_l(S)`` of every prompt at every block: the last-position state after block l, averaged over dummies.

    ``dummy_inputs`` is a list of input batches (n, T, d_in), one per dummy query ``x'`` (the same demonstrations,
    a different query: :meth:`~icllib.bridge.sequences.SequenceBatch.with_queries`), or one tensor (n_dummies, n, T, d_in). The states are
    read with :func:`icllib.task_vectors.capture_last_position` (0-based block indices, as in Part II). Returns
    (n, len(layers), d_model) in the model's dtype (all L blocks by default).
    """
    if isinstance(dummy_inputs, torch.Tensor):
        if dummy_inputs.ndim != 4:
            raise ValueError(f"dummy_inputs must be (n_dummies, n, T, d_in) or a list of (n, T, d_in), "
                             f"got shape {tuple(dummy_inputs.shape)}")
        dummy_inputs = list(dummy_inputs)
    if not isinstance(dummy_inputs, (list, tuple)) or len(dummy_inputs) == 0:
        raise ValueError("dummy_inputs must be a non-empty list of input batches (one per dummy query)")
    return _task_vectors(model, dummy_inputs, _layers(model, layers)[0])


def _task_vectors(model: nn.Module, dummy_inputs, layers: list[int]) -> torch.Tensor:
    total = None
    for inputs in dummy_inputs:
        with torch.no_grad(), capture_last_position(model, layers) as store:
            model(inputs)
        states = torch.stack([store[layer] for layer in layers], dim=1)
        total = states if total is None else total + states
    return total / len(dummy_inputs)


def sequence_patched_outputs(
    model: nn.Module, inputs, theta, layers=None, mode: str = "replace", max_rows: int = 8192
) -> torch.Tensor:
    """Read-outs at the last position with that position's state replaced after block l: (n, len(layers)).

    ``out[i, k]`` runs ``inputs[i]`` (the bare query, usually) with ``theta[i, k]`` written over the last position
    after block ``layers[k]`` (:func:`icllib.task_vectors.patch_last_position`, ``mode="replace"`` as in Hendel et
    al.; ``"add"`` adds it). ``theta`` is (n, len(layers), d_model) or (n, L, d_model) (all blocks, the ones in
    ``layers`` used). All layers run in one batch: row ``i * len(layers) + k`` is patched at block ``layers[k]``
    (:func:`icllib.task_vectors.layer_patches`), so ``layers`` must not repeat.
    """
    inputs = as_float_tensor("inputs", inputs, ndim=3)
    layers, n_layers = _layers(model, layers)
    max_rows = check_int("max_rows", max_rows, minimum=1)
    theta = as_float_tensor("theta", theta, ndim=3)
    if theta.shape[0] != inputs.shape[0]:
        raise ValueError(f"theta must have one row per input ({inputs.shape[0]}), got {tuple(theta.shape)}")
    if theta.shape[1] == n_layers and len(layers) != n_layers:
        theta = theta[:, layers]
    if theta.shape[1] != len(layers):
        raise ValueError(f"theta must hold len(layers)={len(layers)} or L={n_layers} vectors per row, "
                         f"got {tuple(theta.shape)}")
    return _patched_outputs(model, inputs, theta, layers, mode, max_rows)


def _patched_outputs(model: nn.Module, inputs, theta, layers: list[int], mode: str, max_rows: int) -> torch.Tensor:
    n, k_count = inputs.shape[0], len(layers)
    per_chunk = max(1, max_rows // k_count)
    out = []
    for start in range(0, n, per_chunk):
        rows = slice(start, min(start + per_chunk, n))
        x = inputs[rows].repeat_interleave(k_count, 0)
        patches = layer_patches(x.shape[0] // k_count, theta[rows], layers)  # row i * K + k: block layers[k]
        with torch.no_grad(), patch_last_position(model, patches, mode):
            out.append(model(x)[:, -1, 0].reshape(-1, k_count))
    return torch.cat(out)


@dataclass
class LayerSweep:
    """Part II's protocol on one set of prompts: zero-shot, ICL and task-vector predictions at every block.

    ``theta`` (n, L, d_model): task vectors (mean over ``n_dummies`` dummy queries); ``patched`` (n, L): the bare
    query's read-out with ``theta_l`` patched after block l; ``icl`` (n,): the full prompt ``[S, x]``; ``zero_shot``
    (n,): the bare query alone; ``ridge`` (n,): Theorem 2's ``z_q^T lambda_hat``; ``y_query`` (n,): the query's noisy
    label; ``lambda_hat`` (n, m).
    """

    theta: torch.Tensor
    patched: torch.Tensor
    icl: torch.Tensor
    zero_shot: torch.Tensor
    ridge: torch.Tensor
    y_query: torch.Tensor
    lambda_hat: torch.Tensor

    def error(self, predictions, reference: str = "ridge") -> torch.Tensor:
        """Mean squared error of ``predictions`` (n,) or (n, L) against ``"ridge"`` or the noisy label ``"label"``,
        divided by the mean square of the reference (so predicting 0 scores about 1)."""
        if reference not in ("ridge", "label"):
            raise ValueError(f"reference must be 'ridge' or 'label', got {reference!r}")
        pred = as_float_tensor("predictions", predictions, ndim=(1, 2)).double()
        return self._error(pred, reference)

    def _error(self, pred: torch.Tensor, reference: str = "ridge") -> torch.Tensor:
        ref = (self.ridge if reference == "ridge" else self.y_query).double()
        if pred.shape[0] != ref.shape[0]:
            raise ValueError(f"predictions must have {ref.shape[0]} rows, got {tuple(pred.shape)}")
        if pred.ndim == 2:
            ref = ref[:, None]
        return ((pred - ref) ** 2).mean(0) / (ref**2).mean()

    @property
    def patched_error(self) -> torch.Tensor:
        """Relative error of the patched predictions against ridge, per block (L,)."""
        return self._error(self.patched.double())

    @property
    def best_layer(self) -> int:
        """First minimum of :attr:`patched_error` (the paper's first maximum of accuracy)."""
        return int(torch.argmin(self.patched_error))


def layer_sweep(model: nn.Module, tokens, batch: SequenceBatch, dummy_index) -> LayerSweep:
    """Run Part II's protocol on sequence prompts (Hendel et al., Section 3), unchanged, at every block.

    ``batch`` from :func:`~icllib.bridge.sequences.sample_sequences`, ``dummy_index`` (n, n_dummies) from
    :func:`~icllib.bridge.sequences.sample_dummy_queries`: theta_l(S) is read at the last position of ``[S, x']``
    for each dummy ``x'`` and averaged; it replaces the last position of the bare query ``[BOS] x ->`` after block
    l; the read-out there is the task-vector prediction.
    """
    if not isinstance(batch, SequenceBatch):
        raise TypeError(f"batch must be a SequenceBatch (see sample_sequences), got {type(batch).__name__}")
    if not isinstance(dummy_index, torch.Tensor) or dummy_index.ndim != 2 or dummy_index.shape[0] != batch.n_prompts:
        raise ValueError(f"dummy_index must be an integer tensor (n={batch.n_prompts}, n_dummies), "
                         f"got {dummy_index!r:.60}")
    dtype = next(model.parameters()).dtype
    tokens = as_float_tensor("tokens", tokens, ndim=2, dtype=dtype)
    layers, _ = _layers(model, None)
    dummies = [batch.with_queries(tokens, dummy_index[:, j]) for j in range(dummy_index.shape[1])]
    theta = _task_vectors(model, dummies, layers)
    bare = batch.bare_queries(tokens)
    return LayerSweep(
        theta=theta,
        patched=_patched_outputs(model, bare, theta, layers, "replace", 8192),
        icl=_predictions(model, batch.inputs.to(dtype)),
        zero_shot=_predictions(model, bare),
        ridge=batch.ridge,
        y_query=batch.targets[:, -1].double(),
        lambda_hat=batch.lambda_hat,
    )
