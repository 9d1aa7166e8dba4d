"""Resuming a run: refuse a config that would train differently from the run's own.

A resumed run must continue the training it checkpointed: the same data, model, optimizer,
schedule and seed. Only settings that do not change what is trained may differ.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from pathlib import Path
from typing import Any

from ..config.schema import ExperimentConfig
from ..errors import InputError
from ..experiment import load_experiment
from ..utils.files import read_json, write_atomic
from . import checkpoint

# Keys a resumed run may change: how often it logs, evaluates and saves, how evaluation is run,
# where the data now lives, how many loader processes read it, how long a loader or a
# collective may wait, and the sweep around the run.
MAY_CHANGE = ("output_dir", "train.log_every", "train.eval_every", "train.save_every",
              "train.keep_checkpoints", "train.num_workers", "train.max_bad_fraction", "eval.*",
              "data.*", "train.collective_timeout",
              "datasets.*.root", "sweep.*", "model.grad_checkpointing")


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value, down through the config's sections and dataset cards; a field that
    holds a mapping of the user's (``train.lr_mults``, ``sweep.arms``) is one value, so a change
    in it shows as one line with both whole maps."""
    if dataclasses.is_dataclass(value):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            out.update(_leaves(getattr(value, f.name), f"{prefix}{f.name}."))
        return out
    if isinstance(value, dict) and value and all(map(dataclasses.is_dataclass, value.values())):
        return {k: v for name, card in value.items()
                for k, v in _leaves(card, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): value}


def training_changes(saved: ExperimentConfig, new: ExperimentConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for every training-relevant key that differs; a value
    only one side has is MISSING on the other."""
    a, b = _leaves(saved), _leaves(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in MAY_CHANGE):
            continue
        old, now = a.get(key, MISSING), b.get(key, MISSING)
        if old != now:
            out.append((key, old, now))
    return out


MISSING = object()  # a key one side lacks (e.g. a dataset only one config has)


def _shown(value: Any) -> str:
    if value is MISSING:
        return "absent"
    return repr(list(value) if isinstance(value, tuple) else value)


def check_resume_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Raise if ``cfg`` would train differently from the run saved in ``run_dir``."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise InputError(f"{path}: missing; cannot check that the resumed run trains as the run did")
    # through the loader, so fields added to vlcofit since the run was saved take their
    # defaults on both sides instead of counting as changes
    saved = load_experiment(path)
    changes = training_changes(saved, cfg)
    if changes:
        shown = "; ".join(f"{k}: {_shown(old)} in the run, {_shown(new)} now"
                          for k, old, new in changes[:8])
        more = f" (and {len(changes) - 8} more)" if len(changes) > 8 else ""
        raise InputError(f"--resume: the config differs from the run's {path} in keys that change "
                         f"training: {shown}{more}. Resume with the run's own settings (only "
                         f"{', '.join(MAY_CHANGE)} may change), or start a new run in another "
                         f"output_dir")


START = "start.json"  # in the run folder: which weights the run started from


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def start_weights(cfg: ExperimentConfig, resumed_run: Path | None) -> Path | None:
    """The checkpoint ``model.init_from`` names, fixed when the run starts: a new run records
    the resolved folder and its hash in ``start.json``; a resume loads that same folder again
    (not what ``init_from`` resolves to now — a run's ``latest`` moves) and refuses it if it is
    gone or changed, since the start decides which parameters are new and is L2-SP's target."""
    if not cfg.model.init_from:
        return None
    record = resumed_run / START if resumed_run else None
    if record is None or not record.is_file():  # new, or from before start.json: as given
        return checkpoint.resolve(cfg.model.init_from).resolve()
    saved = read_json(record)
    if not isinstance(saved.get("checkpoint"), str) or not isinstance(saved.get("sha256"), str):
        raise InputError(f"{record}: corrupt: expected {{\"checkpoint\": ..., \"sha256\": ...}}")
    ckpt = Path(saved["checkpoint"])
    file = ckpt / "model.safetensors"
    if not file.is_file():
        raise InputError(f"model.init_from: this run started from {file}, which is gone; put it "
                         f"back to resume (its weights decide which parameters are new and are "
                         f"L2-SP's target)")
    if _sha256(file) != saved["sha256"]:
        raise InputError(f"model.init_from: {file} changed since this run started from it "
                         f"(sha256 {saved['sha256'][:12]}...); resuming would train from other "
                         f"starting weights")
    return ckpt


def record_start(run_dir: Path, ckpt: Path | None) -> None:
    """Write ``start.json`` for :func:`start_weights` (main process, new runs only)."""
    if ckpt is not None:
        write_atomic(run_dir / START, json.dumps(
            {"checkpoint": str(ckpt), "sha256": _sha256(ckpt / "model.safetensors")}, indent=1))
