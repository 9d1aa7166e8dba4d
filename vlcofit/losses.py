"""Multi-label losses for box classification (AVA-style localisation).

Reduction: "mean" over boxes and classes is the AVA standard (SlowFast trains AVA with
``BCELoss(reduction="mean")`` on sigmoid outputs). Its size per box shrinks with the number of
classes (~0.1 at 80 classes), well below a softmax cross-entropy; when co-training with
classification, "box" (sum over classes, mean over boxes: gradients per box on the scale of a
softmax cross-entropy) or a per-dataset loss weight balances the two.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from .errors import InputError

KINDS = ("bce", "focal")
REDUCTIONS = ("mean", "box")


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "bce",
                    gamma: float = 2.0, alpha: float = 0.25, reduction: str = "mean") -> torch.Tensor:
    """Sigmoid multi-label loss of logits [K, C] against (multi-hot or soft) targets [K, C].

    kind: "bce" (binary cross-entropy with logits) or "focal" (RetinaNet focal loss,
    ``torchvision.ops.sigmoid_focal_loss``; ``alpha`` < 0 turns the class weighting off).
    reduction: "mean" over boxes and classes (AVA / SlowFast standard) or "box" (sum over
    classes, mean over boxes). Computed in float32; no boxes (K = 0) gives a zero loss that
    keeps the graph.
    """
    if kind not in KINDS:
        raise InputError(f"loss: unknown multi-label loss {kind!r} (choose from {', '.join(KINDS)})")
    if reduction not in REDUCTIONS:
        raise InputError(f"loss: unknown reduction {reduction!r} (choose from {', '.join(REDUCTIONS)})")
    if logits.shape != targets.shape or logits.ndim != 2:
        raise ValueError(f"logits and targets must both be [K, C], got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if logits.numel() == 0:
        return logits.sum() * 0.0
    logits, targets = logits.float(), targets.float()
    if kind == "bce":
        per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    else:
        per = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    return per.mean() if reduction == "mean" else per.sum(dim=1).mean()
