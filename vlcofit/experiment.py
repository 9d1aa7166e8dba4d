"""Build what a run needs from its config: the label space, the model, datasets and loaders.

Training, evaluation and zero-shot all go through these functions, so every path sees the same
label space, preprocessing and data.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from .config import DatasetCard, ExperimentConfig
from .schema import DataConfig
from .data.loading import make_loader
from .data.sampling import EpochBatches
from .errors import InputError
from .hierarchy import read_hierarchy
from .models.backbones import Backbone
from .models.video import VideoCLIP, build_model
from .prompts import ClassList, LabelSpace, read_class_list, read_templates
from .tasks import task_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelSetup:
    """The union label space of a run and each dataset's classes."""
    space: LabelSpace
    classes: dict[str, ClassList]
    templates: dict[str, tuple[str, ...]]
    row_templates: tuple[tuple[str, ...], ...]  # templates used for each label-space row

    def rows(self, dataset: str) -> torch.Tensor:
        return torch.tensor(self.space.index[dataset], dtype=torch.long)

    def to_dict(self) -> dict:
        return {"label_space": self.space.to_dict(),
                "templates": {name: list(t) for name, t in self.templates.items()}}


def read_card_classes(card: DatasetCard) -> ClassList:
    """The card's classes: its prompt file (checked against the card's declared class count),
    or its coarse groups with ``granularity: coarse`` (:mod:`vlcofit.hierarchy`)."""
    classes = read_class_list(card.prompts)
    if card.num_classes is not None and card.num_classes != len(classes):
        raise InputError(f"dataset {card.name}: the card says num_classes={card.num_classes} but "
                         f"{classes.path} lists {len(classes)} classes")
    if card.coarse:  # read, and so checked, before training, not at the first evaluation
        hierarchy = read_hierarchy(card)
        return hierarchy.coarse if card.granularity == "coarse" else classes
    return classes


def build_labels(cfg: ExperimentConfig) -> LabelSetup:
    """One label space over every dataset of the run (a class two datasets share is one row).

    A dataset whose task has no classes (captions) reads no prompt or template file: its class
    list is empty, so it has no rows (``rows(name)`` is empty) and adds none."""
    names = list(dict.fromkeys(cfg.train.datasets + cfg.eval_datasets)) or list(cfg.datasets)
    named = [n for n in names if task_of(cfg.datasets[n]).has_classes]
    classes = {n: read_card_classes(cfg.datasets[n]) if n in named
               else ClassList((), (), f"dataset {n} ({cfg.datasets[n].task}: no classes)")
               for n in names}
    templates = {n: read_templates(cfg.datasets[n].templates) if n in named else ()
                 for n in names}
    space = LabelSpace.union(classes)
    row_templates: list[tuple[str, ...] | None] = [None] * len(space.names)
    for name in names:  # a shared row keeps the templates of the first dataset naming it
        for row in space.index[name]:
            row_templates[row] = row_templates[row] or templates[name]
    return LabelSetup(space, classes, templates, tuple(row_templates))


def build_video_model(cfg: ExperimentConfig, labels: LabelSetup) -> VideoCLIP:
    """The video model over the run's label space; with a box head if a dataset localises."""
    used = set(cfg.train.datasets + cfg.eval_datasets) or set(cfg.datasets)
    with_boxes = any(task_of(cfg.datasets[n]).uses_boxes for n in used)
    return build_model(cfg.model, labels.space.names, labels.row_templates, with_boxes=with_boxes)


def build_dataset(card: DatasetCard, split: str, classes: ClassList, backbone: Backbone,
                  train: bool, seed: int):
    """A dataset of ``card``'s ``split``, preprocessed for ``backbone`` (the card's task decides how)."""
    return task_of(card).dataset(card, split, classes, backbone, train, seed)


def build_loader(dataset, batch_size: int, train: bool, num_workers: int,
                 stall_timeout: float = DataConfig.stall_timeout) -> DataLoader:
    """Evaluation: the records in order, the last batch partial. Training: endless seeded epochs
    (:class:`~vlcofit.data.sampling.EpochBatches`, one iterator for the whole run), seeded from
    torch's initial seed (``train.seed``), as Accelerate's seedable sampler was. Workers are
    fork-safe and a stall is an error (:mod:`vlcofit.data.loading`)."""
    common = dict(num_workers=num_workers, stall_timeout=stall_timeout,
                  collate_fn=task_of(dataset.card).collate)
    if not train:
        return make_loader(dataset, batch_size=batch_size, **common)
    sampler = EpochBatches(len(dataset), batch_size, torch.random.initial_seed())
    return make_loader(dataset, batch_sampler=sampler, **common)
