"""Prompt formats: how demonstrations ``S`` and a query ``x`` become the text ``[S, x]`` (or the bare ``[x]``).

:func:`check_format` is the one check of a ``fmt`` argument (a :class:`PromptFormat` or a name in ``FORMATS``);
public functions call it once and pass the :class:`PromptFormat` on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from icllib._checks import check_pairs

__all__ = ["PromptFormat", "FORMATS", "DEFAULT_FORMAT", "check_format", "format_prompt", "format_for_task"]

Pair = tuple[str, str]


@dataclass(frozen=True)
class PromptFormat:
    """How ``S = ((x_1, y_1), ..., (x_k, y_k))`` and a query ``x`` become one string.

    Each demonstration is ``prefix + x_i + arrow + (" " if output_space) + y_i``; demonstrations are joined by
    ``separator``; the query line is ``prefix + x + arrow`` (the model's next token is the answer). ``bos`` puts the
    tokenizer's BOS token first. The reference code's format is ``example:x->y`` lines (``prefix="example:"``,
    ``arrow="->"``); the paper's figures write ``x -> y``.
    """

    prefix: str = "example:"
    arrow: str = "->"
    separator: str = "\n"
    output_space: bool = True
    bos: bool = False

    def __post_init__(self) -> None:
        for name in ("prefix", "arrow", "separator"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        if not self.arrow:
            raise ValueError("arrow must be a non-empty string (it ends every query line), got ''")
        for name in ("output_space", "bos"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def demo(self, x: str, y: str) -> str:
        """One demonstration line."""
        return f"{self.prefix}{x}{self.arrow}{' ' if self.output_space else ''}{y}"

    def query(self, x: str) -> str:
        """The query line (also the whole zero-shot and task-vector prompt)."""
        return f"{self.prefix}{x}{self.arrow}"

    def prompt(self, demos: Sequence[Pair], x: str) -> str:
        """``[S, x]`` as text, for inputs already checked (:func:`format_prompt` is the checked entry point)."""
        return self.separator.join([*(self.demo(dx, dy) for dx, dy in demos), self.query(x)])


#: The formats compared in Chapter 6 (the prompt-format ablation).
FORMATS: dict[str, PromptFormat] = {
    "bare": PromptFormat(prefix="", arrow=" ->"),
    "bare+bos": PromptFormat(prefix="", arrow=" ->", bos=True),
    "example": PromptFormat(prefix="example:", arrow="->"),
    "example+bos": PromptFormat(prefix="example:", arrow="->", bos=True),
    "qa+bos": PromptFormat(prefix="Q: ", arrow="\nA:", separator="\n\n", bos=True),
}

#: The book's default, the reference code's ``example:x->y`` (Chapter 6 compares the formats on dev data).
DEFAULT_FORMAT = "example"


def check_format(fmt: PromptFormat | str) -> PromptFormat:
    """The :class:`PromptFormat` that ``fmt`` names (a format, or a key of ``FORMATS``); anything else raises
    ``ValueError``/``TypeError`` naming ``fmt``."""
    if isinstance(fmt, str):
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be a PromptFormat or one of {list(FORMATS)}, got {fmt!r}")
        return FORMATS[fmt]
    if not isinstance(fmt, PromptFormat):
        raise TypeError(f"fmt must be a PromptFormat or one of {list(FORMATS)}, got {type(fmt).__name__}")
    return fmt


def format_prompt(demos: Sequence[Pair], x: str, fmt: PromptFormat | str = "example") -> str:
    """The ICL prompt ``[S, x]`` as text (without BOS, which tokenisation adds when ``fmt.bos``).

    With no demonstrations it is the zero-shot prompt ``[x]``, the one the task vector is patched into.
    """
    fmt = check_format(fmt)
    if not isinstance(x, str):
        raise TypeError(f"x must be a string, got {type(x).__name__}")
    return fmt.prompt(check_pairs("demos", demos, allow_empty=True), x)


def format_for_task(task, fmt: PromptFormat | str = "example") -> PromptFormat:
    """``fmt`` with ``output_space`` set the way ``lang_tasks.filter_single_token`` found the task's answers.

    (A filtered task whose answers are single tokens only without a leading space gets ``output_space=False``.)
    """
    return _for_task(task, check_format(fmt))


def _for_task(task, fmt: PromptFormat) -> PromptFormat:
    return replace(fmt, output_space=getattr(task, "leading_space", None) is not False)
