"""Config value checks: the range of every numeric field (``RANGES``, declared once), the
values of every choice field (read from its ``Literal`` in :mod:`vlcofit.config.schema`), the
checks that need no model (mixtures, freeze specs), and where a bad value came from (the YAML
file and field, or the ``--set`` item that set it) for the error message."""
from __future__ import annotations

import functools
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import InputError
from .schema import (DataConfig, DatasetCard, EvalConfig, ExperimentConfig, LocalizationSpec,
                     ModelConfig, SweepConfig, TrainConfig)


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
# step_budgets are checked per dataset by vlcofit.data.mixture.check_mixture.
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


def choices(cls: type, name: str) -> tuple | None:
    """The values field ``name`` of ``cls`` may take (its ``Literal`` annotation, also as the
    item type of a tuple or inside ``| None``); None: any value of its type."""
    tp = _hints(cls)[name]
    for _ in range(2):
        origin = typing.get_origin(tp)
        if origin is typing.Literal:
            return typing.get_args(tp)
        if origin is tuple:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return None
    return typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_value(cls: type, name: str, value: Any, key: str, source: Source) -> None:
    """``value`` of field ``name`` of ``cls`` (at dotted ``key``) against RANGES and the
    field's choices (its ``Literal``)."""
    options = choices(cls, name)
    if options is not None:
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
# A check of a card that needs its task (the task registry sits above the config layer)
CardCheck = Callable[[DatasetCard, Source], None]


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


# "word:integer" is always a block spec: parameter names hold no ':' (they are dotted), so
# read as a regex it could match nothing; a bad tower or N is then an error saying so.
_BLOCK_SPEC = re.compile(r"([A-Za-z_]\w*):([+-]?\d+)")


def freeze_block(spec: str) -> tuple[str, int] | None:
    """(tower, N) of a ``train.freeze`` item of the TOWER:N form; None: a regex (checked to
    compile). Needs no model (the config checks it too); the tower is checked by
    :func:`apply_freeze`, against the towers the backbone declares."""
    found = _BLOCK_SPEC.fullmatch(spec)
    if found is not None:
        n = int(found.group(2))
        if n < 0:
            raise InputError(f"train.freeze: {spec!r}: N must be >= 0 (TOWER:N freezes the "
                             f"tower's embeddings and its first N blocks; 0: the embeddings)")
        return found.group(1), n
    try:
        re.compile(spec)
    except re.error as err:
        raise InputError(f"train.freeze: {spec!r} is neither TOWER:N (image:4, text:12) "
                         f"nor a regular expression ({err})") from None
    return None


def check_mixture(cfg: ExperimentConfig, where: str) -> None:
    """Config-level checks of the mixture keys (run when the config is loaded)."""
    t = cfg.train
    names = t.datasets
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"{where}: train.datasets names {dup!r} twice")
    for key in ("weights", "loss_weights", "step_budgets", "downstream"):
        for name in getattr(t, key):
            if name not in names:
                raise InputError(f"{where}: train.{key} names {name!r}, which is not in train.datasets "
                                 f"({', '.join(names) or 'empty'})")
    for key in ("weights", "loss_weights", "step_budgets"):
        for name, value in getattr(t, key).items():
            if value < 0:
                raise InputError(f"{where}: train.{key}.{name} is negative ({value})")
    if t.sampling == "weights":
        if set(t.weights) != set(names):
            missing = sorted(set(names) - set(t.weights))
            raise InputError(f"{where}: train.sampling=weights needs train.weights for every dataset "
                             f"(missing: {', '.join(missing)})")
        if sum(t.weights.values()) <= 0:
            raise InputError(f"{where}: train.weights are all zero")
    if t.sampling == "temperature" and t.temperature <= 0:
        raise InputError(f"{where}: train.temperature must be > 0")
    if t.schedule == "sequential" and not (t.downstream and set(t.downstream) < set(names)):
        raise InputError(f"{where}: train.schedule=sequential needs train.downstream: the datasets "
                         f"trained last (a proper subset of train.datasets)")
    frames = {n: cfg.datasets[n].num_frames for n in names if n in cfg.datasets}
    if len(set(frames.values())) > 1:
        raise InputError(f"{where}: datasets of one mixture must use the same num_frames (the temporal "
                         f"module's position embeddings are shared): {frames}")
