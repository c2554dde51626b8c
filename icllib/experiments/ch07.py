"""Chapter 07, the geometry of task vectors: can the task be read back from ``theta_l(S)``, block by block, and
from the prompt's tokens alone?

:func:`geometry` computes everything the chapter shows from the task vectors of ``n_sets`` demonstration sets of
each task (Hendel et al.'s Figure 4 set-up: 50 sets x 18 tasks, 4 demonstrations, 2 dummy queries):

- the nearest-centroid score (:func:`nearest_centroid`) of every block on a selection split inside the fit half of
  the sets (which chooses the block) and on the held-out half, per held-out set, so that each accuracy carries an
  interval;
- the same score from an input-space control: the mean token embedding of the prompts ``[S, x']`` that ``theta`` is
  read from (:func:`token_embedding_means`), i.e. what a bag of the prompt's tokens already tells about the task;
- at the chosen block: per-set mean cosine distances within and between tasks (:func:`distance_ratio` turns them
  into the ratio with a cluster-bootstrap interval over tasks), a histogram of all pairwise distances, each task's
  nearest other task, the share of the norm in the largest dimensions, and a 2-D t-SNE map.

The result holds no task vector (the raw vectors are 18 x 50 x 30 x 576 floats); everything is computed with one
torch thread and one OpenMP thread (:func:`one_thread`), so it does not depend on the machine's thread count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from icllib import lang_tasks
from icllib import task_vectors as tv
from icllib._checks import check_int
from icllib.stats import Interval, bootstrap
from icllib.stats import accuracy as accuracy_interval
from icllib.task_vectors.forward import token_rows

__all__ = ["GeometryResult", "geometry", "nearest_centroid", "split_quarters", "token_embedding_means",
           "distance_ratio", "one_thread"]

#: The input-space control's name in :attr:`GeometryResult.control_hits`.
TOKENS = "token embeddings"


@dataclass
class GeometryResult:
    """What Chapter 07 shows about the task vectors ``theta_l(S)`` of ``n_sets`` sets of each task in ``tasks``.

    Sets are rows ``i`` (task ``labels[i]``, quarter ``quarter[i]`` of its task's sets: 0, 1 the fit half, 2, 3
    held out). ``selection[l]``: nearest-centroid accuracy of quarter 1 by centroids of quarter 0 at block ``l``;
    ``layer``: its first maximum. ``held_out_hits[l]``: per held-out set, whether the centroids of the fit half
    at block ``l`` name its task; ``predicted``: the nearest centroid at ``layer``. ``control_hits`` and
    ``control_predicted``: the same for the token-embedding control. At ``layer``: ``within_by_set[i]`` and
    ``between_by_set[i]`` are set ``i``'s mean cosine distance to the other sets of its task and to the sets of
    the other tasks; ``histogram`` the counts of all within- and between-task pair distances over ``bins``;
    ``nearest_task[t]`` the other task whose centroid is nearest; ``top3_share`` the share of the mean squared
    coordinate in the 3 largest dimensions; ``cosine_to_mean`` the mean cosine of a vector to the mean vector;
    ``tsne`` the 2-D t-SNE map (float32, one row per set).
    """

    tasks: list[str]
    categories: list[str]
    n_sets: int
    n_layers: int
    layer: int
    labels: np.ndarray
    quarter: np.ndarray
    selection: np.ndarray
    held_out_hits: np.ndarray
    predicted: np.ndarray
    control_hits: dict[str, np.ndarray]
    control_predicted: dict[str, np.ndarray]
    within_by_set: np.ndarray
    between_by_set: np.ndarray
    bins: np.ndarray
    histogram: dict[str, np.ndarray]
    nearest_task: list[str]
    between_below_median_within: float
    top3_share: float
    cosine_to_mean: float
    tsne: np.ndarray
    hidden_size: int = 0

    @property
    def held_out(self) -> np.ndarray:
        """Rows of the held-out half (quarters 2 and 3)."""
        return self.quarter >= 2

    def interval(self, which: int | str = "chosen", level: float = 0.95) -> Interval:
        """Held-out nearest-centroid accuracy with its Wilson interval: ``"chosen"`` (the chosen block), a block
        index, or a control name (``"token embeddings"``)."""
        if isinstance(which, str) and which in self.control_hits:
            return accuracy_interval(self.control_hits[which], level)
        if which == "chosen":
            which = self.layer
        block = check_int("which", which, minimum=0, maximum=self.n_layers - 1)
        return accuracy_interval(self.held_out_hits[block], level)

    def ratio(self, n_resamples: int = 2000, seed: int = 0) -> Interval:
        """Mean between-task over mean within-task distance at the chosen block (cluster bootstrap over tasks)."""
        return distance_ratio(self.within_by_set, self.between_by_set, self.labels, n_resamples, seed)


# ----------------------------------------------------------------------------------------------------------------
# Public pieces
# ----------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread and one OpenMP/BLAS thread (results independent of the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def split_quarters(n_tasks: int, n_sets: int) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, quarter)`` for ``n_tasks`` blocks of ``n_sets`` rows: the task of each row, and the quarter
    ``4 i // n_sets`` of its position ``i`` among its task's sets (0, 1: fit half; 2, 3: held out)."""
    n_tasks = check_int("n_tasks", n_tasks, minimum=2)
    n_sets = check_int("n_sets", n_sets, minimum=4)
    return np.repeat(np.arange(n_tasks), n_sets), np.tile(np.arange(n_sets) * 4 // n_sets, n_tasks)


def nearest_centroid(Z, labels, fit_rows, test_rows) -> np.ndarray:
    """The nearest-centroid rule (Chapter 07, Eq. ch07-centroid) on unit vectors ``Z`` (n, d).

    Task ``t``'s centroid is the mean of ``Z[fit_rows & (labels == t)]``, normalised; each row of ``Z[test_rows]``
    goes to the centroid of largest cosine. ``labels`` are integers ``0 .. T-1``, every task present among the fit
    rows; ``fit_rows``/``test_rows`` are boolean masks. Returns the predicted task of every test row (int array).
    """
    Z = np.asarray(Z, dtype=np.float64)
    labels, fit_rows, test_rows = np.asarray(labels), np.asarray(fit_rows), np.asarray(test_rows)
    if Z.ndim != 2 or not np.isfinite(Z).all():
        raise ValueError(f"Z must be a finite 2-D array (n, d), got shape {Z.shape}")
    if labels.shape != (len(Z),) or labels.dtype.kind not in "iu" or labels.min() < 0:
        raise ValueError(f"labels must hold one non-negative integer per row of Z ({len(Z)}), got {labels!r}")
    for name, mask in (("fit_rows", fit_rows), ("test_rows", test_rows)):
        if mask.shape != (len(Z),) or mask.dtype != bool:
            raise ValueError(f"{name} must be a boolean mask of length {len(Z)}, got {mask.dtype} {mask.shape}")
    n_tasks = int(labels.max()) + 1
    if set(labels[fit_rows].tolist()) != set(range(n_tasks)):
        raise ValueError("every task 0 .. T-1 needs at least one fit row for its centroid")
    return _nearest_centroid(Z, labels, fit_rows, test_rows, n_tasks)


def token_embedding_means(model, tokenizer, prompt_groups: Sequence[Sequence[str]], fmt) -> np.ndarray:
    """The input-space control: for each group of prompts (the ``[S, x']`` of one set), the mean over its prompts
    of the mean input-token embedding of the prompt's tokens (BOS included when ``fmt.bos``): (n_groups, d).

    This is what a bag of the prompt's tokens, before any block, says about the set.
    """
    fmt = tv.check_format(fmt)
    if isinstance(prompt_groups, str) or len(prompt_groups) == 0:
        raise ValueError("prompt_groups must be a non-empty list of lists of prompts")
    if any(isinstance(g, str) or len(g) == 0 for g in prompt_groups):
        raise ValueError("every group of prompt_groups must be a non-empty list of prompt strings")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embeddings, torch.nn.Embedding):
        raise TypeError("model must have input token embeddings (get_input_embeddings() -> nn.Embedding)")
    weight = embeddings.weight.detach().float().cpu()
    means = [torch.stack([weight[ids].mean(0) for ids in token_rows(tokenizer, list(group), fmt)]).mean(0)
             for group in prompt_groups]
    return torch.stack(means).double().numpy()


def distance_ratio(within_by_set, between_by_set, labels, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """``mean(between_by_set) / mean(within_by_set)`` with a 95% cluster-bootstrap interval over tasks.

    With as many sets per task, the means of the per-set distances equal the means over all within-task and all
    between-task pairs; resampling whole tasks (``labels``) keeps the correlation of the sets of one task.
    """
    within, between = np.asarray(within_by_set, float), np.asarray(between_by_set, float)
    if within.ndim != 1 or within.shape != between.shape or (within <= 0).any():
        raise ValueError("within_by_set and between_by_set must be 1-D, of one length, within_by_set positive")
    rows = np.arange(len(within), dtype=float)
    return bootstrap(rows, lambda r: between[r.astype(int)].mean() / within[r.astype(int)].mean(),
                     groups=np.asarray(labels), n_resamples=n_resamples, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# The whole computation
# ----------------------------------------------------------------------------------------------------------------
def geometry(
    model,
    tokenizer,
    tasks: Sequence[str | lang_tasks.Task],
    n_sets: int = 50,
    n_demos: int = 4,
    n_dummies: int = 2,
    seed: int = 41,
    fmt: tv.PromptFormat | str = "example",
    tsne_seed: int = 0,
    progress: bool = False,
) -> GeometryResult:
    """Chapter 07's results for ``tasks`` (names of the book's tasks or filtered ``Task`` objects).

    ``theta_l(S)`` of ``n_sets`` sets per task at every block come from :func:`icllib.task_vectors.task_vectors_for`
    (same seed, same draws); the token-embedding control is computed on the very same prompts. Defaults: the
    paper's geometry set-up (50 sets, 4 demonstrations, 2 dummy queries, seed 41). Runs with one thread.
    """
    if isinstance(tasks, (str, lang_tasks.Task)) or len(tasks) < 2:
        raise ValueError(f"tasks must list at least two tasks, got {tasks!r}")
    loaded = [lang_tasks.filter_single_token(t if isinstance(t, lang_tasks.Task) else lang_tasks.load_task(t),
                                             tokenizer) for t in tasks]
    n_sets = check_int("n_sets", n_sets, minimum=4)
    tsne_seed = check_int("tsne_seed", tsne_seed, minimum=0)
    fmt = tv.check_format(fmt)
    with one_thread():
        thetas = tv.task_vectors_for(model, tokenizer, loaded, n_sets=n_sets, n_demos=n_demos, layers=None,
                                     seed=seed, fmt=fmt, n_dummies=n_dummies, progress=progress).double().numpy()
        groups = _prompt_groups(loaded, n_sets, n_demos, n_dummies, seed, fmt)
        bags = np.concatenate([token_embedding_means(model, tokenizer, g, tv.format_for_task(t, fmt))
                               for t, g in zip(loaded, groups)])
        T, n, L, d = thetas.shape
        labels, quarter = split_quarters(T, n)
        units = thetas.reshape(T * n, L, d)
        units = units / np.linalg.norm(units, axis=-1, keepdims=True)
        scores = _block_scores(units, labels, quarter)
        layer = int(np.argmax(scores["selection"]))  # first maximum
        bag_units = bags / np.linalg.norm(bags, axis=1, keepdims=True)
        bag_predicted = _nearest_centroid(bag_units, labels, quarter < 2, quarter >= 2, T)
        X = thetas.reshape(T * n, L, d)[:, layer]
        summary = _distances(X, labels)
        summary["nearest_task"] = [loaded[i].name for i in summary["nearest_task"]]
        tsne = _tsne(X, tsne_seed)
    return GeometryResult(
        tasks=[t.name for t in loaded], categories=[t.category for t in loaded], n_sets=n, n_layers=L, layer=layer,
        labels=labels, quarter=quarter, selection=scores["selection"], held_out_hits=scores["hits"],
        predicted=scores["predicted"][layer], control_hits={TOKENS: bag_predicted == labels[quarter >= 2]},
        control_predicted={TOKENS: bag_predicted}, tsne=tsne, hidden_size=d, **summary,
    )


# ----------------------------------------------------------------------------------------------------------------
# Cores (arguments already checked)
# ----------------------------------------------------------------------------------------------------------------
def _nearest_centroid(Z, labels, fit_rows, test_rows, n_tasks: int) -> np.ndarray:
    centres = np.stack([Z[fit_rows & (labels == t)].mean(0) for t in range(n_tasks)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return np.argmax(Z[test_rows] @ centres.T, axis=1)


def _block_scores(units: np.ndarray, labels: np.ndarray, quarter: np.ndarray) -> dict[str, np.ndarray]:
    """Per block: selection accuracy (quarter 1 by quarter 0), held-out hits and predictions (by the fit half)."""
    T, held = int(labels.max()) + 1, quarter >= 2
    selection, hits, predicted = [], [], []
    for layer in range(units.shape[1]):
        Z = units[:, layer]
        chosen = _nearest_centroid(Z, labels, quarter == 0, quarter == 1, T)
        selection.append(float((chosen == labels[quarter == 1]).mean()))
        predicted.append(_nearest_centroid(Z, labels, quarter < 2, held, T))
        hits.append(predicted[-1] == labels[held])
    return {"selection": np.array(selection), "hits": np.stack(hits), "predicted": np.stack(predicted)}


def _prompt_groups(tasks, n_sets: int, n_demos: int, n_dummies: int, seed: int, fmt) -> list[list[list[str]]]:
    """The prompts ``[S, x']`` that ``task_vectors_for`` reads ``theta`` from: one numpy generator seeded by
    ``seed`` draws, task after task, each set and query and then each set's dummy queries (its exact order)."""
    rng = np.random.default_rng(seed)
    out = []
    for task in tasks:
        task_fmt = tv.format_for_task(task, fmt)
        sets = lang_tasks.sample_demonstrations(list(task.pairs), n_sets, n_demos, rng)
        out.append([[task_fmt.prompt(demos, x) for x, _ in
                     lang_tasks.sample_dummy_queries(list(task.pairs), [*demos, query], n_dummies, rng)]
                    for demos, query in sets])
    return out


def _distances(X: np.ndarray, labels: np.ndarray, n_bins: int = 60) -> dict:
    """Cosine distances of the rows of ``X`` within and between tasks, and the summaries of the chapter's table."""
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    D = 1.0 - unit @ unit.T
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(X), dtype=bool)
    within_by_set = (D * (same & off)).sum(1) / (same & off).sum(1)
    between_by_set = (D * ~same).sum(1) / (~same).sum(1)
    upper = np.triu(np.ones_like(same), k=1)
    within, between = D[same & upper], D[~same & upper]
    bins = np.linspace(0.0, max(within.max(), between.max()), n_bins + 1)
    n_tasks = int(labels.max()) + 1
    centres = np.stack([unit[labels == t].mean(0) for t in range(n_tasks)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    apart = 1.0 - centres @ centres.T
    np.fill_diagonal(apart, np.inf)
    energy = np.sort((X**2).mean(0))[::-1]
    mean_direction = X.mean(0) / np.linalg.norm(X.mean(0))
    return {
        "within_by_set": within_by_set.astype(np.float32), "between_by_set": between_by_set.astype(np.float32),
        "bins": bins,
        "histogram": {"within": np.histogram(within, bins)[0], "between": np.histogram(between, bins)[0]},
        "nearest_task": [int(i) for i in np.argmin(apart, axis=1)],
        "between_below_median_within": float((between < np.median(within)).mean()),
        "top3_share": float(energy[:3].sum() / energy.sum()), "cosine_to_mean": float((unit @ mean_direction).mean()),
    }


def _tsne(X: np.ndarray, seed: int) -> np.ndarray:
    """The 2-D t-SNE map of the rows of ``X`` (cosine metric, PCA start), as float32."""
    perplexity = min(30.0, (len(X) - 1) / 3)
    embedding = TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed)
    return embedding.fit_transform(X).astype(np.float32)
