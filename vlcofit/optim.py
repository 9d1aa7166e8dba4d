"""Optimizer and learning-rate schedule: AdamW with separate rates for pretrained and new
parameters, no weight decay on biases / norms / embeddings, linear warmup then cosine."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import TrainConfig


def param_groups(model: nn.Module, new_names: set[str], cfg: TrainConfig) -> list[dict]:
    """Four AdamW groups: (pretrained | new) x (decay | no decay). 1-D tensors (biases, norms,
    scales) and embeddings get no weight decay, as in CLIP / open_clip training."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "embedding" in name or name.endswith(("pos", "logit_scale"))
        groups.setdefault((name in new_names, no_decay), []).append(p)
    out = []
    for (is_new, no_decay), params in sorted(groups.items()):
        out.append({
            "params": params,
            "lr": cfg.lr_new if is_new else cfg.lr,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            "name": f"{'new' if is_new else 'pretrained'}{'_no_decay' if no_decay else ''}",
        })
    return out


def build_optimizer(model: nn.Module, new_names: set[str], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, new_names, cfg), betas=(0.9, 0.98), eps=1e-6)


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int,
                    total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` optimizer steps, then cosine decay to 0 at ``total``
    (the steps of one training phase)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
