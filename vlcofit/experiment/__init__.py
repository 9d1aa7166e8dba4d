"""A config checked against the tasks, then built into what a run needs: the label space, the
model and the datasets.

:func:`load_experiment` and :func:`load_card` are the config layer's loaders with the checks
that need the task registry added. Training, evaluation and zero-shot all go through the build
functions, so every path sees the same label space, preprocessing and data.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import loading
from ..config.schema import DatasetCard, ExperimentConfig
from ..data.loading import build_loader
from ..errors import InputError
from ..models.backbones.base import Backbone
from ..models.video import VideoCLIP, build_model
from ..tasks import check_card, task_of
from ..text.hierarchy import read_hierarchy
from ..text.prompts import ClassList, LabelSpace, read_class_list, read_templates

logger = logging.getLogger(__name__)


def load_experiment(name_or_path: str | Path, overrides: list[str] | None = None
                    ) -> ExperimentConfig:
    """An experiment config (shipped name or path, ``--set`` overrides applied), every card
    checked against its task as well (:func:`vlcofit.config.loading.load_experiment`)."""
    return loading.load_experiment(name_or_path, overrides, task_check=check_card)


def load_card(name_or_path: str, overrides: dict | None = None,
              name: str | None = None) -> DatasetCard:
    """A dataset card checked against its task as well (:func:`vlcofit.config.loading.load_card`)."""
    return loading.load_card(name_or_path, overrides, name, task_check=check_card)


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
    or its coarse groups with ``granularity: coarse`` (:mod:`vlcofit.text.hierarchy`)."""
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


def create_model(cfg: ExperimentConfig) -> VideoCLIP:
    """The video model ``cfg`` trains, over its label space (as a run starts it, before
    ``model.init_from`` or a resume loads weights into it)."""
    return build_video_model(cfg, build_labels(cfg))


def build_video_model(cfg: ExperimentConfig, labels: LabelSetup) -> VideoCLIP:
    """The video model over the run's label space; with a box head if a dataset localises."""
    used = set(cfg.train.datasets + cfg.eval_datasets) or set(cfg.datasets)
    with_boxes = any(task_of(cfg.datasets[n]).uses_boxes for n in used)
    return build_model(cfg.model, labels.space.names, labels.row_templates, with_boxes=with_boxes)


def build_dataset(card: DatasetCard, split: str, classes: ClassList, backbone: Backbone,
                  train: bool, seed: int):
    """A dataset of ``card``'s ``split``, preprocessed for ``backbone`` (the card's task decides how)."""
    return task_of(card).dataset(card, split, classes, backbone, train, seed)


def eval_loaders(cfg: ExperimentConfig, labels: LabelSetup, backbone: Backbone) -> dict:
    """The loaders of ``cfg``'s evaluation datasets: ``cfg.eval``'s split and batch size, the
    videos in order (prepare them with the run's accelerator)."""
    return {n: build_loader(build_dataset(cfg.datasets[n], cfg.eval.split, labels.classes[n],
                                          backbone, train=False, seed=cfg.train.seed),
                            cfg.eval.batch_size, False, cfg.train.num_workers,
                            cfg.data.stall_timeout)
            for n in cfg.eval_datasets}


def evaluate_datasets(accelerator, model, loaders: dict, cfg: ExperimentConfig,
                      labels: LabelSetup, out_dir: Path | None) -> dict[str, float]:
    """Each evaluation dataset scored by its task's evaluator (``<dataset>/<metric>``);
    collective: every process calls it. ``out_dir``: per-class / per-query files (main
    process only)."""
    out: dict[str, float] = {}
    for name, loader in loaders.items():
        card = cfg.datasets[name]
        out.update(task_of(card).evaluate(
            accelerator, model, loader, card, labels.rows(name).to(accelerator.device),
            labels.classes[name], cfg.eval.split, out_dir, cfg.eval.max_batches))
    return out
