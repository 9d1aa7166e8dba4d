"""What every task implements (``Task``), and parameter sets the tasks share."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from ..config.schema import DatasetCard, TrainConfig
from ..models.backbones.base import Backbone
from ..text.prompts import ClassList


class Task(Protocol):
    """A task (``card.task``) decides, in one place, everything that differs between tasks."""

    name: str  # the value of ``task:`` in a dataset card
    uses_boxes: bool  # the model needs its box head for this task
    single_label: bool  # one class per clip (K-shot splits can be drawn per class)
    # the card names its classes (a prompt file, rows of the run's label space); False: free
    # text (captions) — no prompt file, no templates, no label-space rows
    has_classes: bool
    metrics: tuple[str, ...]  # the metrics worth a plot (``<dataset>/<metric>``); first: headline

    def dataset(self, card: DatasetCard, split: str, classes: ClassList, backbone: Backbone,
                train: bool, seed: int) -> Any:
        """The dataset of ``card``'s ``split``, preprocessed for ``backbone`` (``classes``: the
        card's classes; empty when the task has none); its ``collate`` batches its items."""

    def used_parameters(self, model) -> set[str]:
        """Names of the parameters this task's loss gives gradients to (DDP must know)."""

    def loss(self, model, batch: dict, rows: torch.Tensor, t: TrainConfig) -> torch.Tensor:
        """The training loss of one batch (``rows``: the dataset's label-space rows [C], empty
        without classes); ``model`` may be DDP-wrapped: call it, through
        ``model(video, head=...)``, so gradients are synchronised."""

    def evaluate(self, accelerator, model, loader, card: DatasetCard, rows: torch.Tensor,
                 classes: ClassList, split: str, out_dir: Path | None,
                 max_batches: int | None) -> dict[str, float]:
        """``{"<dataset>/<metric>": value}``; collective (every process calls it)."""


def encoder_parameters(model) -> tuple[set[str], set[str]]:
    """Parameter names of (image tower + temporal module, text tower); the text tower's set is
    empty unless it trains."""
    text_ids = {id(p) for p in model.backbone.text_parameters()}
    image, text = set(), set()
    for n, p in model.named_parameters():
        if n.startswith("backbone."):
            (text if id(p) in text_ids else image).add(n)
        elif n.startswith("temporal."):
            image.add(n)
    return image, text if model.train_text else set()


def parameters_under(model, prefix: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}
