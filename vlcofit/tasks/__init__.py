"""Tasks: what a dataset card's ``task`` decides, in one place — the dataset and its collate
function, the parameters and head it trains, its loss and its evaluator. One module per task,
each implementing :class:`vlcofit.tasks.base.Task`; ``TASKS`` is the one list of task names, and
nothing outside this package branches on a task name (it asks the card's task instead).
"""
from __future__ import annotations

from ..config import DatasetCard
from ..errors import InputError
from .base import Task
from .captions import CaptionsTask
from .classification import ClassificationTask
from .localization import LocalizationTask

TASKS: dict[str, Task] = {t.name: t for t in (ClassificationTask(), LocalizationTask(),
                                              CaptionsTask())}


def plotted_metrics(cfg) -> list[str]:
    """``<dataset>/<metric>`` keys worth a plot for ``cfg``'s evaluation datasets."""
    return [f"{n}/{m}" for n in cfg.eval_datasets for m in task_of(cfg.datasets[n]).metrics]


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
