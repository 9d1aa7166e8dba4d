"""Classification metrics: top-1, top-5, mean class accuracy, per-class accuracy."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import torch


def accuracy_metrics(scores: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
    """scores [N, C], labels [N] -> ({top1, top5, mean_class_acc} in %, per-class accuracy [C] in %).

    Mean class accuracy averages over classes that have samples; classes without samples get
    NaN in the per-class vector.
    """
    n, c = scores.shape
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "mean_class_acc": float("nan"), "count": 0}, \
            torch.full((c,), float("nan"))
    k = min(5, c)
    topk = scores.topk(k, dim=1).indices
    correct = topk == labels[:, None]
    top1 = correct[:, 0].float()
    counts = torch.bincount(labels, minlength=c).float()
    hits = torch.bincount(labels, weights=top1, minlength=c)
    per_class = torch.where(counts > 0, 100.0 * hits / counts.clamp(min=1), torch.tensor(float("nan")))
    metrics = {
        "top1": 100.0 * top1.mean().item(),
        "top5": 100.0 * correct.any(dim=1).float().mean().item(),
        "mean_class_acc": per_class[counts > 0].mean().item(),
        "count": n,
    }
    return metrics, per_class


def write_per_class_csv(path: Path, names: Sequence[str], per_class: torch.Tensor,
                        counts: torch.Tensor) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_index", "class_name", "count", "accuracy"])
        for i, name in enumerate(names):
            acc = per_class[i].item()
            writer.writerow([i, name, int(counts[i]), "" if acc != acc else f"{acc:.2f}"])
