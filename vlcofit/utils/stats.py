"""One convention for "mean ± std" in every report: the sample standard deviation (ddof = 1)
over seeds, draws or splits, NaNs left out; with one value the std is 0."""
from __future__ import annotations

import math
from typing import Iterable

STD = "sample std (ddof=1)"  # written beside every reported ± in JSON outputs and tables


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """(mean, sample std) of the non-NaN ``values``; (nan, nan) if there are none."""
    kept = [float(v) for v in values if not math.isnan(float(v))]
    if not kept:
        return float("nan"), float("nan")
    mean = sum(kept) / len(kept)
    if len(kept) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in kept) / (len(kept) - 1))
