"""Run-folder files written whole or not at all, JSON records and users' text files read
with clear errors.

Below everything that writes run records (config, run info, checkpoints, resume), and free of
torch, so that the config layer can use it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all: a temporary file in the same folder
    (``os.replace`` is atomic only within one file system), on disk (fsync) before it replaces
    ``path``, so a kill or a full disk leaves the old record, never a half-written one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict:
    """A JSON record of the run folder (run.json, ...); unreadable or corrupt: an InputError
    naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise InputError(f"{path}: corrupt (not valid JSON: {err}); restore it from a backup, "
                         f"or remove it to start the record afresh") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: corrupt: expected a JSON object, got {type(data).__name__}")
    return data


def read_text(path: Path, what: str = "text file") -> str:
    """A user's UTF-8 text file (a leading BOM dropped); unreadable or not UTF-8: an InputError
    naming the file, and the line and byte where the decoding failed."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputError(f"{path}:{line}: the {what} is not UTF-8 text (byte "
                         f"{data[err.start]:#04x} at byte {column} of the line, offset "
                         f"{err.start} of the file: {err.reason}); save it as UTF-8") from None
