"""Localisation (AVA): person boxes on keyframes, several actions per person; each box pooled
from the patch-token map (box head) and scored against the action names, sigmoid multi-label
loss; the official AVA frame-mAP@0.5 with head / mid / tail breakdowns."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from ..config.schema import DatasetCard, TrainConfig
from ..data.localization import LocalizationDataset, evaluation_labelmap, train_instance_counts
from ..eval.localization import evaluate_localization
from ..models.backbones.base import Backbone
from ..models.losses import multilabel_loss
from ..text.prompts import ClassList
from .base import encoder_parameters, parameters_under


class LocalizationTask:
    name = "localization"
    uses_boxes = True
    single_label = False
    has_classes = True
    metrics = ("mAP", "mAP_head", "mAP_mid", "mAP_tail")

    def used_parameters(self, model) -> set[str]:
        """The box head scores against text with its own scale; it reads the clip embedding
        (temporal module) only as context."""
        image, text = encoder_parameters(model)
        if not model.box_head.use_context:
            image -= parameters_under(model, "temporal.")
        return image | text | parameters_under(model, "box_head.")

    def dataset(self, card: DatasetCard, split: str, classes: ClassList, backbone: Backbone,
                train: bool, seed: int):
        return LocalizationDataset(card, split, classes, backbone.image_size, train=train,
                                   seed=seed)

    def loss(self, model, batch: dict, rows: torch.Tensor, t: TrainConfig) -> torch.Tensor:
        boxes, box_batch = batch["boxes"], batch["box_batch"]
        logits = model(batch["video"], head=lambda m, emb, tokens: m.box_logits(
            tokens, boxes, box_batch, rows, context=emb))
        return multilabel_loss(logits.float(), batch["labels"], kind=t.box_loss)

    def evaluate(self, accelerator, model, loader, card: DatasetCard, rows: torch.Tensor,
                 classes: ClassList, split: str, out_dir: Path | None,
                 max_batches: int | None) -> dict[str, float]:
        spec, root = card.localization, Path(card.root)
        labelmap = evaluation_labelmap(card, classes)
        exclusions = getattr(spec, f"exclusions_{split}", None)
        counts = _train_counts(card, classes) if card.train else None
        return evaluate_localization(
            accelerator, model, loader, card.name, rows, classes, root / card.split_file(split),
            labelmap, exclusions_path=root / exclusions if exclusions else None, out_dir=out_dir,
            train_counts=counts, thresholds=tuple(spec.head_mid_tail), max_batches=max_batches,
            protocol=spec.eval_protocol)


@lru_cache(maxsize=8)
def _train_counts(card: DatasetCard, classes: ClassList):
    """Training instances per class, read once per run, not at every periodic evaluation."""
    return train_instance_counts(card, classes)
