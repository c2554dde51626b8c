"""The 18 language tasks of Hendel, Geva & Globerson (2023): loading, scoring, token filtering, sampling.

A task is a finite set of pairs ``(x, y)`` (an input word and its answer) and a rule that says whether a model's
prediction for ``x`` is right. The paper's four categories and their rules:

- *algorithmic* (``next_letter``, ``prev_letter``, ``list_first``, ``list_last``, ``to_upper``, ``to_lower``) and
  *linguistic* (``present_gerund``, ``present_past``, ``plural_singular``, ``antonyms``): **exact** match;
- *knowledge* (``country_capital``, ``person_language``, ``location_continent``, ``location_religion``): **prefix**
  match, so that the first token ``"Hel"`` counts for ``Helsinki``;
- *translation* (``en_fr``, ``en_es``, ``fr_en``, ``es_en``): **synonym** match against the dictionary's
  translations of ``x``.

Every scoring rule has one signature, ``scorer(prediction, x, y) -> bool`` (:data:`Scorer`): :func:`exact_match` is
the default, and a :class:`Task` is accepted wherever a scorer is (:func:`as_scorer`), judging by its own rule.

The pairs live in ``data/<task>.json`` (built by ``data/build/*.py``; provenance in ``data/README.md``), found in
``$ICL_DATA_DIR`` or in the ``data`` folder of the repository checkout. :data:`TASKS` maps each name to its
:class:`Task` (loaded on first use); :data:`CATEGORIES` maps each category to its task names.

A demonstration set ``S = ((x_1, y_1), ..., (x_k, y_k))`` and a query ``x`` not in ``S`` are drawn by
:func:`sample_demonstrations`; the dummy queries ``x'`` used to extract ``theta(S)`` by
:func:`sample_dummy_queries`. Both draw from lists with an explicit generator, never from a set, so a seed fixes
the result (the reference code's sets were neither reproducible nor valid on Python 3.11).
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from icllib._checks import check_float, check_int
from icllib.llm import encode  # without special tokens (LLaMA's tokenizer adds BOS by default)
from icllib.settings import repository_root

__all__ = [
    "Scorer",
    "exact_match",
    "as_scorer",
    "accuracy",
    "hits",
    "CATEGORIES",
    "TASK_NAMES",
    "SCORING",
    "MIN_PREFIX",
    "Task",
    "TASKS",
    "data_dir",
    "load_task",
    "filter_single_token",
    "sample_demonstrations",
    "sample_dummy_queries",
]

#: The paper's four categories and their tasks, in the paper's order.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "algorithmic": ("next_letter", "prev_letter", "list_first", "list_last", "to_upper", "to_lower"),
    "translation": ("en_fr", "en_es", "fr_en", "es_en"),
    "linguistic": ("present_gerund", "present_past", "plural_singular", "antonyms"),
    "knowledge": ("country_capital", "person_language", "location_continent", "location_religion"),
}
#: All 18 task names.
TASK_NAMES: tuple[str, ...] = tuple(name for names in CATEGORIES.values() for name in names)
#: The scoring rule of each category.
SCORING: dict[str, str] = {
    "algorithmic": "exact",
    "linguistic": "exact",
    "knowledge": "prefix",
    "translation": "synonym",
}
#: Shortest prediction that counts as a prefix under the prefix rule (shorter answers must be matched whole). One
#: letter would credit "S" for every capital starting with S; two keep the paper's "Hel" for Helsinki.
MIN_PREFIX = 2

_RULES = ("exact", "prefix", "synonym")
_CATEGORY_OF = {name: category for category, names in CATEGORIES.items() for name in names}


# ----------------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    """One task: its ``pairs`` ``(x, y)`` (inputs unique), its category and its scoring rule.

    ``synonyms`` maps every input ``x`` to all accepted answers (``y`` first); it is required for the
    ``"synonym"`` rule and ignored by the others. ``leading_space`` records how :func:`filter_single_token` found
    the outputs to be single tokens (``True``: as ``" " + y``; ``False``: as ``y``; ``None``: not filtered).
    """

    name: str
    category: str
    pairs: tuple[tuple[str, str], ...]
    scoring: str
    synonyms: Mapping[str, tuple[str, ...]] | None = field(default=None, hash=False)
    leading_space: bool | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if self.category not in SCORING:
            raise ValueError(f"category must be one of {list(SCORING)}, got {self.category!r}")
        if self.scoring not in _RULES:
            raise ValueError(f"scoring must be one of {list(_RULES)}, got {self.scoring!r}")
        pairs = _as_pairs("pairs", self.pairs)
        object.__setattr__(self, "pairs", pairs)
        object.__setattr__(self, "_answer", dict(pairs))
        if self.scoring == "synonym":
            if self.synonyms is None:
                raise ValueError(f"task {self.name!r}: scoring 'synonym' needs a synonym set for every input")
            synonyms = {}
            for x, y in pairs:
                if x not in self.synonyms:
                    raise ValueError(f"task {self.name!r}: no synonym set for input {x!r}")
                # the answer itself is always accepted, and comes first
                synonyms[x] = tuple(dict.fromkeys([y, *self.synonyms[x]]))
            object.__setattr__(self, "synonyms", synonyms)
        if self.leading_space not in (None, True, False):
            raise ValueError(f"leading_space must be None, True or False, got {self.leading_space!r}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:  # the default would print every pair
        space = "" if self.leading_space is None else f", leading_space={self.leading_space}"
        return f"Task({self.name!r}, {self.category}, {len(self)} pairs, scoring={self.scoring!r}{space})"

    @property
    def inputs(self) -> list[str]:
        """The inputs ``x``, in the file's order."""
        return [x for x, _ in self.pairs]

    @property
    def outputs(self) -> list[str]:
        """The answers ``y``, in the file's order."""
        return [y for _, y in self.pairs]

    def answer(self, x: str) -> str:
        """The answer ``y`` of input ``x``."""
        if x not in self._answer:
            raise ValueError(f"x={x!r} is not an input of task {self.name!r}")
        return self._answer[x]

    def answers(self, x: str) -> tuple[str, ...]:
        """Every accepted answer of ``x``: its synonym set under the synonym rule, else ``(y,)``."""
        y = self.answer(x)
        return self.synonyms[x] if self.scoring == "synonym" else (y,)

    def score(self, prediction: str, x: str, y: str | None = None) -> bool:
        """Whether ``prediction`` (one greedy token, decoded) is right for input ``x``: a :data:`Scorer`.

        ``y`` is there so that a task can be passed wherever a scorer ``(prediction, x, y)`` is taken; the task
        judges by its own answer of ``x`` (a ``y`` that is given must be that answer).

        The prediction is stripped of surrounding white space (the token usually carries a leading space), then

        - ``exact``: equal to ``y``, case included (``to_upper`` needs ``"A"``, not ``"a"``);
        - ``prefix``: a prefix of ``y`` of at least ``min(MIN_PREFIX, len(y))`` characters, or a word that starts
          with ``y``, case included (``"Hel"``, ``"Helsinki"`` and ``"Europeans"`` count for ``Helsinki`` and
          ``Europe``; ``"H"`` does not: the reference code accepts any non-empty prefix, one letter included);
        - ``synonym``: equal to one of the accepted translations of ``x`` (:meth:`answers`), case included (the
          reference code instead intersects the WordNet synonyms of prediction and answer, which needs nltk's
          multilingual WordNet; the sets here come from the same bilingual dictionaries as the pairs).
        """
        if not isinstance(prediction, str):
            raise TypeError(f"prediction must be a string, got {type(prediction).__name__}")
        answer = self.answer(x)
        if y is not None and y != answer:
            raise ValueError(f"y={y!r} is not the answer of x={x!r} in task {self.name!r} ({answer!r})")
        y = answer
        guess = prediction.strip()
        if self.scoring == "exact":
            return guess == y
        if self.scoring == "prefix":
            return guess.startswith(y) or (len(guess) >= min(MIN_PREFIX, len(y)) and y.startswith(guess))
        return guess in self.synonyms[x]

    def accuracy(self, predictions: Sequence[str], inputs: Sequence[str]) -> float:
        """Fraction of ``predictions[i]`` that :meth:`score` accepts for ``inputs[i]``."""
        if isinstance(predictions, str) or isinstance(inputs, str):
            raise TypeError("predictions and inputs must be sequences of strings, not a single string")
        if len(predictions) != len(inputs):
            raise ValueError(f"predictions ({len(predictions)}) and inputs ({len(inputs)}) differ in length")
        if len(inputs) == 0:
            raise ValueError("inputs must not be empty")
        return float(np.mean([self.score(p, x) for p, x in zip(predictions, inputs)]))

    def subset(self, inputs: Iterable[str]) -> Task:
        """The same task restricted to the given inputs (kept in the task's order; unknown inputs are an error)."""
        if isinstance(inputs, str):
            raise TypeError("inputs must be an iterable of strings, not a single string")
        keep = list(inputs)
        unknown = [x for x in keep if x not in self._answer]
        if unknown:
            raise ValueError(f"inputs not in task {self.name!r}: {unknown[:5]}")
        wanted = set(keep)  # membership only; the order comes from self.pairs
        pairs = tuple((x, y) for x, y in self.pairs if x in wanted)
        if not pairs:
            raise ValueError(f"inputs must keep at least one pair of task {self.name!r}")
        synonyms = None if self.synonyms is None else {x: self.synonyms[x] for x, _ in pairs}
        return Task(self.name, self.category, pairs, self.scoring, synonyms, self.leading_space, self.source)


def _as_pairs(name: str, pairs) -> tuple[tuple[str, str], ...]:
    """Validate a sequence of ``(x, y)`` string pairs with unique, non-empty inputs."""
    if isinstance(pairs, Task):
        return pairs.pairs
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TypeError(f"{name} must be a Task or a sequence of (x, y) pairs, got {type(pairs).__name__}")
    out = []
    for i, pair in enumerate(pairs):
        if (
            not isinstance(pair, Sequence)
            or isinstance(pair, str)
            or len(pair) != 2
            or not all(isinstance(s, str) and s.strip() for s in pair)
        ):
            raise ValueError(f"{name}[{i}] must be a pair of non-empty strings (x, y), got {pair!r}")
        out.append((pair[0], pair[1]))
    if not out:
        raise ValueError(f"{name} must hold at least one (x, y) pair, got none")
    inputs = [x for x, _ in out]
    if len(set(inputs)) != len(inputs):
        seen: set[str] = set()
        twice = [x for x in inputs if x in seen or seen.add(x)]
        raise ValueError(f"{name} must have unique inputs x; repeated: {twice[:5]}")
    return tuple(out)


# ----------------------------------------------------------------------------------------------------------------
# Scorers: one signature everywhere
# ----------------------------------------------------------------------------------------------------------------
#: A scoring rule ``scorer(prediction, x, y) -> bool`` — is the decoded ``prediction`` right for the query ``x`` whose
#: answer is ``y``? (Prediction first, as dtsip's metrics ``(ys_pred, ys)``.) A :class:`Task` is accepted wherever a
#: scorer is: its :meth:`Task.score` has this signature.
Scorer = Callable[[str, str, str], bool]


def exact_match(prediction: str, x: str, y: str) -> bool:
    """The default scorer: the stripped prediction equals the stripped answer ``y`` (``x`` is not used)."""
    return prediction.strip() == y.strip()


def as_scorer(scorer: Scorer | Task | None, name: str = "scorer") -> Scorer:
    """The scorer to call: ``None`` -> :func:`exact_match`, a :class:`Task` -> its :meth:`Task.score`, a callable
    ``(prediction, x, y) -> bool`` as it is. ``name`` is the argument's name in the error for anything else."""
    if scorer is None:
        return exact_match
    if isinstance(scorer, Task):
        return scorer.score
    if not callable(scorer):
        raise TypeError(f"{name} must be a Task or a callable (prediction, x, y) -> bool, got {type(scorer).__name__}")
    return scorer


def hits(predictions: Sequence[str], pairs: Sequence[tuple[str, str]], scorer: Scorer | Task | None = None
         ) -> np.ndarray:
    """Whether ``scorer`` accepts ``predictions[i]`` for ``pairs[i] = (x, y)`` (default exact match): a bool array,
    the material of an accuracy and of its interval (``icllib.stats.accuracy``)."""
    if isinstance(predictions, str) or isinstance(pairs, str):
        raise TypeError("predictions and pairs must be sequences, not a single string")
    if len(predictions) != len(pairs) or not pairs:
        raise ValueError(f"predictions ({len(predictions)}) and pairs ({len(pairs)}) must be non-empty and of the "
                         "same length")
    scorer = as_scorer(scorer)
    return np.array([bool(scorer(p, x, y)) for (x, y), p in zip(pairs, predictions)], dtype=bool)


def accuracy(predictions: Sequence[str], pairs: Sequence[tuple[str, str]], scorer: Scorer | Task | None = None
             ) -> float:
    """The fraction of ``predictions[i]`` that ``scorer`` accepts for ``pairs[i] = (x, y)`` (default exact match)."""
    return float(np.mean(hits(predictions, pairs, scorer)))


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------
def data_dir() -> Path:
    """The folder of the task files: ``$ICL_DATA_DIR``, else ``data/`` in the repository checkout."""
    explicit = os.environ.get("ICL_DATA_DIR", "").strip()
    if explicit:
        path = Path(explicit).expanduser()
    else:
        root = repository_root()
        if root is None:
            raise FileNotFoundError(
                "the task data lives in the book's repository (data/*.json): install icllib editable from a "
                "checkout (pip install -e .) or set ICL_DATA_DIR to a folder holding the files"
            )
        path = root / "data"
    if not path.is_dir():
        raise FileNotFoundError(f"task data folder {path} does not exist (ICL_DATA_DIR={explicit!r})")
    return path


def _check_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a task name (string), got {type(name).__name__}")
    if name not in _CATEGORY_OF:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}")
    return name


def load_task(name: str) -> Task:
    """Read task ``name`` from ``data/<name>.json`` (cached per file: repeated calls return the same object)."""
    name = _check_name(name)
    return _load(str(data_dir() / f"{name}.json"), name)


@lru_cache(maxsize=None)
def _load(path: str, name: str) -> Task:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"task file {file} is missing; rebuild it with the scripts in data/build/")
    record = json.loads(file.read_text(encoding="utf-8"))
    if record.get("task") != name:
        raise ValueError(f"{file} holds task {record.get('task')!r}, expected {name!r}")
    category = _CATEGORY_OF[name]
    if record.get("category", category) != category:
        raise ValueError(f"{file} says category {record.get('category')!r}, expected {category!r}")
    synonyms = record.get("synonyms")
    if synonyms is not None:
        synonyms = {x: tuple(ys) for x, ys in synonyms.items()}
    pairs = tuple((x, y) for x, y in record["pairs"])
    return Task(name, category, pairs, SCORING[category], synonyms, None, record.get("source", ""))


class _TaskTable(Mapping):
    """Read-only mapping name -> :class:`Task` that loads each file on first access."""

    def __getitem__(self, name: str) -> Task:
        if name not in _CATEGORY_OF:
            raise KeyError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}")
        return load_task(name)

    def __contains__(self, name: object) -> bool:
        return name in _CATEGORY_OF

    def __iter__(self) -> Iterator[str]:
        return iter(TASK_NAMES)

    def __len__(self) -> int:
        return len(TASK_NAMES)

    def __repr__(self) -> str:
        return f"TASKS({', '.join(TASK_NAMES)})"


#: All 18 tasks by name, loaded lazily (``TASKS["en_fr"]``).
TASKS: Mapping[str, Task] = _TaskTable()


# ----------------------------------------------------------------------------------------------------------------
# Single-token outputs
# ----------------------------------------------------------------------------------------------------------------
def filter_single_token(
    task: Task, tokenizer, min_fraction: float = 0.7, include_prefix_tasks: bool = False
) -> Task:
    """Keep the pairs whose answer ``y`` is one token of ``tokenizer`` (the paper's filter).

    One greedy token is scored, so an answer must be one token to be reachable. The answer follows a space in the
    prompt (``x -> y``), so it is tokenised as ``" " + y`` and as bare ``y``; the leading-space version is used
    when it keeps at least ``min_fraction`` as many pairs as the bare one (the reference code's rule; English
    words are usually one token only with their space), and :attr:`Task.leading_space` records the choice.
    Only the answer is checked, not its synonyms.

    Prefix-scored (knowledge) tasks are returned unchanged unless ``include_prefix_tasks``: as in the paper, their
    first token is scored as a prefix ("Hel" for Helsinki), so multi-token answers stay. ``tokenizer`` is a
    Hugging Face tokenizer or any object with ``encode(text) -> list[int]``; no special tokens are counted.
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a Task (see load_task), got {type(task).__name__}")
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must have an encode(text) method, got {type(tokenizer).__name__}")
    min_fraction = check_float("min_fraction", min_fraction, minimum=0.0, maximum=1.0)
    if not isinstance(include_prefix_tasks, bool):
        raise TypeError(f"include_prefix_tasks must be a bool, got {include_prefix_tasks!r}")
    if task.scoring == "prefix" and not include_prefix_tasks:
        return task
    with_space = [x for x, y in task.pairs if len(encode(tokenizer, " " + y)) == 1]
    bare = [x for x, y in task.pairs if len(encode(tokenizer, y)) == 1]
    if with_space and len(with_space) >= min_fraction * len(bare):
        keep, leading_space = with_space, True
    else:
        keep, leading_space = bare, False
    if not keep:
        raise ValueError(f"no answer of task {task.name!r} is a single token of this tokenizer")
    kept = task.subset(keep)
    return Task(kept.name, kept.category, kept.pairs, kept.scoring, kept.synonyms, leading_space, kept.source)


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------
def _as_rng(generator) -> np.random.Generator:
    """A numpy Generator from a Generator (used as is: its state advances), a seed, or a torch.Generator."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        return np.random.default_rng(check_int("generator", generator, minimum=0))
    if isinstance(generator, torch.Generator):
        # one draw from the torch generator seeds numpy: reproducible, and the torch stream advances
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    raise TypeError(
        f"generator must be a numpy.random.Generator, a non-negative int seed or a torch.Generator, "
        f"got {type(generator).__name__}"
    )


def sample_demonstrations(
    pairs: Task | Sequence[tuple[str, str]], n_sets: int, n_demos: int, generator
) -> list[tuple[list[tuple[str, str]], tuple[str, str]]]:
    """Draw ``n_sets`` demonstration sets ``S`` of ``n_demos`` distinct pairs, each with a query pair not in ``S``.

    Returns ``[(demos, query), ...]``: ``demos`` a list of ``(x_i, y_i)``, ``query`` an ``(x, y)`` whose input is
    none of the ``x_i``. Each set is ``n_demos + 1`` pairs drawn without replacement from the list ``pairs`` (a
    :class:`Task` or a sequence of pairs with unique inputs), in random order; sets are drawn independently.
    ``generator`` is a ``numpy.random.Generator`` (its state advances), an int seed, or a ``torch.Generator``.
    """
    pairs = _as_pairs("pairs", pairs)
    n_sets = check_int("n_sets", n_sets, minimum=1)
    n_demos = check_int("n_demos", n_demos, minimum=0)
    if n_demos + 1 > len(pairs):
        raise ValueError(
            f"n_demos={n_demos} demonstrations plus a query need {n_demos + 1} distinct pairs, "
            f"but pairs holds only {len(pairs)}"
        )
    rng = _as_rng(generator)
    sets = []
    for _ in range(n_sets):
        chosen = rng.choice(len(pairs), size=n_demos + 1, replace=False)
        sets.append(([pairs[i] for i in chosen[:-1]], pairs[chosen[-1]]))
    return sets


def sample_dummy_queries(
    pairs: Task | Sequence[tuple[str, str]],
    exclude: Sequence[tuple[str, str]] | Sequence[str],
    n: int,
    generator,
) -> list[tuple[str, str]]:
    """Draw ``n`` distinct pairs whose inputs are not in ``exclude`` (the dummy queries ``x'`` of a set ``S``).

    ``exclude`` holds pairs or bare inputs: pass the demonstrations (and the real query) of the set, so that
    ``theta(S)`` is read from prompts ``[S, x']`` whose ``x'`` is neither a demonstration nor the test query.
    """
    pairs = _as_pairs("pairs", pairs)
    n = check_int("n", n, minimum=1)
    if isinstance(exclude, str) or not isinstance(exclude, Sequence):
        raise TypeError(f"exclude must be a sequence of pairs or inputs, got {type(exclude).__name__}")
    banned = {item if isinstance(item, str) else item[0] for item in exclude}
    pool = [pair for pair in pairs if pair[0] not in banned]  # the list's order, not the set's
    if n > len(pool):
        raise ValueError(f"n={n} dummy queries wanted but only {len(pool)} pairs remain after excluding {len(banned)}")
    rng = _as_rng(generator)
    return [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
