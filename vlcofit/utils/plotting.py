"""Figures written to files: matplotlib's file-only Agg backend, imported on first use (a heavy
import most commands never need)."""
from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed, also in loader workers)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def shots_axis(ax, ks) -> None:
    """A base-2 log x axis for K (videos per class), ticks at ``ks`` labelled 1, 2, 4 ... (not
    2^0, 2^1 ...)."""
    import matplotlib.ticker
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks)
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("K (videos per class)")
