"""The book's figure style and small helpers for the figures that recur across chapters."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

# Okabe-Ito: distinguishable under the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def use_book_style() -> None:
    """Apply the book's matplotlib/seaborn style (call once at the top of a chapter)."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update(
        {
            "figure.figsize": (6.4, 4.0),
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "axes.titlesize": "medium",
            "legend.frameon": False,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )


def log_curves(
    ax: plt.Axes,
    curves: dict[str, Sequence[float]],
    x: Sequence[float] | None = None,
    xlabel: str = "iteration",
    ylabel: str = "",
    title: str | None = None,
) -> plt.Axes:
    """Plot named curves on a log y-axis (losses, gaps) with labelled axes and a legend."""
    for label, values in curves.items():
        values = np.asarray(values, dtype=float)
        xs = np.arange(len(values)) if x is None else np.asarray(x, dtype=float)
        ax.plot(xs, values, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    return ax
