"""Template-regression prompts written as sequences of vectors, for a causal transformer (Chapter 10).

A prompt of Part I (:mod:`icllib.prompts`) and a query become a sequence like the text prompts of Part II
(:class:`SequenceLayout`, :func:`write_sequences`); :func:`sample_sequences` draws them with everything the chapter
compares against (the closed-form task vector lambda_hat of :mod:`icllib.bridge.closed_form`, Theorem 2's ridge
prediction), all with N demonstrations, or batches of every length 0..N, right-padded (``min_demos``).
:func:`sample_dummy_queries` draws the dummy queries of Hendel et al.'s task-vector protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icllib._checks import as_float_tensor, check_bool, check_float, check_generator, check_int
from icllib.bridge.closed_form import _lambda_hat
from icllib.prompts import PromptBatch, _check_distribution, _sample_prompts

__all__ = ["SequenceLayout", "write_sequences", "SequenceBatch", "sample_sequences", "sample_dummy_queries"]


@dataclass(frozen=True)
class SequenceLayout:
    """How a template-regression prompt becomes a sequence of real vectors, one per position.

    The prompt ``S = ((x_1, y_1), ..., (x_n, y_n))`` and a query ``x`` are written like the text prompts of Part II
    (``x -> y`` lines, then ``x ->``): an optional BOS position, then three positions per demonstration (the token,
    an arrow, the label) and two for the query (the token, an arrow)::

        [BOS] x_1 -> y_1  x_2 -> y_2  ...  x_n -> y_n  x ->            (arrow=True)
        [BOS] x_1 y_1  x_2 y_2  ...  x_n y_n  x                        (arrow=False, Garg et al.'s format)

    Each position is a vector ``[x; y; flags]`` in R^{d_token + 1 + 4}: the token ``x`` in the first ``d_token``
    coordinates (zero elsewhere), the label in the next one (zero elsewhere), and a one-hot flag saying what the
    position is (BOS, token, arrow, label). A model predicts the label of a token at the arrow after it (without
    arrows: at the token itself), so every prediction position is a query and the last position is the one whose
    state is the task vector (Hendel et al.). The explicit flags keep an empty label slot from being confused with a
    label equal to 0; the width is the same in both formats.
    """

    d_token: int
    bos: bool = True
    arrow: bool = True

    FLAGS = ("bos", "token", "arrow", "label")

    def __post_init__(self) -> None:
        check_int("d_token", self.d_token, minimum=1)
        check_bool("bos", self.bos)
        check_bool("arrow", self.arrow)

    @property
    def d_input(self) -> int:
        """Width of one position's vector, d_token + 1 + 4."""
        return self.d_token + 1 + len(self.FLAGS)

    @property
    def stride(self) -> int:
        """How many positions one demonstration takes (three with arrows, as token, arrow and label; two without)."""
        return 3 if self.arrow else 2

    def length(self, n_demos: int) -> int:
        """Positions of a prompt with ``n_demos`` demonstrations and one query: 3 n + 2 (2 n + 1 without arrows),
        +1 with BOS."""
        n_demos = check_int("n_demos", n_demos, minimum=0)
        return self.stride * n_demos + self.stride - 1 + int(self.bos)

    def predict_positions(self, n_demos: int) -> torch.Tensor:
        """Positions of the n + 1 predictions (the arrows, or without arrows the tokens), the last one the query's."""
        n_demos = check_int("n_demos", n_demos, minimum=0)
        return int(self.bos) + self.stride - 2 + self.stride * torch.arange(n_demos + 1)

    def flag(self, name: str) -> int:
        """Channel index of a flag (``"bos"``, ``"token"``, ``"arrow"`` or ``"label"``)."""
        if name not in self.FLAGS:
            raise ValueError(f"name must be one of {list(self.FLAGS)}, got {name!r}")
        return self.d_token + 1 + self.FLAGS.index(name)


def _check_integers(name: str, value, shape: tuple[int, ...] | None, high: int, what: str = "token indices"):
    """An integer tensor (int32 or int64, of ``shape`` unless None) with values in [0, high), as int64."""
    if not isinstance(value, torch.Tensor) or value.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an integer torch tensor of {what}, got {value!r:.60}")
    if shape is not None and tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
    if value.numel() and (value.min() < 0 or value.max() >= high):
        raise ValueError(f"{name} must hold {what} in [0, {high}), got range [{int(value.min())}, "
                         f"{int(value.max())}]")
    return value.long()


def write_sequences(tokens, demo_index, y, query_index, bos: bool = True, n_shown=None, arrow: bool = True
                    ) -> torch.Tensor:
    """Write prompts as sequences (see :class:`SequenceLayout`): shape (n, length(N), d + 5).

    ``tokens`` (K, d) is the dictionary; ``demo_index`` (n, N) the token of each demonstration (N = 0 gives the
    bare query ``[BOS] x ->`` that a task vector is patched into); ``y`` (n, N) their labels; ``query_index`` (n,)
    the query token; ``arrow=False`` leaves the arrows out (``[BOS] x_1 y_1 ... x``). The output has the dtype of
    ``tokens``.

    ``n_shown`` (n,) (optional, integers in 0..N): prompt i shows only its first ``n_shown[i]`` demonstrations,
    then its query, then all-zero padding up to the common length. Padding sits *after* the query, so a causal
    model's outputs up to the query are those of the unpadded prompt; the prediction positions stay at
    :meth:`SequenceLayout.predict_positions` ``(N)``, prompt i's query being number ``n_shown[i]``. With
    ``n_shown[i] = 0`` the row starts with the bare query.
    """
    tokens = as_float_tensor("tokens", tokens, ndim=2)
    if not isinstance(demo_index, torch.Tensor) or demo_index.ndim != 2:
        raise ValueError(f"demo_index must be an integer tensor of shape (n, N), got {demo_index!r:.60}")
    n, N = demo_index.shape
    demo_index = _check_integers("demo_index", demo_index, (n, N), tokens.shape[0])
    query_index = _check_integers("query_index", query_index, (n,), tokens.shape[0])
    y = as_float_tensor("y", y, ndim=2)
    if tuple(y.shape) != (n, N):
        raise ValueError(f"y must have shape (n, N) = ({n}, {N}) like demo_index, got {tuple(y.shape)}")
    check_bool("bos", bos)
    check_bool("arrow", arrow)
    if n_shown is not None:
        n_shown = _check_integers("n_shown", n_shown, (n,), N + 1, "demonstration counts")
    return _write_sequences(tokens, demo_index, y, query_index, bos, n_shown, arrow)


def _write_sequences(tokens, demo_index, y, query_index, bos: bool, n_shown, arrow: bool = True) -> torch.Tensor:
    """:func:`write_sequences` on checked arguments (int64 indices)."""
    d = tokens.shape[1]
    n, N = demo_index.shape
    layout = SequenceLayout(d, bos, arrow)
    stride = layout.stride
    out = tokens.new_zeros(n, layout.length(N), layout.d_input)
    start = int(bos)
    if bos:
        out[:, 0, layout.flag("bos")] = 1.0
    token_pos = start + stride * torch.arange(N)
    out[:, token_pos, :d] = tokens[demo_index]
    out[:, token_pos, layout.flag("token")] = 1.0
    if arrow:
        out[:, token_pos + 1, layout.flag("arrow")] = 1.0
    out[:, token_pos + stride - 1, d] = y.to(tokens.dtype)
    out[:, token_pos + stride - 1, layout.flag("label")] = 1.0
    # Prompt i's query starts where its (n_shown[i] + 1)-th demonstration would; with n_shown, everything from
    # there on is blanked first (the demonstrations it does not show become padding).
    query_pos = torch.full((n,), start + stride * N) if n_shown is None else start + stride * n_shown
    if n_shown is not None:
        positions = torch.arange(layout.length(N))
        out[positions[None, :] >= query_pos[:, None]] = 0.0
    rows = torch.arange(n)
    out[rows, query_pos, :d] = tokens[query_index]
    out[rows, query_pos, layout.flag("token")] = 1.0
    if arrow:
        out[rows, query_pos + 1, layout.flag("arrow")] = 1.0
    return out


@dataclass
class SequenceBatch:
    """Sampled template-regression prompts written as sequences, with everything the chapters compare against.

    ``inputs`` (n, T, d + 5) the sequences (:func:`write_sequences`); ``targets`` (n, N + 1) the label to predict at
    each arrow (the N demonstration labels, then the query's own noisy label ``y_q``); ``demo_index`` (n, N) and
    ``query_index`` (n,) token indices; ``y`` (n, N) the shown labels in sequence order; ``y_all`` (n, K) the noisy
    labels of all tokens; ``lam`` (n, m) the tasks; ``lambda_hat`` (n, m) the closed-form task vectors (B1);
    ``ridge`` (n,) Theorem 2's prediction for the query, ``z_q^T lambda_hat``; ``bos``, ``arrow``: the layout.

    Prompts of different lengths (``n_shown`` (n,), from ``sample_sequences(..., min_demos=...)``): prompt i shows
    its first ``n_shown[i]`` demonstrations and is right-padded (:func:`write_sequences`); ``targets[i, j]`` is
    ``y_j`` for ``j < n_shown[i]``, ``y_q`` at ``j = n_shown[i]`` and 0 (unused, see :attr:`arrow_mask`) after;
    ``lambda_hat`` and ``ridge`` are those of the shown demonstrations. ``n_shown = None``: every prompt shows all.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    demo_index: torch.Tensor
    query_index: torch.Tensor
    y: torch.Tensor
    y_all: torch.Tensor
    lam: torch.Tensor
    lambda_hat: torch.Tensor
    ridge: torch.Tensor
    bos: bool = True
    n_shown: torch.Tensor | None = None
    arrow: bool = True

    @property
    def layout(self) -> SequenceLayout:
        """The :class:`SequenceLayout` the batch is written in."""
        return SequenceLayout(self.inputs.shape[-1] - 1 - len(SequenceLayout.FLAGS), self.bos, self.arrow)

    @property
    def n_prompts(self) -> int:
        return self.inputs.shape[0]

    @property
    def shown(self) -> torch.Tensor:
        """Number of demonstrations each prompt shows, (n,) (all N unless the batch has several lengths)."""
        if self.n_shown is None:
            return torch.full((self.n_prompts,), self.demo_index.shape[1], dtype=torch.long)
        return self.n_shown

    @property
    def arrow_mask(self) -> torch.Tensor:
        """Which arrows hold a real prediction (the shown demonstrations' and the query's), a bool tensor (n, N + 1)."""
        return torch.arange(self.demo_index.shape[1] + 1)[None, :] <= self.shown[:, None]

    @property
    def query_positions(self) -> torch.Tensor:
        """Position of each prompt's query prediction, (n,) (the last position when all prompts show N)."""
        stride = 3 if self.arrow else 2
        return int(self.bos) + stride - 2 + stride * self.shown

    def with_queries(self, tokens, query_index) -> torch.Tensor:
        """The same demonstrations with other query tokens ``query_index`` (n,): inputs (n, T, d + 5)."""
        return write_sequences(tokens, self.demo_index, self.y, query_index, self.bos, self.n_shown, self.arrow)

    def bare_queries(self, tokens, query_index=None) -> torch.Tensor:
        """The bare query ``[BOS] x_q ->`` of every prompt (no demonstrations; ``[BOS] x_q`` without arrows):
        inputs (n, 2 + bos, d + 5) (one fewer without arrows). ``query_index`` (n,): other query tokens."""
        empty = self.demo_index[:, :0]
        query_index = self.query_index if query_index is None else query_index
        return write_sequences(tokens, empty, self.y[:, :0], query_index, self.bos, None, self.arrow)


def _check_dictionary(tokens, Z_all) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = as_float_tensor("tokens", tokens, ndim=2)
    Z_all = as_float_tensor("Z_all", Z_all, ndim=2)
    if tokens.shape[0] != Z_all.shape[1]:
        raise ValueError(
            f"tokens (K, d) and Z_all (m, K) must describe the same K tokens, got {tuple(tokens.shape)} and "
            f"{tuple(Z_all.shape)}"
        )
    return tokens, Z_all


def _shown_lambda_hat(Z64, demo_index, y, n_shown, tau: float) -> torch.Tensor:
    """(B1) per prompt with the features of its first ``n_shown[i]`` demonstrations (0 with none), (n, m)."""
    m = Z64.shape[0]
    shown = (torch.arange(demo_index.shape[1])[None, :] < n_shown[:, None]).to(torch.float64)  # (n, N)
    Z_shown = Z64.T[demo_index] * shown[:, :, None]  # (n, N, m) = Z_S^T, hidden demonstrations zeroed
    gram = Z_shown.transpose(1, 2) @ Z_shown + m * tau * torch.eye(m, dtype=torch.float64)
    rhs = Z_shown.transpose(1, 2) @ (y * shown)[:, :, None]
    # tau = 0 with fewer than m demonstrations: the minimum-norm solution, as in ridge_coefficients' limit.
    return (torch.linalg.pinv(gram) @ rhs if tau == 0 else torch.linalg.solve(gram, rhs))[:, :, 0]


def sample_sequences(
    tokens,
    Z_all,
    n_labeled: int,
    tau: float,
    n_prompts: int,
    generator: torch.Generator,
    shuffle: bool = False,
    bos: bool = True,
    distribution="in_domain",
    n_demos: int | None = None,
    min_demos: int | None = None,
    arrow: bool = True,
) -> SequenceBatch:
    """Draw template-regression prompts (Part I's law) and write them as sequences.

    Labels come from :func:`icllib.prompts.sample_prompts` (``y_k = lambda^T (z_k + eps_k)``); the demonstrations
    are the N labelled tokens of Part I, ``v_1..v_N``, in this order (``shuffle=True``: in a random order per
    prompt), and the query is a token drawn uniformly from the K - N unseen ones. ``n_demos`` (0..N, default N)
    keeps only the first ``n_demos`` demonstrations; ``lambda_hat`` and ``ridge`` are then those of the shown ones
    (0 without any). The output dtype is that of ``tokens``; the closed forms are float64.

    ``min_demos`` (0..n_demos, default None: every prompt shows ``n_demos``): prompts of several lengths in one
    batch. Prompt i shows ``n_i ~ Uniform{min_demos, ..., n_demos}`` demonstrations (drawn after everything else,
    so the labels, orders and queries are those of the fixed-length batch from the same generator state) and is
    right-padded to ``layout.length(n_demos)`` positions (:func:`write_sequences`); ``min_demos = 0`` puts the
    bare query ``[BOS] x ->`` into the sample, where the best prediction is the prior mean 0. ``arrow=False``
    writes the prompts without arrows (:class:`SequenceLayout`).
    """
    tokens, Z_all = _check_dictionary(tokens, Z_all)
    m, K = Z_all.shape
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=K - 1)
    tau = check_float("tau", tau, minimum=0.0)
    n_prompts = check_int("n_prompts", n_prompts, minimum=1)
    check_generator("generator", generator)
    check_bool("shuffle", shuffle)
    check_bool("bos", bos)
    check_bool("arrow", arrow)
    _check_distribution(distribution, m)
    n_demos = n_labeled if n_demos is None else check_int("n_demos", n_demos, minimum=0, maximum=n_labeled)
    if min_demos is not None:
        min_demos = check_int("min_demos", min_demos, minimum=0, maximum=n_demos)
    return _sample_sequences(tokens, Z_all.double(), n_labeled, tau, n_prompts, generator, shuffle, bos,
                             distribution, n_demos, min_demos, arrow)


def _sample_sequences(tokens, Z64, n_labeled: int, tau: float, n_prompts: int, generator: torch.Generator,
                      shuffle: bool = False, bos: bool = True, distribution="in_domain", n_demos: int | None = None,
                      min_demos: int | None = None, arrow: bool = True) -> SequenceBatch:
    """:func:`sample_sequences` on checked arguments (``Z64`` in float64): the training loop's draw."""
    n_demos = n_labeled if n_demos is None else n_demos
    prompts = _sample_prompts(Z64, n_labeled, tau, n_prompts, generator, distribution)
    if shuffle:
        demo_index = torch.argsort(torch.rand(n_prompts, n_labeled, generator=generator), dim=1)
    else:
        demo_index = torch.arange(n_labeled).expand(n_prompts, -1).clone()
    demo_index = demo_index[:, :n_demos]
    query_index = torch.randint(n_labeled, Z64.shape[1], (n_prompts,), generator=generator)
    y = prompts.y_all.gather(1, demo_index)
    n_shown = None
    if min_demos is not None:  # drawn last: the rest is the fixed-length batch of the same generator state
        n_shown = torch.randint(min_demos, n_demos + 1, (n_prompts,), generator=generator)
    theta = _task_vectors(Z64, prompts, demo_index, y, n_shown, tau)
    y_query = prompts.y_all.gather(1, query_index[:, None])
    return SequenceBatch(
        inputs=_write_sequences(tokens, demo_index, y.to(tokens.dtype), query_index, bos, n_shown, arrow),
        targets=_targets(y, y_query, n_shown).to(tokens.dtype),
        demo_index=demo_index,
        query_index=query_index,
        y=y.to(tokens.dtype),
        y_all=prompts.y_all,
        lam=prompts.lam,
        lambda_hat=theta,
        ridge=(theta * Z64[:, query_index].T).sum(-1),
        bos=bos,
        n_shown=n_shown,
        arrow=arrow,
    )


def _task_vectors(Z64, prompts: PromptBatch, demo_index, y, n_shown, tau: float) -> torch.Tensor:
    """lambda_hat (B1) of each prompt's shown demonstrations, (n, m) (0 with none)."""
    n_prompts, n_demos = demo_index.shape
    if n_shown is not None:
        return _shown_lambda_hat(Z64, demo_index, y, n_shown, tau)
    if n_demos == prompts.n_labeled:
        return _lambda_hat(Z64[:, :n_demos], prompts.y, tau)  # order-free: (B1) with Part I's Z
    if n_demos == 0:
        return Z64.new_zeros(n_prompts, Z64.shape[0])
    # (B1) with the features of the shown tokens, one small solve per prompt
    return _shown_lambda_hat(Z64, demo_index, y, torch.full((n_prompts,), n_demos), tau)


def _targets(y, y_query, n_shown) -> torch.Tensor:
    """The label to predict at each arrow, (n, N + 1): the demonstrations' labels, then the query's."""
    targets = torch.cat([y, y_query], dim=1)
    if n_shown is not None:  # prompt i's query label sits at its arrow n_i; later arrows are padding
        arrows = torch.arange(y.shape[1] + 1)[None, :]
        targets = torch.where(arrows < n_shown[:, None], targets, 0.0)
        targets[torch.arange(y.shape[0]), n_shown] = y_query[:, 0]
    return targets


def sample_dummy_queries(query_index, n_labeled: int, n_tokens: int, n_dummies: int, generator: torch.Generator):
    """Dummy queries x' for the task vector (Hendel et al.): ``n_dummies`` distinct unseen tokens per prompt, none
    equal to the real query. ``query_index`` (n,); returns (n, n_dummies) token indices in [N, K)."""
    n_tokens = check_int("n_tokens", n_tokens, minimum=2)
    n_labeled = check_int("n_labeled", n_labeled, minimum=1, maximum=n_tokens - 1)
    n_dummies = check_int("n_dummies", n_dummies, minimum=1)
    check_generator("generator", generator)
    if not isinstance(query_index, torch.Tensor) or query_index.ndim != 1:
        raise ValueError(f"query_index must be an integer tensor of shape (n,), got {query_index!r:.60}")
    query_index = _check_integers("query_index", query_index, None, n_tokens)
    n_unseen = n_tokens - n_labeled
    if n_dummies + 1 > n_unseen:
        raise ValueError(
            f"n_dummies={n_dummies} plus the query need {n_dummies + 1} distinct unseen tokens, but only "
            f"K - N = {n_unseen} exist"
        )
    return _sample_dummy_queries(query_index, n_labeled, n_unseen, n_dummies, generator)


def _sample_dummy_queries(query_index, n_labeled: int, n_unseen: int, n_dummies: int, generator) -> torch.Tensor:
    """:func:`sample_dummy_queries` on checked arguments (int64 ``query_index``)."""
    # Rank the unseen tokens by random keys, the real query pushed last, and keep the first n_dummies.
    keys = torch.rand(len(query_index), n_unseen, generator=generator)
    rows = torch.arange(len(query_index))
    own = query_index - n_labeled
    inside = (own >= 0) & (own < n_unseen)
    keys[rows[inside], own[inside]] = 2.0
    return n_labeled + torch.argsort(keys, dim=1)[:, :n_dummies]
