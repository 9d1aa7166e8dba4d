"""Temporal modules: per-frame embeddings [B, T, E] -> one video embedding [B, E]."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config.schema import TEMPORAL_MAX_FRAMES


class MeanPool(nn.Module):
    """Average over frames (TSN-style consensus)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, E] -> [B, E]."""
        return x.mean(dim=1)


class TemporalTransformer(nn.Module):
    """Text4Vis-style: temporal position embeddings + transformer over frame embeddings,
    added back to the frame embeddings (residual), then averaged over time.

    The output projection starts at zero so a fresh module is exactly mean pooling: training
    begins from CLIP's own (image-level) behaviour instead of a random perturbation of it.
    Frame features are layer-normalised before the position embeddings are added, and those
    start at std 0.5: with CLIP4Clip's 0.02 next to unnormalised features, the attention barely
    sees frame order at first and learns it late (on synthetic features whose class is the
    direction of a drift over 8 frames we saw ~150-200 steps to learn it with 0.02, ~50 with 1.0).
    """

    def __init__(self, dim: int, max_frames: int = TEMPORAL_MAX_FRAMES, layers: int = 1, heads: int | None = None):
        super().__init__()
        heads = heads or max(1, dim // 64)
        self.norm_in = nn.LayerNorm(dim)
        self.pos = nn.Parameter(torch.zeros(1, max_frames, dim))
        nn.init.normal_(self.pos, std=0.5)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, E] -> [B, E]."""
        t = x.shape[1]
        if t > self.pos.shape[1]:
            raise ValueError(f"{t} frames exceed the temporal module's maximum {self.pos.shape[1]}")
        y = self.encoder(self.norm_in(x) + self.pos[:, :t].to(x.dtype))
        return (x + self.out(y)).mean(dim=1)


def build_temporal(kind: str, dim: int, layers: int) -> nn.Module:
    if kind == "mean":
        return MeanPool()
    if kind == "transformer":
        return TemporalTransformer(dim, layers=layers)
    raise ValueError(f"unknown temporal module {kind!r}")
