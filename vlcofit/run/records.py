"""What a run folder records besides checkpoints: run.json, metrics.jsonl, plots.

Records are crash-safe: each is written whole or not at all (:func:`write_atomic`), except
metrics.jsonl, which a run appends to; a row torn by a kill mid-append is its last line, which
:func:`read_metrics` drops with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from ..errors import InputError
from ..utils.files import read_json, write_atomic
from ..utils.plotting import pyplot

logger = logging.getLogger(__name__)

PACKAGES = ("vlcofit", "torch", "torchvision", "open_clip_torch", "transformers", "accelerate", "av",
            "numpy", "safetensors")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_run_json(path: Path, accelerator, seed: int, previous: dict | None = None,
                   **extra) -> None:
    """run.json: versions, world size, device, seed, start time (end time added by
    finish_run_json). ``previous``: the run.json of the run being resumed (:func:`read_json`),
    whose records and history of starts are kept."""
    info = {
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "host": socket.gethostname(),
        "start_time": now(),
        "end_time": None,
        "world_size": accelerator.num_processes,
        "device": str(accelerator.device),
        "device_name": (torch.cuda.get_device_name() if torch.cuda.is_available()
                        else platform.processor() or "cpu"),
        "mixed_precision": accelerator.mixed_precision,
        "seed": seed,
        "versions": package_versions(),
        **extra,
    }
    if previous is not None:
        info = {**previous, **info, "start_time": previous.get("start_time"),
                "resumed_at": previous.get("resumed_at", []) + [info["start_time"]]}
    write_atomic(path, json.dumps(info, indent=2))


def finish_run_json(path: Path, **extra) -> None:
    info = read_json(path)
    info.update(end_time=now(), **extra)
    write_atomic(path, json.dumps(info, indent=2))


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step or evaluation, appended. Starts as
    ``rows`` (none for a new run; a resumed run's rows up to its checkpoint: later ones will be
    redone, and a torn last line goes), written atomically."""

    def __init__(self, path: Path, rows: list[dict]):
        self.path = path
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))

    def write(self, row: dict) -> None:
        # one write of one line: a kill can tear at most this last line
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class LossWindow:
    """The training loss since the last logged row: per dataset the loss sum and steps, then
    clips, on each process's device (reading a loss back every step would make the host wait
    for the GPU at each step instead of queueing the next; float32: Apple's MPS has no
    float64), and the seconds it spans. Saved in each checkpoint (:meth:`state`), so that a
    resumed run logs the losses the uninterrupted run logs; an older checkpoint has none and
    the window restarts empty."""

    def __init__(self, datasets: int, accelerator, saved: dict | None = None,
                 source: Path | None = None):
        self.sums = torch.zeros(2 * datasets + 1, device=accelerator.device)
        self.start = time.perf_counter()
        if saved is not None:
            self._restore(saved, accelerator, source)

    def add(self, dataset: int, loss, clips: int) -> None:
        self.sums[2 * dataset] += loss
        self.sums[2 * dataset + 1] += 1
        self.sums[-1] += clips

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def reset(self) -> None:
        self.sums.zero_()
        self.start = time.perf_counter()

    def state(self, accelerator) -> dict:
        """For a checkpoint's state.json (collective: every process's sums)."""
        return {"sums": accelerator.gather(self.sums[None]).tolist(), "seconds": self.seconds()}

    def _restore(self, saved: dict, accelerator, source: Path | None) -> None:
        try:
            sums = torch.tensor(saved["sums"], dtype=self.sums.dtype)
            seconds = float(saved["seconds"])
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"{source}: corrupt log_window ({type(err).__name__}: {err}); "
                             f"resume from another checkpoint") from None
        if sums.dim() != 2 or sums.shape[1] != len(self.sums):
            raise InputError(f"{source}: log_window holds sums of shape {tuple(sums.shape)}, "
                             f"expected (processes, {len(self.sums)}); resume from another "
                             f"checkpoint")
        if len(sums) == accelerator.num_processes:
            self.sums.copy_(sums[accelerator.process_index])
        elif accelerator.is_main_process:  # the world size changed: the totals, on one process
            self.sums.copy_(sums.sum(0))
        self.start = time.perf_counter() - seconds


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl. A corrupt last line (torn: the run was killed while
    appending it) is dropped with a warning; a corrupt line before it is an InputError."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            row, reason = None, f"not valid JSON ({err})"
        else:
            reason = f"expected a JSON object, got {type(row).__name__}"
        if isinstance(row, dict):
            rows.append(row)
        elif number == len(lines):
            logger.warning("%s:%d: dropped a torn last line (the run was killed while writing "
                           "it?): %s", path, number, reason)
        else:
            raise InputError(f"{path}:{number}: corrupt row, {reason}; only the last line may "
                             f"be torn by a crash. Remove or repair the line")
    return rows


def learning_curve_figure(rows: list[dict], headline: list[str],
                          classes: dict[str, int] | None = None):
    """A matplotlib figure: the training loss (overall, and each dataset's in a mixture) and
    each ``headline`` metric (top-1, mAP, ...) against step, one panel each; a top-1 panel has
    a dashed chance line where ``classes`` gives its dataset's number of classes. None if the
    rows hold none of these."""
    plt = pyplot()

    panels: dict[str, dict[str, list[tuple[int, float]]]] = {}  # panel -> line -> points
    for row in rows:
        for key, value in row.items():
            if not isinstance(value, (int, float)) or "step" not in row:
                continue
            is_loss = key == "train/loss" or re.fullmatch(r"train/[^/]+/loss", key)
            panel = "train/loss" if is_loss else key if key in headline else None
            if panel is not None:
                panels.setdefault(panel, {}).setdefault(key, []).append((row["step"], value))
    if not panels:
        return None
    order = [k for k in ["train/loss", *headline] if k in panels]
    fig, axes = plt.subplots(1, len(order), figsize=(4.5 * len(order), 3.5), squeeze=False)
    for ax, panel in zip(axes[0], order):
        for key, points in sorted(panels[panel].items(), key=lambda kv: kv[0] != panel):
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=key)
        dataset, _, metric = panel.rpartition("/")
        if metric == "top1" and (classes or {}).get(dataset):
            chance = 100 / classes[dataset]
            ax.axhline(chance, linestyle="--", color="gray", label=f"chance ({chance:.3g}%)")
        if len(ax.lines) > 1:
            ax.legend(fontsize="small")
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_learning_curves(metrics_path: Path, out: Path, headline: list[str],
                         classes: dict[str, int] | None = None) -> Path | None:
    """Save :func:`learning_curve_figure` of a metrics.jsonl as ``out``."""
    fig = learning_curve_figure(read_metrics(metrics_path), headline, classes)
    if fig is None:
        return None
    plt = pyplot()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
