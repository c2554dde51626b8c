"""Task vectors (Hendel, Geva & Globerson 2023): ICL as a hypothesis class ``T([S, x]) = f(x; theta(S))``.

The paper's claim is that a causal LM reading a prompt of demonstrations ``S`` and a query ``x`` first compresses
``S`` into one vector ``theta(S)``, the residual stream after decoder block ``L`` at the prompt's last token, and
then computes the answer as a function of the query and that vector alone. The test (Section 3, their Eq. 2):

1. *extract*: run ``[S, x']`` for dummy queries ``x'`` (not the real ``x``) and read block ``l``'s output at the
   last position; average over the dummies: ``theta_l(S) = mean_{x'} h_l([S, x'])[-1]``;
2. *patch*: run the bare query ``[x]`` and, after block ``L``, **replace** its last-position state by
   ``theta_L(S)``; the argmax next token is the task-vector prediction ``f(x; theta_L(S))``;
3. *choose* ``L`` on dev demonstration sets (first maximum of dev accuracy over layers), report test accuracy beside
   zero-shot (``[x]`` alone) and ICL (``[S, x]``).

The functions take any causal LM that :mod:`icllib.llm` can take apart (Hugging Face or a model with
``model_parts()``), any tokenizer-like object, and any list of ``(x, y)`` string pairs. The package, read in order:

- ``formats``: prompt formats (``[S, x]`` as text);
- ``hooks``: the one hook primitive (:func:`trace`) and its edit functions;
- ``forward``: batched unpatched forwards (states, task vectors, predictions);
- ``sweeps``: patched predictions and the three implementations of the layer sweep;
- ``protocol``: the evaluation protocol, cached runs on the book's tasks, conflicting tasks and the vocabulary
  projection.

Scorers have one signature, ``scorer(prediction, x, y) -> bool`` (:mod:`icllib.lang_tasks`); a ``Task`` is
accepted wherever a scorer is. The papers' tables live in ``icllib.papers`` and are re-exported here.
"""

from icllib.lang_tasks import exact_match
from icllib.papers import PAPER_AVERAGES, PAPER_CATEGORIES, PAPER_LAYER_PEAKS
from icllib.task_vectors.formats import (DEFAULT_FORMAT, FORMATS, PromptFormat, check_format, format_for_task,
                                         format_prompt)
from icllib.task_vectors.forward import extract_task_vectors, grouped_last_states, last_position_states, predict
from icllib.task_vectors.hooks import capture_last_position, layer_patches, patch_last_position, trace
from icllib.task_vectors.protocol import (ConflictResult, TaskVectorResult, conflicting_tasks, evaluate,
                                          evaluate_task, project_to_vocabulary, task_vectors_for)
from icllib.task_vectors.sweeps import patched_predictions

__all__ = [
    "PromptFormat",
    "FORMATS",
    "DEFAULT_FORMAT",
    "check_format",
    "format_prompt",
    "format_for_task",
    "trace",
    "capture_last_position",
    "patch_last_position",
    "layer_patches",
    "last_position_states",
    "grouped_last_states",
    "extract_task_vectors",
    "predict",
    "patched_predictions",
    "TaskVectorResult",
    "evaluate",
    "evaluate_task",
    "task_vectors_for",
    "ConflictResult",
    "conflicting_tasks",
    "project_to_vocabulary",
    "exact_match",
    "PAPER_AVERAGES",
    "PAPER_CATEGORIES",
    "PAPER_LAYER_PEAKS",
]
