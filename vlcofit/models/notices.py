"""What model builds tell the user: weights that cannot be had (and the option that passes a
local copy), and the libraries' log notices that are expected, so quieted, where vlcofit
knows better (a random build whose weights a checkpoint replaces next; the pooler a sentence
encoder's checkpoint holds and open_clip does not build). Everything else gets through."""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Callable

from ..errors import InputError

# open_clip's notices (root logger) that a build loaded no weights, or only one tower's
_RANDOM_INIT = re.compile(r"No pretrained weights loaded for model .*\. Model initialized "
                          r"randomly\.|Model \S+ initialized partially\.")
# transformers' LOAD REPORT table rows: "key | STATUS | ..."
_REPORT_ROW = re.compile(r"^(\S+)\s*\|\s*([A-Z]+)\s*\|", re.MULTILINE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class WeightsUnavailable(InputError):
    """Weights (or a tokenizer) that cannot be had here. The message ends with how to pass a
    local copy instead, as ``vlcofit train`` takes it (``--set model.KEY=EXAMPLE``); a command
    that sets ``model.KEY`` another way names its own option with :meth:`passing`."""

    def __init__(self, message: str, key: str, example: str):
        super().__init__(f"{message}: --set model.{key}={example}")
        self.message, self.key, self.example = message, key, example

    def __reduce__(self):  # picklable (errors cross processes in a broadcast)
        return type(self), (self.message, self.key, self.example)

    def passing(self, flags: dict[str, str] | None = None, config: str | None = None
                ) -> InputError:
        """The error naming ``flags[key]`` (e.g. ``{"pretrained": "--pretrained"}``), or the
        ``config`` file whose ``model.KEY`` decides (a run's config.yaml); else unchanged."""
        if flags and self.key in flags:
            return InputError(f"{self.message}: {flags[self.key]} {self.example}")
        if config:
            return InputError(f"{self.message}: set model.{self.key}: {self.example} in "
                              f"{config} (the run's model is built from it)")
        return self


class _Drop(logging.Filter):
    def __init__(self, expected: Callable[[str], bool]):
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.expected(record.getMessage())


@contextmanager
def quiet(logger_name: str, expected: Callable[[str], bool]):
    """Drop the records of logger ``logger_name`` (``""``: the root) whose message is
    ``expected``, for the duration; every other record still gets through."""
    target, drop = logging.getLogger(logger_name or None), _Drop(expected)
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


def weights_follow():
    """Around a build whose weights a checkpoint replaces next: open_clip's "initialized
    randomly" / "partially" notice is expected there, and misleading."""
    return quiet("", lambda message: bool(_RANDOM_INIT.fullmatch(message)))


def only_unbuilt_pooler(report: str) -> bool:
    """Whether transformers' LOAD REPORT lists nothing but UNEXPECTED ``pooler.*`` weights:
    a sentence encoder's checkpoint (MiniLM) holds the pooler that open_clip does not build
    when it pools by itself (``hf_pooler_type`` other than ``cls_pooler``)."""
    text = _ANSI.sub("", report)
    rows = _REPORT_ROW.findall(text) if "LOAD REPORT" in text else []
    return bool(rows) and all(status == "UNEXPECTED" and key.startswith("pooler.")
                              for key, status in rows)


def expected_load_report():
    """Around open_clip's build of a Hugging Face text tower: see only_unbuilt_pooler."""
    return quiet("transformers.modeling_utils", only_unbuilt_pooler)
