"""Part III, the bridge: template regression (Yang et al. 2024) meets task vectors (Hendel et al. 2023).

In the setting of Part I a prompt's whole influence on the prediction of an unseen token passes through m numbers,
the ridge coefficients lambda_hat(S) (the book's *closed-form task vector*). The package holds what the two Part III
chapters compute with it, one module per job:

- :mod:`icllib.bridge.closed_form` (Chapter 9): lambda_hat, its encoder R and the kernel of Z; how the one-layer
  model's predictions factor through lambda_hat; the conflicting-task swap in closed form.
- :mod:`icllib.bridge.sequences` (Chapter 10): template-regression prompts written as sequences of vectors
  (:class:`SequenceLayout`, :func:`write_sequences`, :func:`sample_sequences`), and dummy queries.
- :mod:`icllib.bridge.training`: :func:`train_sequence_model`, the causal transformer's loss, draw and recorder
  around the book's one training loop (:func:`icllib.train.train_loop`).
- :mod:`icllib.bridge.sweep`: Part II's task-vector protocol on those sequences, through
  :mod:`icllib.task_vectors`' own hooks (:func:`layer_sweep`).
- :mod:`icllib.bridge.interventions`: the positive controls' extractions (Dong et al.'s attention output, Saglam et
  al.'s per-head contributions and learned vector), as edit functions for the one hook primitive.
- :mod:`icllib.bridge.emergence`: every measurement of Chapter 10 on one trained model (:func:`evaluate_model`).

Every public name is importable from ``icllib.bridge`` itself.
"""

from icllib.bridge.closed_form import *  # noqa: F401,F403
from icllib.bridge.closed_form import __all__ as _closed_form_all
from icllib.bridge.emergence import *  # noqa: F401,F403
from icllib.bridge.emergence import __all__ as _emergence_all
from icllib.bridge.interventions import *  # noqa: F401,F403
from icllib.bridge.interventions import __all__ as _interventions_all
from icllib.bridge.sequences import *  # noqa: F401,F403
from icllib.bridge.sequences import __all__ as _sequences_all
from icllib.bridge.sweep import *  # noqa: F401,F403
from icllib.bridge.sweep import __all__ as _sweep_all
from icllib.bridge.training import *  # noqa: F401,F403
from icllib.bridge.training import __all__ as _training_all

__all__ = [*_closed_form_all, *_sequences_all, *_training_all, *_sweep_all, *_interventions_all, *_emergence_all]
