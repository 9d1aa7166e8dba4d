"""Config value checks, declared once: the range of every numeric field (``RANGES``) and the
values of every choice field (``CHOICES``), and where a bad value came from (the YAML file and
field, or the ``--set`` item that set it) for the error message."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .errors import InputError
from .schema import (DataConfig, DatasetCard, EvalConfig, LocalizationSpec, ModelConfig,
                     SweepConfig, TrainConfig)


@dataclass(frozen=True)
class Bound:
    """A numeric range; ``None``: unbounded on that side; ``open_*``: that end excluded."""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        if value != value:  # NaN
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        return (f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.open_high else ']'}")


AT_LEAST_1 = Bound(1)
NON_NEGATIVE = Bound(0)
POSITIVE = Bound(0, open_low=True)
UNIT = Bound(0, 1)

# The range of every numeric field (None values, where allowed, are not checked; tuple fields:
# each item; dict fields: each value). The dict-valued train.weights / loss_weights /
# step_budgets are checked per dataset by vlcofit.mixture.check_mixture.
RANGES: dict[type, dict[str, Bound]] = {
    ModelConfig: {"temporal_layers": NON_NEGATIVE, "reinit_last": NON_NEGATIVE},
    DatasetCard: {"num_classes": AT_LEAST_1, "num_frames": AT_LEAST_1, "frame_stride": AT_LEAST_1,
                  "test_clips": AT_LEAST_1, "min_crop_scale": Bound(0, 1, open_low=True)},
    LocalizationSpec: {"fps": POSITIVE, "first_frame_time": NON_NEGATIVE,
                       "keyframe_range": NON_NEGATIVE, "person_score_threshold": UNIT,
                       "train_proposal_iou": UNIT, "head_mid_tail": NON_NEGATIVE},
    TrainConfig: {
        "temperature": POSITIVE, "steps": AT_LEAST_1, "batch_size": AT_LEAST_1,
        "grad_accum": AT_LEAST_1, "lr": NON_NEGATIVE, "lr_new": NON_NEGATIVE,
        "weight_decay": NON_NEGATIVE, "layer_decay": Bound(0, 1, open_low=True),
        "lr_mults": POSITIVE, "wd_mults": POSITIVE, "l2sp_mults": POSITIVE, "l2sp": NON_NEGATIVE,
        "warmup_steps": NON_NEGATIVE, "clip_grad": NON_NEGATIVE,
        "label_smoothing": Bound(0, 1, open_high=True), "seed": NON_NEGATIVE,
        "num_workers": NON_NEGATIVE, "log_every": AT_LEAST_1, "eval_every": NON_NEGATIVE,
        "save_every": AT_LEAST_1, "keep_checkpoints": NON_NEGATIVE, "max_bad_fraction": UNIT,
        "fit_max_per_class": AT_LEAST_1, "collective_timeout": POSITIVE},
    DataConfig: {"stall_timeout": POSITIVE},
    EvalConfig: {"batch_size": AT_LEAST_1, "max_batches": AT_LEAST_1},
    SweepConfig: {"seeds": NON_NEGATIVE, "few_shot_k": AT_LEAST_1},
}


def _mixture_choices(key: str) -> Callable[[], tuple[str, ...]]:
    def choices() -> tuple[str, ...]:
        from . import mixture  # builds on this module
        return getattr(mixture, key)
    return choices


def _tasks() -> tuple[str, ...]:
    from .tasks import TASKS  # the task registry is the one list of task names
    return tuple(TASKS)


def _protocols() -> tuple[str, ...]:
    from .metrics.ava import PROTOCOLS
    return tuple(PROTOCOLS)


def _retrieval_protocols() -> tuple[str, ...]:
    from .metrics.retrieval import PROTOCOLS
    return tuple(PROTOCOLS)


def _trackers() -> tuple[str, ...]:
    from .trackers import TRACKERS
    return TRACKERS


def _decoders() -> tuple[str, ...]:
    from .data.video import BACKENDS  # imports torch: only when a card names a decoder
    return BACKENDS


def _media() -> tuple[str, ...]:
    from .data.localization import MEDIA
    return MEDIA


# The values of every choice field (a tuple, or a function giving one where the list lives in a
# module that imports torch).
CHOICES: dict[type, dict[str, tuple | Callable[[], tuple]]] = {
    ModelConfig: {"backbone": ("open_clip", "hf"), "temporal": ("mean", "transformer"),
                  "box_temporal": ("mean", "transformer"), "head": ("text", "linear"),
                  "loss": ("auto", "softmax", "sigmoid")},
    DatasetCard: {"task": _tasks, "granularity": ("fine", "coarse"),
                  "sampling": ("tsn", "dense"), "test_crops": (1, 3),
                  "decoder": _decoders, "retrieval_protocol": _retrieval_protocols},
    LocalizationSpec: {"media": _media, "eval_protocol": _protocols},
    TrainConfig: {"sampling": _mixture_choices("SAMPLING"),
                  "schedule": _mixture_choices("SCHEDULES"),
                  "mixed_precision": ("no", "bf16", "fp16"), "box_loss": ("bce", "focal"),
                  "trackers": _trackers},
    EvalConfig: {"split": ("train", "val", "test")},
}


def check_value(cls: type, name: str, value: Any, key: str, source: Source) -> None:
    """``value`` of field ``name`` of ``cls`` (at dotted ``key``) against RANGES and CHOICES."""
    choices = CHOICES.get(cls, {}).get(name)
    if choices is not None:
        options = choices() if callable(choices) else choices
        for i, item in enumerate(value if isinstance(value, tuple) else (value,)):  # lists: each
            if item not in options:
                fail(source, key, f"must be one of {', '.join(map(str, options))}; got {item!r}",
                     item=i if isinstance(value, tuple) else None)
    bound = RANGES.get(cls, {}).get(name)
    if bound is None or value is None:
        return
    if isinstance(value, dict):  # {name: number}: each value
        for name, item in value.items():
            if item not in bound:
                fail(source, key, f"must be {bound}, got {item!r}", item=repr(name))
        return
    for i, item in enumerate(value if isinstance(value, tuple) else (value,)):
        if item not in bound:
            fail(source, key, f"must be {bound}, got {item!r}",
                  item=i if isinstance(value, tuple) else None)


# --------------------------------------------------------------------------- sources

# Where a config value came from, for messages: ``source(key, blame=None)`` -> (who, shown).
# ``who`` is a file or a ``--set ITEM``; ``shown`` is the dotted ``key`` as written there;
# ``blame`` (default ``key``) is the key whose origin decides ``who`` (an unknown key is reported
# at its section, but blamed on whoever wrote the key).
Source = Callable[..., tuple[str, str]]


def file_source(file: str) -> Source:
    return lambda key, blame=None: (file, key)


def set_source(base: Source, items: Sequence[str]) -> Source:
    """Keys set by ``--set`` items (or in or above what an item set) name the item, the last one
    winning; the others are ``base``'s."""
    sets = [(item.partition("=")[0], item) for item in items]

    def source(key: str, blame: str | None = None) -> tuple[str, str]:
        b = blame or key
        for set_key, item in reversed(sets):
            if b == set_key or b.startswith(set_key + ".") or set_key.startswith(b + "."):
                return f"--set {item}", key
        return base(key, blame)
    return source


def sub_source(parent: Source, prefix: str, own: Source | None = None,
                overridden: Sequence[str] = ()) -> Source:
    """Keys of a sub-config (a card at ``datasets.NAME``): those in ``overridden`` (or all,
    without ``own``) are ``parent``'s, under ``prefix``; the others ``own``'s (the card file)."""
    def source(key: str, blame: str | None = None) -> tuple[str, str]:
        b = blame or key
        if own is not None and not any(b == k or b.startswith(f"{k}.") or k.startswith(f"{b}.")
                                       for k in overridden):
            return own(key, blame)
        return parent(f"{prefix}.{key}" if key else prefix, f"{prefix}.{b}" if b else prefix)
    return source


def origin(source: Source, key: str, blame: str | None = None) -> str:
    """``file.key`` (or ``file`` at the top), ``--set ITEM: key``: the prefix of type errors."""
    who, shown = source(key, blame)
    if not shown:
        return who
    return f"{who}: {shown}" if who.startswith("--set ") else f"{who}.{shown}"


def fail(source: Source, key: str, problem: str, item: int | str | None = None) -> typing.NoReturn:
    """``file: key problem`` or ``--set ITEM: key problem`` (``key[item]``: a list's item)."""
    who, shown = source(key)
    raise InputError(f"{who}: {shown}{'' if item is None else f'[{item}]'} {problem}")
