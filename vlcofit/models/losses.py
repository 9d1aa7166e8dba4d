"""Multi-label losses for box classification (AVA-style localisation); the clip-label loss
(softmax cross-entropy, or SigLIP's sigmoid); the contrastive loss of video-caption pairs
(CLIP's symmetric InfoNCE or SigLIP's pairwise sigmoid), negatives gathered from every process.

Reduction: "mean" over boxes and classes is the AVA standard (SlowFast trains AVA with
``BCELoss(reduction="mean")`` on sigmoid outputs). Its size per box shrinks with the number of
classes (~0.1 at 80 classes), well below a softmax cross-entropy; when co-training with
classification, "box" (sum over classes, mean over boxes: gradients per box on the scale of a
softmax cross-entropy) or a per-dataset loss weight balances the two.
"""
from __future__ import annotations

from typing import get_args

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from ..config.schema import BoxLoss
from ..errors import InputError

KINDS = get_args(BoxLoss)
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


def label_loss(logits: torch.Tensor, labels: torch.Tensor, sigmoid: bool = False,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """One label per clip: logits [B, C], labels [B]. Softmax cross-entropy, or (``sigmoid``)
    SigLIP's loss: each class a binary decision, summed over classes and averaged over clips
    (SigLIP normalises by the batch, not by the pairs). Smoothing moves ``label_smoothing`` of
    the target mass uniformly over the classes in both."""
    logits = logits.float()
    if not sigmoid:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    target = F.one_hot(labels, logits.shape[1]).float()
    target = target * (1 - label_smoothing) + label_smoothing / logits.shape[1]
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(1).mean()


# --------------------------------------------------------------------------- contrastive

def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward returns each process the gradient of EVERY process's loss
    with respect to its slot (all-reduce of the gathered gradient, then its slice): open_clip's
    ``gather_with_grad=True``. All-reduce rather than torch.distributed.nn's all-to-all, which
    not every backend (gloo) implements."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # all_reduce is in place; autograd owns `grad`
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size:(ctx.rank + 1) * ctx.size]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] on each of N processes -> [N * B, ...], process r's rows at r * B, with
    gradients flowing back to every process; ``x`` itself with one process. Every process
    must call it with the same B (training loaders drop the last, uneven batch)."""
    return x if _world() == 1 else _GatherWithGrad.apply(x)


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) of this process's pairs: video embeddings [B, E], the
    embeddings of their captions [B, E] (pair i = row i), ``scale`` = exp(logit scale).

    Each local video is scored against the captions of the GLOBAL batch (every process's,
    gathered with gradients) and each local caption against the global videos; the loss is
    the mean of the two cross-entropies over the local rows. Its mean over N processes (what
    DDP's gradient average and the logged loss take) is the single-process loss of the global
    batch, and so are the gradients. float32, autocast off: the logits of a large batch are
    sharp and bf16 would round the targets' margins away.

    ``bias`` given: SigLIP's pairwise sigmoid loss instead, every (local video, global caption)
    pair a binary decision on ``scale * cos + bias`` (positive: its own caption), summed and
    divided by the local batch; its mean over processes is again the global batch's loss."""
    with torch.autocast(video.device.type, enabled=False):
        video = F.normalize(video.float(), dim=-1)
        text = F.normalize(text.float(), dim=-1)
        all_video, all_text = gather_with_grad(video), gather_with_grad(text)
        offset = dist.get_rank() * video.shape[0] if _world() > 1 else 0
        labels = torch.arange(video.shape[0], device=video.device) + offset
        scale = torch.as_tensor(scale, device=video.device).float()
        v2t = scale * video @ all_text.t()  # [B, N * B]
        if bias is not None:
            sign = 2 * F.one_hot(labels, v2t.shape[1]).float() - 1
            return -F.logsigmoid(sign * (v2t + bias.float())).sum() / video.shape[0]
        t2v = scale * text @ all_video.t()
        return (F.cross_entropy(v2t, labels) + F.cross_entropy(t2v, labels)) / 2
