"""Tasks: what a dataset card's ``task`` decides, in one place — the dataset class, its collate
function, the head and loss used in training, and the evaluator.

Classification: the clip head (softmax cross-entropy over the dataset's label-space rows),
accuracy metrics. Localisation: the box head (sigmoid, multi-label), AVA frame-mAP.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import DatasetCard, TrainConfig
from .data.classification import ClassificationDataset, collate, read_records
from .data.transforms import build_transform
from .errors import InputError
from .evaluate import evaluate_classification
from .models.backbones import Backbone
from .prompts import ClassList


def _parts(model) -> tuple[set[str], set[str]]:
    """Parameter names of (image tower + temporal module, text tower)."""
    text_ids = {id(p) for p in model.backbone.text_parameters()}
    image, text = set(), set()
    for n, p in model.named_parameters():
        if n.startswith("backbone."):
            (text if id(p) in text_ids else image).add(n)
        elif n.startswith("temporal."):
            image.add(n)
    return image, text if model.train_text else set()


def _under(model, prefix: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


class ClassificationTask:
    name = "classification"
    collate = staticmethod(collate)
    uses_boxes = False  # needs the model's box head

    def used_parameters(self, model) -> set[str]:
        """Names of the parameters this task's loss gives gradients to (DDP needs to know)."""
        image, text = _parts(model)
        if model.linear is not None:  # the linear head reads neither text nor the logit scale
            return image | _under(model, "linear.")
        return image | text | {"logit_scale"}

    def dataset(self, card: DatasetCard, split: str, classes: ClassList, backbone: Backbone,
                train: bool, seed: int) -> ClassificationDataset:
        transform = build_transform(train, backbone.image_size, backbone.mean, backbone.std,
                                    crops=1 if train else card.test_crops, flip=card.hflip,
                                    scale=(card.min_crop_scale, 1.0))
        return ClassificationDataset(read_records(card, split, classes), card, transform,
                                     train=train, seed=seed)

    def loss(self, model, batch: dict, rows: torch.Tensor, t: TrainConfig) -> torch.Tensor:
        logits = model(batch["video"], rows)
        return F.cross_entropy(logits.float(), batch["label"], label_smoothing=t.label_smoothing)

    def evaluate(self, accelerator, model, loader, card: DatasetCard, rows: torch.Tensor,
                 classes: ClassList, split: str, out_dir: Path | None,
                 max_batches: int | None) -> dict[str, float]:
        return evaluate_classification(accelerator, model, loader, card.name, rows, classes,
                                       out_dir=out_dir, max_batches=max_batches)


class LocalizationTask:
    name = "localization"
    uses_boxes = True

    def used_parameters(self, model) -> set[str]:
        """The box head scores against text with its own scale; it reads the clip embedding
        (temporal module) only as context."""
        image, text = _parts(model)
        if not model.box_head.use_context:
            image -= _under(model, "temporal.")
        return image | text | _under(model, "box_head.")

    @staticmethod
    def collate(batch):
        from .data.localization import collate_boxes
        return collate_boxes(batch)

    def dataset(self, card: DatasetCard, split: str, classes: ClassList, backbone: Backbone,
                train: bool, seed: int):
        from .data.localization import LocalizationDataset
        return LocalizationDataset(card, split, classes, backbone.image_size, backbone.mean,
                                   backbone.std, train=train, seed=seed)

    def loss(self, model, batch: dict, rows: torch.Tensor, t: TrainConfig) -> torch.Tensor:
        from .losses import multilabel_loss
        logits = model(batch["video"], rows, boxes=batch["boxes"], box_batch=batch["box_batch"])
        return multilabel_loss(logits.float(), batch["labels"], kind=t.box_loss)

    def evaluate(self, accelerator, model, loader, card: DatasetCard, rows: torch.Tensor,
                 classes: ClassList, split: str, out_dir: Path | None,
                 max_batches: int | None) -> dict[str, float]:
        from .data.localization import evaluation_labelmap
        from .eval_localization import evaluate_localization
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
    from .data.localization import train_instance_counts
    return train_instance_counts(card, classes)


TASKS = {"classification": ClassificationTask(), "localization": LocalizationTask()}


def task_of(card: DatasetCard):
    """The task object of a dataset card."""
    try:
        return TASKS[card.task]
    except KeyError:
        raise InputError(f"dataset {card.name}: unknown task {card.task!r}") from None
