"""Argument parsing shared by the commands: integer lists and bounds, the --set help, whether this
process is the main one.
"""
from __future__ import annotations

import argparse
import os

from ..errors import InputError


def comma_ints(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; ValueError when a part is not an integer or none is given."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError("no values given")
    return values


def int_values(text: str, flag: str) -> list[int]:
    """A flag's comma-separated integers; bad text is an InputError naming ``flag``."""
    try:
        return comma_ints(text)
    except ValueError as err:
        raise InputError(f"{flag}: {err}") from None


def is_main_process() -> bool:
    """Rank 0 under ``accelerate launch`` (or no launcher): the process that prints."""
    return int(os.environ.get("RANK", "0")) == 0


def int_at_least(low: int):
    """argparse ``type=``: an integer >= ``low`` (else argparse prints a usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)


nonneg_int = int_at_least(0)


def int_list(text: str) -> str:
    """argparse ``type=``: comma-separated integers >= 0 (kept as the text)."""
    try:
        values = comma_ints(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return text


SET_HELP = "override a config value, e.g. --set train.steps=100 (repeatable)"
