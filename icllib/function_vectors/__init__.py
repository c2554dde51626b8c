"""Function vectors (Todd, Li, Sharma, Mueller, Wallace & Bau, ICLR 2024): the attention heads that carry a task.

Hendel et al.'s task vector (:mod:`icllib.task_vectors`) is the whole residual state at one block. Todd et al. look
one level finer, at attention heads: a few heads, found by causal mediation, move the task from the demonstrations
to the last token, and the sum of their mean outputs, the *function vector* ``v_t``, added to the residual stream of
a prompt that shows no demonstrations, makes the model do the task. The package, read in order:

- ``heads``: the attention output projection of every architecture and its per-head input ``a_{lj}``
  (:func:`attention_outputs`), the mean activations ``abar_{lj}`` over clean prompts (:func:`head_activations`),
  each head's output in the residual stream (:func:`head_outputs`), the ranking (:func:`top_heads`) and
  ``v_t = sum_{(l, j) in A} W_O^l[:, j] abar_{lj}`` (:func:`function_vector`);
- ``mediation``: corrupted prompts (:func:`draw_prompts`, :func:`shuffle_labels`), the indirect effect of every head
  (:func:`indirect_effects`, batched over heads with the prompt's prefix cached) and its average over prompts
  (:func:`head_effects`);
- ``protocol``: adding a vector after a block (:func:`add_vector_predictions`, :func:`generate`) and the evaluation
  of one task (:func:`evaluate`): zero-shot, shuffled labels and natural-text templates, with and without ``v_t``;
- ``via_nnsight``: the patched run and the function-vector run written with ``nnsight`` instead of the book's hooks
  (needs the optional ``nnsight`` package; checked against them in the tests).

Everything is built on the book's one hook primitive (:func:`icllib.task_vectors.trace`: ``edit_input`` on the
output projections) and its batching; it runs on every architecture :mod:`icllib.llm` takes apart.
"""

from icllib.function_vectors.heads import (AttentionOutputs, attention_outputs, function_vector, head_activations,
                                           head_outputs, read_heads, top_heads, write_heads)
from icllib.function_vectors.mediation import (METHODS, answer_ids, draw_prompts, head_effects, indirect_effects,
                                               shuffle_labels)
from icllib.function_vectors.protocol import (TEMPLATES, FunctionVectorResult, add_vector_predictions,
                                              contains_answer, evaluate, generate, split_queries)

__all__ = [
    "AttentionOutputs",
    "attention_outputs",
    "read_heads",
    "write_heads",
    "head_activations",
    "head_outputs",
    "top_heads",
    "function_vector",
    "METHODS",
    "draw_prompts",
    "shuffle_labels",
    "answer_ids",
    "indirect_effects",
    "head_effects",
    "TEMPLATES",
    "split_queries",
    "add_vector_predictions",
    "generate",
    "contains_answer",
    "FunctionVectorResult",
    "evaluate",
]
