"""What a run folder records besides checkpoints: run.json, metrics.jsonl, plots."""
from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

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


def write_run_json(path: Path, accelerator, seed: int, resumed: bool = False, **extra) -> None:
    """run.json: versions, world size, device, seed, start time (end time added by finish_run_json)."""
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
    if resumed and path.is_file():  # a resumed run keeps its records and its history of starts
        old = json.loads(path.read_text())
        info = {**old, **info, "start_time": old.get("start_time"),
                "resumed_at": old.get("resumed_at", []) + [info["start_time"]]}
    path.write_text(json.dumps(info, indent=2))


def finish_run_json(path: Path, **extra) -> None:
    info = json.loads(path.read_text())
    info.update(end_time=now(), **extra)
    path.write_text(json.dumps(info, indent=2))


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step or evaluation."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.is_file():
            # Drop rows written after the checkpoint we resume from: they will be redone.
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            keep = [r for r in rows if r.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_learning_curves(metrics_path: Path, out: Path, headline: list[str]) -> Path | None:
    """Training loss and the ``headline`` metrics (each dataset's top-1, mAP, ...) against
    step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if (key == "train/loss" or key in headline) and isinstance(value, (int, float)):
                series.setdefault(key, []).append((row["step"], value))
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.5), squeeze=False)
    for ax, (key, points) in zip(axes[0], sorted(series.items())):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
