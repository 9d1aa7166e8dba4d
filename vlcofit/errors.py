"""Errors caused by the user's input (files, configs, arguments).

The CLI prints these as one short message naming the file/line/field, without a traceback;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input. Message should name the file (and line or field) and what is wrong."""


def at(path: str | Path, line: int | None = None) -> str:
    """Location prefix for messages: ``file:line`` (1-based line) or ``file``."""
    return f"{path}:{line}" if line is not None else str(path)


class UnreadableVideosError(InputError, RuntimeError):
    """Training found every video it tried unreadable: the data, not the code, is wrong."""

    def __init__(self, message: str) -> None:
        # Raised in a DataLoader worker, it is raised again in the main process as
        # UnreadableVideosError("Caught ... in DataLoader worker ... Original Traceback ...
        # UnreadableVideosError: <message>"): keep the message, not the worker's traceback.
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)
