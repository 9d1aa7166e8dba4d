"""Captions: videos paired with free-text sentences (MSR-VTT, WebVid). Training: CLIP's symmetric
contrastive loss (SigLIP's pairwise sigmoid loss for a sigmoid model) between the batch's video embeddings and one caption per video, negatives
gathered from every process; evaluation: text->video and video->text retrieval (Recall@1/5/10,
median and mean rank). No prompt file and no label-space rows: the text tower and the logit
scale are what captions share with the classification and localisation datasets of a mixture.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..config.schema import DatasetCard, TrainConfig
from ..data.captions import CaptionDataset, read_caption_records
from ..eval.retrieval import evaluate_retrieval
from ..models.backbones.base import Backbone
from ..models.losses import contrastive_loss
from ..text.prompts import ClassList
from .base import encoder_parameters
from .classification import clip_transform


class CaptionsTask:
    name = "captions"
    uses_boxes = False
    single_label = False
    has_classes = False
    metrics = ("t2v_R1", "t2v_R5", "t2v_R10", "v2t_R1")

    def used_parameters(self, model) -> set[str]:
        """Image tower + temporal module, the logit scale (and bias, for the sigmoid loss: the
        softmax one never reads it), the text tower if it trains."""
        image, text = encoder_parameters(model)
        return image | text | {"logit_scale"} | ({"logit_bias"} if model.sigmoid else set())

    def dataset(self, card: DatasetCard, split: str, classes: ClassList, backbone: Backbone,
                train: bool, seed: int) -> CaptionDataset:
        return CaptionDataset(read_caption_records(card, split), card,
                              clip_transform(card, backbone, train), train=train, seed=seed)

    def loss(self, model, batch: dict, rows: torch.Tensor, t: TrainConfig) -> torch.Tensor:
        captions = batch["caption"]
        video, text, scale, bias = model(batch["video"], head=lambda m, emb, tokens: (
            emb, encode_captions(m, captions), m.logit_scale.exp(),
            m.logit_bias if m.sigmoid else None))
        return contrastive_loss(video, text, scale, bias)

    def evaluate(self, accelerator, model, loader, card: DatasetCard, rows: torch.Tensor,
                 classes: ClassList, split: str, out_dir: Path | None,
                 max_batches: int | None) -> dict[str, float]:
        return evaluate_retrieval(accelerator, model, loader, card.name, card.root,
                                  out_dir=out_dir, max_batches=max_batches,
                                  protocol=card.retrieval_protocol)


def encode_captions(model, captions: Sequence[str]) -> torch.Tensor:
    """B captions -> unit text embeddings [B, E]; with gradients only if the text tower trains
    (a frozen tower keeps no activations for a backward that cannot reach it)."""
    tokens = model.backbone.tokenize(list(captions)).to(model.logit_scale.device)
    with torch.set_grad_enabled(model.train_text and torch.is_grad_enabled()):
        return F.normalize(model.backbone.encode_text(tokens), dim=-1)
