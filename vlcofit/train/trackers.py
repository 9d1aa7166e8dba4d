"""Experiment trackers (``train.trackers``) through Accelerate's own: TensorBoard (the default;
``<run>/tensorboard``), Weights & Biases and MLflow (optional extras). Each run logs what
``metrics.jsonl`` holds, and the resolved config as hyperparameters (dotted keys, lists as
text). Offline use is the trackers' own: ``WANDB_MODE=offline`` (files under ``<run>/wandb``),
``MLFLOW_TRACKING_URI`` (default here: a SQLite store, ``<run>/mlflow.db``), so nothing needs
a server or network unless asked for.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import get_args

from ..config.schema import Tracker
from ..errors import InputError

# tracker -> how to install it (TensorBoard is a dependency; the others are extras)
_INSTALL = {"tensorboard": "pip install tensorboard", "wandb": 'pip install -e ".[wandb]"',
            "mlflow": 'pip install -e ".[mlflow]"'}
TRACKERS: tuple[str, ...] = get_args(Tracker)


def build_trackers(names: tuple[str, ...], run_dir: Path) -> list:
    """Accelerate tracker objects for ``names`` logging into ``run_dir``."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise InputError(f"train.trackers: {missing[0]} is not installed: {_INSTALL[missing[0]]} "
                         f"(or drop it from the list)")
    out = []
    for name in names:
        if name == "tensorboard":
            out.append(TensorBoardTracker("tensorboard", run_dir))
        elif name == "wandb":
            out.append(WandBTracker(os.environ.get("WANDB_PROJECT", "vlcofit"),
                                    name=run_dir.name, dir=str(run_dir)))
        else:
            out.append(_mlflow(MLflowTracker, run_dir))
    return out


def _mlflow(base, run_dir: Path):
    """Accelerate's MLflow tracker, storing into ``<run>/mlflow.db`` (SQLite: MLflow 3 refuses
    its file store) unless MLFLOW_TRACKING_URI names a store; set per run, not in the
    environment (a sweep trains many runs in one process)."""
    class RunStore(base):
        def start(self):
            import mlflow
            if not os.environ.get("MLFLOW_TRACKING_URI"):
                mlflow.set_tracking_uri(store_uri(run_dir))
            super().start()

    return RunStore(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "vlcofit"),
                    run_name=run_dir.name)


def store_uri(run_dir: Path) -> str:
    """The MLflow store of a run folder."""
    return f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"


def hyperparameters(cfg) -> dict[str, bool | int | float | str | None]:
    """The experiment config as flat ``{dotted.key: scalar}`` (what every tracker accepts)."""
    flat: dict[str, bool | int | float | str | None] = {}

    def walk(value, key: str) -> None:
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
        elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v)
                                                       for v in value.values()):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[key] = value
        else:
            flat[key] = str(list(value) if isinstance(value, tuple) else value)
    walk(cfg, "")
    return flat
