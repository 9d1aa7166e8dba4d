"""The video model: CLIP image tower per frame -> temporal module -> video embedding, scored
against rows of one text-embedding label space (or a random-init linear head, for comparison).
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .backbones import Backbone, build_backbone
from .temporal import build_temporal
from .text import class_embeddings

logger = logging.getLogger(__name__)


class VideoCLIP(nn.Module):
    """Video encoder + text classifier over a label space.

    ``class_names[i]`` / ``class_templates[i]`` define label-space row i; a dataset's classes
    are a list of rows. With a frozen text tower the class matrix is computed once and cached
    (not saved: it is a function of the saved text tower).
    """

    def __init__(self, backbone: Backbone, cfg: ModelConfig, class_names: Sequence[str],
                 class_templates: Sequence[Sequence[str]]):
        super().__init__()
        self.backbone = backbone
        self.temporal = build_temporal(cfg.temporal, backbone.embed_dim, cfg.temporal_layers)
        self.logit_scale = nn.Parameter(torch.tensor(float(backbone.logit_scale_init)))
        self.train_text = cfg.train_text
        self.class_names = list(class_names)
        self.class_templates = [tuple(t) for t in class_templates]
        self.linear = nn.Linear(backbone.embed_dim, len(class_names)) if cfg.head == "linear" else None
        self.box_head: nn.Module | None = None  # set by build_model for localisation runs
        for p in backbone.text_parameters():
            p.requires_grad_(cfg.train_text)
        # A plain attribute, not a buffer: DDP would broadcast it, checkpoints would store it.
        self._text_cache: torch.Tensor | None = None

    # ------------------------------------------------------------------ parameters

    def new_parameter_names(self) -> set[str]:
        """Parameters not from the pretrained CLIP: they get ``train.lr_new``."""
        return {n for n, _ in self.named_parameters() if not n.startswith("backbone.")}

    # ------------------------------------------------------------------ video

    def encode_video(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, 3, H, W] -> (video embedding [B, E], patch-token map [B, D, T, h, w])."""
        b, t = video.shape[:2]
        pooled, tokens = self.backbone.encode_frames(video.flatten(0, 1))
        emb = self.temporal(pooled.reshape(b, t, -1))
        grid = int(math.isqrt(tokens.shape[1]))
        token_map = tokens.reshape(b, t, grid, grid, -1).permute(0, 4, 1, 2, 3)
        return emb, token_map

    # ------------------------------------------------------------------ text

    def embed_texts(self, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Any class names -> [C, E] (zero-shot with new labels). No gradient."""
        with torch.no_grad():
            return class_embeddings(self.backbone, names, templates)

    def class_matrix(self) -> torch.Tensor:
        """Label-space class embeddings [C, E], recomputed each call only if the text tower trains."""
        if self.train_text and self.training:
            return self._encode_label_space()
        if self._text_cache is None or self._text_cache.device != self.logit_scale.device:
            with torch.no_grad(), torch.autocast(self.logit_scale.device.type, enabled=False):
                self._text_cache = self._encode_label_space().float()
        return self._text_cache

    def refresh_text_cache(self) -> None:
        """Forget cached class embeddings (after loading weights or a training step of the text tower)."""
        self._text_cache = None

    def _encode_label_space(self) -> torch.Tensor:
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, templates in enumerate(self.class_templates):
            groups.setdefault(templates, []).append(row)
        out = None
        for templates, rows in groups.items():
            emb = class_embeddings(self.backbone, [self.class_names[r] for r in rows], templates)
            if out is None:
                out = emb.new_zeros(len(self.class_names), emb.shape[1])
            out = out.index_copy(0, torch.tensor(rows, device=emb.device), emb)
        return out

    # ------------------------------------------------------------------ scoring

    def score(self, emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Embeddings [B, E] x class embeddings [C, E] -> logits [B, C] = scale * cos."""
        scale = self.logit_scale.exp().clamp(max=100.0)
        return scale * F.normalize(emb, dim=-1) @ text.to(emb.dtype).t()

    def classify(self, emb: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Video embeddings [B, E] -> logits [B, C] over label-space ``rows`` (all if None)."""
        if self.linear is not None:
            logits = self.linear(emb)
            return logits if rows is None else logits[:, rows]
        text = self.class_matrix()
        return self.score(emb, text if rows is None else text[rows])

    def box_logits(self, token_map: torch.Tensor, boxes: torch.Tensor, box_batch: torch.Tensor,
                   rows: torch.Tensor | None = None, text: torch.Tensor | None = None,
                   context: torch.Tensor | None = None) -> torch.Tensor:
        """Person boxes [K, 4] (normalised; sample index ``box_batch`` [K]) pooled from the token
        map [B, D, T, h, w] (plus the clip embeddings ``context`` [B, E]) -> multi-label logits
        [K, C] against label-space ``rows`` (or any class embeddings ``text`` [C, E])."""
        if self.box_head is None:
            raise RuntimeError("this model has no box head (no localisation dataset in its config)")
        if text is None:
            text = self.class_matrix()
            text = text if rows is None else text[rows]
        return self.box_head.logits(self.box_head(token_map, boxes, box_batch, context), text)

    def forward(self, video: torch.Tensor, rows: torch.Tensor | None = None,
                boxes: torch.Tensor | None = None, box_batch: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, 3, H, W] -> clip logits [B, C]; with ``boxes`` [K, 4], box logits [K, C]."""
        emb, token_map = self.encode_video(video)
        if boxes is None:
            return self.classify(emb, rows)
        return self.box_logits(token_map, boxes, box_batch, rows, context=emb)


def build_model(cfg: ModelConfig, class_names: Sequence[str],
                class_templates: Sequence[Sequence[str]], with_boxes: bool = False) -> VideoCLIP:
    model = VideoCLIP(build_backbone(cfg), cfg, class_names, class_templates)
    if with_boxes:
        from .boxes import BoxHead
        model.box_head = BoxHead(model.backbone.width, model.backbone.embed_dim,
                                 temporal=cfg.box_temporal)
    return model
