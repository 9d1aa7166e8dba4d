"""Box head for AVA-style localisation: pool the patch-token map inside each person box and
project it into the joint text space, where it is scored against action names with a sigmoid.

Pooling (``temporal``): "mean" averages the map over time first, then RoIAlign (torchvision)
samples it inside each box. RoIAlign is linear in the feature map (fixed bilinear weights that
depend only on the box), so RoIAlign of the time-averaged map equals the time average of
per-frame RoIAlign, at a T-th of the cost; this is SlowFast's pooling and loses the order of
frames. "transformer" RoIAligns every frame and runs a temporal transformer over the box's
per-frame features (the clip's Text4Vis-style module, starting as exact mean pooling), so a box
can tell "moving left" from "moving right". Either way the RoI grid is then averaged (or
max-pooled, as SlowFast does) to one vector per box (and frame).

Clip context: by default the clip-level video embedding (already in the text space, and the
thing CLIP's zero-shot scoring is trained on) is added to every box embedding of its clip, both
unit-normalised, the context with a learnable weight. Box scores thus start from the clip's
zero-shot ranking of the action names (scene-level actions like "ride", "swim" are mostly
context) and the RoI branch, a fresh projection, learns what tells the persons of one clip apart.
Both parts get gradients from the first step.

Scoring: sigmoid logits = ``exp(logit_scale) * cos(box, text) + logit_bias`` with the head's own
scale (initialised to 10, as SigLIP does) rather than the classification temperature (CLIP's is
100): with 100 the logits of a near-random embedding would spread over several units and swamp
the prior bias. ``logit_bias`` starts at logit(prior), so initial sigmoid outputs sit near the
positive rate of AVA (~0.02 per box and class) and the first BCE steps are not spent pushing
every negative down. (The context lifts them somewhat: pretrained CLIP's video-text cosines
are all positive, ~0.2-0.3, i.e. +1 to +2 on the logits at scale 10.)
"""
from __future__ import annotations

import logging
import math
from typing import get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..config.schema import Temporal
from .temporal import TemporalTransformer

logger = logging.getLogger(__name__)

MAX_SCALE = 100.0  # cap of exp(logit_scale), as VideoCLIP's; see clamp_logit_scale


class BoxHead(nn.Module):
    """Person-box embeddings from a video's patch-token map.

    Args:
        width: token channels D (``Backbone.width``).
        embed_dim: joint text-space dimension E (``Backbone.embed_dim``).
        output_size: RoIAlign grid per box (7, as SlowFast / Detectron); the grid is pooled to
            one vector, so it only sets how densely a box is sampled. Sampling is adaptive
            (``sampling_ratio=0``: about one sample per token or closer), so large boxes on big
            maps skip no token.
        pool: "avg" (keeps CLIP's token statistics; a whole-frame box gives the map's mean) or
            "max" (SlowFast).
        context: add the clip embedding to each box embedding (module docstring).
        temporal: "mean" (time-averaged map) or "transformer" (per-frame RoIs, temporal
            transformer over them); module docstring.
        prior: initial sigmoid output; ``logit_bias`` = log(prior / (1 - prior)).
        scale: initial logit scale (``exp(logit_scale)``).
        dropout: before the projection (SlowFast uses 0.5 on AVA with its linear head).
    """

    def __init__(self, width: int, embed_dim: int, output_size: int = 7, pool: str = "avg",
                 context: bool = True, prior: float = 0.02, scale: float = 10.0,
                 dropout: float = 0.0, temporal: str = "mean"):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"BoxHead pool must be 'avg' or 'max', got {pool!r}")
        if temporal not in get_args(Temporal):
            raise ValueError(f"BoxHead temporal must be one of {get_args(Temporal)}, got {temporal!r}")
        if not 0.0 < prior < 1.0:
            raise ValueError(f"BoxHead prior must be in (0, 1), got {prior}")
        self.output_size = int(output_size)
        self.pool = pool
        self.use_context = context
        self.temporal = TemporalTransformer(width) if temporal == "transformer" else None
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(width, embed_dim)
        # one-element vectors: FSDP 2 cannot shard a 0-d parameter
        self.context_weight = nn.Parameter(torch.tensor([1.0])) if context else None
        self.logit_scale = nn.Parameter(torch.tensor([math.log(scale)]))
        self.logit_bias = nn.Parameter(torch.tensor([math.log(prior / (1.0 - prior))]))

    def roi_features(self, token_map: torch.Tensor, boxes: torch.Tensor,
                     box_batch: torch.Tensor) -> torch.Tensor:
        """token_map [B, D, T, h, w], boxes [K, 4] x1y1x2y2 in [0, 1] of the frame,
        box_batch [K] (sample of each box) -> pooled RoI features [K, D] (float32)."""
        if token_map.ndim != 5:
            raise ValueError(f"token_map must be [B, D, T, h, w], got {tuple(token_map.shape)}")
        if boxes.ndim != 2 or boxes.shape[1] != 4 or box_batch.shape != boxes.shape[:1]:
            raise ValueError(f"boxes must be [K, 4] and box_batch [K], got "
                             f"{tuple(boxes.shape)} and {tuple(box_batch.shape)}")
        # float32 pooling: bf16 box coordinates would be off by ~1/20 of a token
        _, d, t, h, w = token_map.shape
        if self.temporal is None:
            fmap, index = token_map.float().mean(dim=2), box_batch  # [B, D, h, w]; see docstring
        else:  # every frame its own map: [B * T, D, h, w], the box repeated on each frame
            fmap = token_map.float().transpose(1, 2).flatten(0, 1)
            index = (box_batch[:, None] * t + torch.arange(t, device=box_batch.device)).flatten()
            boxes = boxes.repeat_interleave(t, dim=0)
        size = boxes.new_tensor([w, h, w, h], dtype=torch.float32)
        rois = torch.cat([index.to(fmap)[:, None], boxes.float() * size], dim=1)  # [K(T), 5]
        grid = roi_align(fmap, rois, self.output_size, spatial_scale=1.0, sampling_ratio=0,
                         aligned=True)  # [K(T), D, s, s]
        feats = grid.mean(dim=(-2, -1)) if self.pool == "avg" else grid.amax(dim=(-2, -1))
        if self.temporal is None:
            return feats
        return self.temporal(feats.view(-1, t, d).to(self.temporal.pos.dtype)).float()

    def forward(self, token_map: torch.Tensor, boxes: torch.Tensor, box_batch: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """token_map [B, D, T, h, w], boxes [K, 4] (normalised to the model's input frame),
        box_batch [K] long, context [B, E] (the clip embeddings from ``encode_video``; required
        when the head uses context, ignored otherwise) -> box embeddings [K, E] (unnormalised)."""
        feats = self.roi_features(token_map, boxes, box_batch)
        emb = F.normalize(self.proj(self.dropout(self.norm(feats.to(self.proj.weight.dtype)))),
                          dim=-1)
        if self.use_context:
            if context is None:
                raise ValueError("this BoxHead adds the clip context: pass context=[B, E]")
            ctx = F.normalize(context, dim=-1)[box_batch]
            emb = emb + self.context_weight * ctx.to(emb.dtype)
        return emb

    def logits(self, box_emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Box embeddings [K, E] x class embeddings [C, E] -> sigmoid logits [K, C]
        = exp(logit_scale) * cos + logit_bias, in float32: bf16 logits (resolution ~0.03 at
        -4) would tie many boxes' scores, and AP depends on how ties are broken."""
        with torch.autocast(box_emb.device.type, enabled=False):
            scale = self.logit_scale.float().exp()
            cos = F.normalize(box_emb.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()
            return scale * cos + self.logit_bias.float()

    def clamp_logit_scale(self) -> None:
        """Clamp ``logit_scale`` in place into [0, ln MAX_SCALE], after each optimizer step
        (``VideoCLIP.clamp_logit_scales``), as open_clip does; not in ``logits``, where a clamp
        would zero the gradient of a scale at its cap."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, math.log(MAX_SCALE))
