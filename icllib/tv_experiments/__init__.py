"""Task vectors as estimators (Chapter 11): how ``theta(S)`` depends on the demonstrations, and how it can be edited.

In Part III's closed form the task vector is the ridge estimate ``lambda_hat(S) = (Z Z^T + m tau I_m)^{-1} Z y``
(Chapter 9, Eq. ch09-factor), a statistical estimator whose spread over demonstration sets shrinks like ``1/k``
with the number ``k`` of demonstrations. This package asks the same questions of the vector ``theta_l(S)`` that
:mod:`icllib.task_vectors` extracts from a language model:

- **spread over sets** (:func:`set_spread`, :func:`fit_inverse_k`, :func:`spread_slope_interval`):
  ``V(k) = E ||theta(S) - E theta(S)||^2``, its fit by ``a + b / k`` and its log-log slope with a bootstrap interval
  over sets; :func:`ridge_spread` gives the same curve for ``lambda_hat`` of a Part I dictionary;
- **the demonstration-count sweep** (:func:`demo_count_sweep`): ICL and task-vector hits and ``theta_L(S)`` for
  every ``k`` on held-out queries (:func:`split_pairs`);
- **averaging** (:func:`group_means`, :func:`averaged_accuracy`): ``theta_bar_j``, the mean of ``theta`` over ``j``
  sets, patched like a single-set vector, every ``j`` on the same queries;
- **interpolation** (:func:`interpolate`, :func:`interpolation_labels`, :func:`answer_labels`, :func:`shares_of`,
  :func:`switch_point`, :func:`switch_interval`): ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B``, whose
  answer the patched model gives, and where (with a bootstrap interval over queries) the answers switch;
- **replacement against addition** (:func:`mean_difference`, :func:`replace_vs_add`): Hendel et al.'s replacement
  ``h_l[-1] := theta_l(S)`` against the residual-stream analogue of Todd et al.'s function vector,
  ``h_l[-1] += beta * Delta_l`` with ``Delta_l = mean_S theta_l(S) - mean_x h_l([x])[-1]``.

``estimators`` holds the pure tensor functions; ``runs`` the experiments that run the model, through the public
functions of :mod:`icllib.task_vectors` and :mod:`icllib.lang_tasks`.
"""

from icllib.tv_experiments.estimators import (ANSWER_A, ANSWER_B, NEITHER, AnswerShares, InverseKFit, Switch,
                                              answer_labels, answer_shares, fit_inverse_k, group_means, interpolate,
                                              mean_difference, ridge_spread, set_spread, shares_of,
                                              spread_slope_interval, switch_interval, switch_point)
from icllib.tv_experiments.runs import (Averaged, DemoSweep, ReplaceAdd, averaged_accuracy, demo_count_sweep,
                                        interpolation_labels, patch_grid, replace_vs_add, split_pairs)

__all__ = [
    "set_spread",
    "InverseKFit",
    "fit_inverse_k",
    "spread_slope_interval",
    "ridge_spread",
    "group_means",
    "interpolate",
    "mean_difference",
    "NEITHER",
    "ANSWER_A",
    "ANSWER_B",
    "AnswerShares",
    "answer_labels",
    "answer_shares",
    "shares_of",
    "interpolation_labels",
    "Switch",
    "switch_point",
    "switch_interval",
    "split_pairs",
    "patch_grid",
    "DemoSweep",
    "demo_count_sweep",
    "Averaged",
    "averaged_accuracy",
    "ReplaceAdd",
    "replace_vs_add",
]
