"""Tasks: what a dataset card's ``task`` decides, in one place — the dataset and its collate
function, the parameters and head it trains, its loss and its evaluator. One module per task,
each implementing :class:`vlcofit.tasks.base.Task`; ``TASKS`` is the one list of task names, and
nothing outside this package branches on a task name (it asks the card's task instead).
"""
from __future__ import annotations

from ..config.checks import Source, fail
from ..config.schema import DatasetCard
from ..errors import InputError
from .base import Task
from .captions import CaptionsTask
from .classification import ClassificationTask
from .localization import LocalizationTask

TASKS: dict[str, Task] = {t.name: t for t in (ClassificationTask(), LocalizationTask(),
                                              CaptionsTask())}


def headline_metrics(cfg) -> list[str]:
    """Each evaluation dataset's headline metric key (top-1, mAP, ...)."""
    return [f"{n}/{task_of(cfg.datasets[n]).metrics[0]}" for n in cfg.eval_datasets]


def task_of(card: DatasetCard) -> Task:
    """The task object of a dataset card."""
    try:
        return TASKS[card.task]
    except KeyError:
        raise InputError(f"dataset {card.name}: unknown task {card.task!r} "
                         f"({', '.join(TASKS)})") from None


def check_card(card: DatasetCard, source: Source) -> None:
    """The card checks that need its task (``config.loading``'s ``task_check``): a task with
    classes needs a prompt file, one without has none; only single-label tasks map classes to
    coarse groups. ``source`` names the file or ``--set`` item of each key."""
    task = task_of(card)
    if task.has_classes and not card.prompts:
        who, _ = source("prompts")
        raise InputError(f"{who}: `prompts` (the class-name prompt file) is required")
    if not task.has_classes:
        for key in ("prompts", "num_classes"):
            if getattr(card, key):
                fail(source, key, f"is set, but a {card.task} dataset has no classes (its "
                                  "captions are free text): remove it")
    if card.coarse and not task.single_label:
        fail(source, "coarse", f"maps classes of single-label clip datasets; a {card.task} "
                               "dataset has none to map")
