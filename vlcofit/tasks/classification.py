"""Classification: one label per clip; the clip embedding scored against the dataset's class
names (softmax cross-entropy over its label-space rows, or SigLIP's sigmoid loss); top-1 / top-5 / mean-class accuracy."""
from __future__ import annotations

from pathlib import Path

import torch

from ..config.schema import DatasetCard, TrainConfig
from ..data.annotations import granular_records
from ..data.classification import ClassificationDataset
from ..data.transforms import build_transform
from ..eval.classification import evaluate_classification
from ..models.backbones.base import Backbone
from ..models.losses import label_loss
from ..text.hierarchy import coarse_view
from ..text.prompts import ClassList
from .base import encoder_parameters, parameters_under


class ClassificationTask:
    name = "classification"
    uses_boxes = False
    single_label = True
    has_classes = True
    metrics = ("top1",)

    def used_parameters(self, model) -> set[str]:
        """Names of the parameters this task's loss gives gradients to (DDP needs to know)."""
        image, text = encoder_parameters(model)
        if model.linear is not None:  # the linear head reads neither text nor the logit scale
            return image | parameters_under(model, "linear.")
        return image | text | model.score_parameter_names()

    def dataset(self, card: DatasetCard, split: str, classes: ClassList, backbone: Backbone,
                train: bool, seed: int) -> ClassificationDataset:
        return ClassificationDataset(granular_records(card, split, classes), card,
                                     clip_transform(card, backbone, train), train=train,
                                     seed=seed)

    def loss(self, model, batch: dict, rows: torch.Tensor, t: TrainConfig) -> torch.Tensor:
        logits, sigmoid = model(batch["video"], head=lambda m, emb, tokens: (
            m.classify(emb, rows), m.sigmoid))
        return label_loss(logits, batch["label"], sigmoid, t.label_smoothing)

    def evaluate(self, accelerator, model, loader, card: DatasetCard, rows: torch.Tensor,
                 classes: ClassList, split: str, out_dir: Path | None,
                 max_batches: int | None) -> dict[str, float]:
        return evaluate_classification(accelerator, model, loader, card.name, rows, classes,
                                       out_dir=out_dir, max_batches=max_batches,
                                       coarse=coarse_view(card))


def clip_transform(card: DatasetCard, backbone: Backbone, train: bool):
    """The frame transform of a clip dataset (classification, captions): the card's crops and
    flips at the backbone's resolution (uint8 out: the model normalises)."""
    return build_transform(train, backbone.image_size,
                           crops=1 if train else card.test_crops, flip=card.hflip,
                           scale=(card.min_crop_scale, 1.0))
