"""Run-folder files written whole or not at all, and JSON records read with clear errors.

Below everything that writes run records (config, run info, checkpoints, resume), and free of
torch, so that the config layer can use it."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import InputError


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
