"""Configs: YAML -> frozen dataclasses.

An experiment config holds the model, the dataset cards it uses (by name, with per-run
overrides), training and evaluation settings. Unknown keys and values of the wrong type are
errors naming the file and field. ``--set a.b=v`` overrides any field (the value is parsed as
YAML). The fully resolved config is written to each run folder and can be loaded again as is.

The dataclasses live in :mod:`vlcofit.config.schema`; every choice field's values are declared
once there (its ``Literal``), every numeric field's range once in ``RANGES``
(:mod:`vlcofit.config.checks`), and both are checked as the config is read. Errors name where the bad value came from:
the YAML file and the field, or the ``--set`` item that set it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..errors import InputError
from ..utils import resources
from ..utils.files import read_text, write_atomic
from .checks import (CardCheck, Source, check_mixture, check_value, fail, file_source, freeze_block,
                     origin, set_source, sub_source)
from .schema import TEMPORAL_MAX_FRAMES, DatasetCard, ExperimentConfig

# --------------------------------------------------------------------------- building

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples, ints to floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except InputError as e:
                errors.append(str(e))
        raise InputError(errors[0] if errors else f"{where}: must not be null")
    if origin is typing.Literal:  # its type here; the choice itself: checks.check_value
        return _coerce(value, type(typing.get_args(tp)[0]), where)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise InputError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, f"{where}"): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            hint = (": YAML reads an unquoted no / yes / off / on as a boolean; quote it, "
                    "e.g. mixed_precision: \"no\"" if tp is str and isinstance(value, bool) else "")
            raise InputError(f"{where}: expected {_type_name(tp)}, got {value!r}{hint}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")  # a bug in this module


def from_dict(cls: type, data: Any, where: str, source: Source | None = None,
              prefix: str = "", task_check: CardCheck | None = None) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys, wrong types and values out of range
    (RANGES, the fields' Literals) are InputErrors naming ``where`` (the file) and the field, or, through
    ``source``, the ``--set`` item that set it. ``prefix``: the dotted key of ``data``."""
    source = source or file_source(where)
    section = prefix.rstrip(".")
    if not isinstance(data, dict):
        raise InputError(f"{origin(source, section)}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise InputError(f"{origin(source, section, f'{prefix}{unknown[0]}')}: unknown key "
                         f"{unknown[0]!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, where, source, f"{key}.")
        elif name == "datasets" and cls is ExperimentConfig:
            kwargs[name] = _read_datasets(value, source, task_check)
        else:
            kwargs[name] = _coerce(value, tp, origin(source, key))
            check_value(cls, name, kwargs[name], key, source)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{origin(source, section)}: missing required key {missing[0]!r}")
    return cls(**kwargs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (YAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        keys = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in keys:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            keys.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping safely; errors name the file."""
    path = Path(path)
    text = read_text(path, "YAML file")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return data


def load_card(name_or_path: str, overrides: dict | None = None, name: str | None = None,
              source: Source | None = None, task_check: CardCheck | None = None) -> DatasetCard:
    """Load a dataset card (shipped name or path), apply per-run ``overrides``; ``task_check``:
    see :func:`_check_card` (:func:`vlcofit.experiment.load_card` passes it).

    ``source``: where the overrides came from (an experiment's, naming its file or `--set`
    items, at ``datasets.NAME``); values from the card file name the card file."""
    path = resources.find("datasets", name_or_path)
    data = load_yaml(path)
    overridden = []
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):  # localization: merged
            data[key] = {**data[key], **value}
            overridden += [f"{key}.{sub}" for sub in value]
        else:
            data[key] = value
            overridden.append(key)
    data.setdefault("name", name or path.stem)
    card_source = file_source(str(path))
    if source is not None:
        card_source = sub_source(source, f"datasets.{data['name']}", card_source, overridden)
    card = from_dict(DatasetCard, data, str(path), card_source)
    _check_card(card, card_source, task_check)
    return card


def _check_card(card: DatasetCard, source: Source, task_check: CardCheck | None) -> None:
    """Card checks beyond the ranges and choices (cross-field, list lengths); ``task_check``:
    those that need the card's task (vlcofit.experiment passes the task registry's)."""
    if task_check is not None:
        task_check(card, source)
    if card.granularity == "coarse" and not card.coarse:
        fail(source, "granularity", "is coarse, but the card gives no `coarse` map of its fine "
                                    "classes to coarse groups")
    if card.coarse_prompts and not card.coarse:
        fail(source, "coarse_prompts", "is set without a `coarse` map")
    spec = card.localization
    if spec.keyframe_range and (len(spec.keyframe_range) != 2
                                or spec.keyframe_range[0] > spec.keyframe_range[1]):
        fail(source, "localization.keyframe_range",
              f"must be [first, last] (first <= last), got {list(spec.keyframe_range)}")
    if len(spec.head_mid_tail) != 2 or spec.head_mid_tail[0] > spec.head_mid_tail[1]:
        fail(source, "localization.head_mid_tail",
              f"must be [tail_below, head_from] (increasing), got {list(spec.head_mid_tail)}")


def _read_datasets(value: Any, source: Source,
                   task_check: CardCheck | None) -> dict[str, DatasetCard]:
    """``{name: {card: NAME_OR_PATH, **overrides}}``, or a full inline card (no `card` key)."""
    if not isinstance(value, dict):
        raise InputError(f"{origin(source, 'datasets')}: expected a mapping of dataset name -> card")
    cards = {}
    for name, entry in value.items():
        key = f"datasets.{name}"
        if isinstance(entry, str):
            entry = {"card": entry}
        if not isinstance(entry, dict):
            raise InputError(f"{origin(source, key)}: expected a card name/path or a mapping")
        entry = dict(entry)
        entry.setdefault("name", name)
        if entry["name"] != name:
            raise InputError(f"{origin(source, f'{key}.name')}: {entry['name']!r} differs from its "
                             f"key {name!r}")
        if "card" in entry:
            card = entry.pop("card")
            if not isinstance(card, str) or not card:
                raise InputError(f"{origin(source, f'{key}.card')}: expected a card name or path, "
                                 f"got {card!r}")
            try:
                cards[name] = load_card(card, entry, name, source, task_check)
            except InputError as e:
                if str(e).startswith(f"{card}: no such file"):  # name the config that names it
                    raise InputError(f"{origin(source, f'{key}.card')}: {e}") from None
                raise
        else:
            card_source = sub_source(source, key)
            cards[name] = from_dict(DatasetCard, entry, str(key), card_source)
            _check_card(cards[name], card_source, task_check)
    return cards


def _check_experiment(cfg: ExperimentConfig, source: Source, overrides: Sequence[str] = ()) -> None:
    """Experiment checks beyond ranges and choices: names that must exist, cross-field limits."""
    for key in ("train.datasets", "eval.datasets"):
        section, _ = key.split(".")
        for name in getattr(cfg, section).datasets:
            if name not in cfg.datasets:
                fail(source, key, f"names {name!r}, which is not under `datasets` "
                                   f"(have: {', '.join(cfg.datasets) or 'none'})")
    if cfg.model.temporal == "transformer":
        max_frames = TEMPORAL_MAX_FRAMES
        for name in cfg.train.datasets + cfg.eval_datasets:
            if cfg.datasets[name].num_frames > max_frames:
                fail(source, f"datasets.{name}.num_frames",
                      f"is {cfg.datasets[name].num_frames}; model.temporal=transformer takes at most "
                      f"{max_frames} frames")
    _check_freeze(cfg, source)
    file, _ = source("")
    mixing = [item for item in overrides if _mixture_key(item.partition("=")[0])]
    check_mixture(cfg, file + "".join(f" with --set {item}" for item in mixing))


def _check_freeze(cfg: ExperimentConfig, source: Source) -> None:
    """train.freeze items checked as the config is read (a negative N, a bad regex), so the
    error names the file or ``--set`` item; the tower needs the model (apply_freeze)."""
    if not cfg.train.freeze:
        return
    for i, spec in enumerate(cfg.train.freeze):
        try:
            freeze_block(spec)
        except InputError as e:
            fail(source, "train.freeze", str(e).removeprefix("train.freeze: "), item=i)


def _mixture_key(key: str) -> bool:
    """Whether a --set key is one check_mixture reads (its errors then name the item too)."""
    parts = key.split(".")
    if parts[0] == "datasets":
        return len(parts) <= 2 or parts[2:] == ["num_frames"]
    return parts[0] == "train" and (len(parts) == 1 or parts[1] in (
        "datasets", "sampling", "temperature", "weights", "loss_weights", "step_budgets",
        "schedule", "downstream"))


# --------------------------------------------------------------------------- overrides

def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested dict, in place. Only
    true / false are booleans (YAML 1.2), not no / yes / off / on: ``mixed_precision=no``."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected key=value, e.g. train.steps=100")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise InputError(f"--set {item!r}: value is not valid YAML: {e}") from None
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()  # YAML 1.2's booleans only: train.mixed_precision=no is "no"
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if isinstance(child, str) and node is data.get("datasets"):
                child = node[part] = {"card": child}  # `name: card` shorthand, now overridden
            if not isinstance(child, dict):
                raise InputError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_experiment(name_or_path: str | Path, overrides: list[str] | None = None,
                    task_check: CardCheck | None = None) -> ExperimentConfig:
    """Load an experiment config (shipped name or path) with ``--set`` overrides applied; a
    dataset card's file stands for the smallest experiment that trains it (card_experiment).

    Errors about a value an override set name the ``--set`` item, the others the file."""
    path = resources.find("experiments", name_or_path)
    overrides = list(overrides or [])
    data = load_yaml(path)
    if is_card(data):
        data = card_experiment(path, data)
    data = apply_overrides(data, overrides)
    source = set_source(file_source(str(path)), overrides)
    cfg = from_dict(ExperimentConfig, data, str(path), source, task_check=task_check)
    _check_experiment(cfg, source, overrides)
    return cfg


_EXPERIMENT_KEYS = {f.name for f in dataclasses.fields(ExperimentConfig)}
_CARD_KEYS = {f.name for f in dataclasses.fields(DatasetCard)}


def is_card(data: dict) -> bool:
    """Whether a YAML mapping is a dataset card, not an experiment: every key is a card key
    and one at least is not also an experiment key (``train`` is both)."""
    keys = set(data)
    return keys <= _CARD_KEYS and bool(keys - _EXPERIMENT_KEYS)


def card_experiment(path: Path, card: dict) -> dict:
    """The smallest experiment that trains the card at ``path``: the default model and
    settings, the card as its one dataset (``train.datasets``), the run in ``runs/<name>``."""
    name = str(card.get("name") or path.stem)
    return {"datasets": {name: {"card": str(path)}}, "train": {"datasets": [name]},
            "output_dir": f"runs/{name}"}


def to_dict(cfg: Any) -> Any:
    """Plain (YAML-able) nested dict of a config; tuples become lists."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def save_experiment(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the fully resolved config (cards inlined) so the run can be reproduced from it."""
    write_atomic(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
