"""Configs: YAML -> frozen dataclasses.

An experiment config holds the model, the dataset cards it uses (by name, with per-run
overrides), training and evaluation settings. Unknown keys and values of the wrong type are
errors naming the file and field. ``--set a.b=v`` overrides any field (the value is parsed as
YAML). The fully resolved config is written to each run folder and can be loaded again as is.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import resources
from .errors import InputError

TASKS = ("classification", "localization")


@dataclass(frozen=True)
class LocalizationSpec:
    """AVA-style specifics of a localisation card (``localization:`` in the card).

    The card's ``train``/``val``/``test`` name the ground-truth CSVs of each split; ``prompts``
    is the label map (``id: name`` prompt file, or an official .pbtxt given as ``labelmap``).
    """
    labelmap: str | None = None  # official pbtxt; default: the prompt file's `id: name` lines
    proposals_train: str | None = None  # person boxes: pickle dict or CSV (relative to root)
    proposals_val: str | None = None
    proposals_test: str | None = None
    exclusions_val: str | None = None  # keyframes the evaluation ignores
    exclusions_test: str | None = None
    media: str = "video"  # video: <root>/<videos>/<video_id>.<ext>; frames: <video_id>/img_%05d.jpg
    videos: str = "videos"  # sub-folder of root holding the videos or frame folders
    video_extension: str = ".mp4"
    frame_pattern: str = "img_{:05d}.jpg"  # frames media: 1-based frame number
    fps: float = 30.0  # frames media: frames per second of the extracted frames
    first_frame_time: float = 0.0  # frames media: time (s) of frame 1; AVA: 900
    keyframe_range: tuple[float, ...] = ()  # (first, last) keyframe time kept; AVA: (902, 1798)
    person_score_threshold: float = 0.8  # evaluation proposals kept above this score
    train_proposal_iou: float | None = None  # also train on proposals with IoU >= t to a gt box
    head_mid_tail: tuple[int, ...] = (100, 1000)  # training-instance thresholds of rare-class groups


@dataclass(frozen=True)
class DatasetCard:
    """One dataset: where its videos and labels are, its classes, how clips are sampled.

    The card decides the task once; the task picks the head, the loss and the metric.
    """
    name: str
    task: str = "classification"  # classification | localization
    # classification: csv | list | folder | kinetics | ucf101 | hmdb51 | ssv2; localization: ava
    format: str = "csv"
    root: str = "."  # video folder; relative paths are relative to the working directory
    train: str | None = None  # annotation/split file (or sub-folder for `folder`), relative to root
    val: str | None = None
    test: str | None = None
    prompts: str = ""  # prompt file: shipped name (prompts/<name>.txt) or path
    templates: str = "text4vis"  # template file: shipped name (prompts/templates/<name>.txt) or path
    num_classes: int | None = None  # if set, must equal the prompt file's class count
    num_frames: int = 8
    sampling: str = "tsn"  # tsn (one frame per segment) | dense (consecutive frames, stride)
    frame_stride: int = 4  # dense sampling only
    test_clips: int = 1  # temporal views at test time
    test_crops: int = 1  # spatial views at test time: 1 (centre) or 3 (left/centre/right)
    hflip: bool = True  # training flips; false where classes name left/right (SSv2, the demo)
    min_crop_scale: float = 0.4  # training random-resized-crop area range: [min_crop_scale, 1]
    decoder: str = "pyav"  # pyav | torchcodec | decord
    filename_pattern: str = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"  # kinetics format
    video_extensions: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov")  # folder format
    localization: LocalizationSpec = field(default_factory=LocalizationSpec)  # task: localization

    def split_file(self, split: str) -> str:
        """The annotation file (or folder) of ``split`` (train/val/test), checked to be set."""
        if split not in ("train", "val", "test"):
            raise InputError(f"dataset {self.name}: unknown split {split!r} (train, val, test)")
        value = getattr(self, split)
        if value is None:
            raise InputError(f"dataset {self.name}: the card sets no `{split}` split")
        return value


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "open_clip"  # open_clip | hf (transformers CLIPModel)
    # open_clip: architecture name (ViT-B-16), model-config JSON (shipped name or path),
    # or `hf-hub:` / `local-dir:` ids; hf: hub id or local folder.
    name: str = "tiny"
    pretrained: str | None = None  # open_clip tag (openai) or local weights file; None: as `name` says
    temporal: str = "transformer"  # mean | transformer
    temporal_layers: int = 1
    # localisation box head: mean (time-averaged token map, SlowFast-style) | transformer
    # (per-frame RoIs through a temporal transformer: keeps the order of frames, for motion)
    box_temporal: str = "mean"
    head: str = "text"  # text (class-name embeddings) | linear (random-init, for comparison)
    train_text: bool = False  # text tower frozen (Text4Vis) unless set
    cache_dir: str | None = None  # where hub downloads go
    # A vlcofit checkpoint or run folder to start from (e.g. few-shot from a co-finetuned model):
    # every tensor whose name and shape match is loaded; label-space-sized ones are skipped.
    init_from: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    datasets: tuple[str, ...] = ()  # names from `datasets` trained on (a mixture if several)
    # Which dataset each step draws: proportional (to size) | uniform | temperature (size^(1/T))
    # | weights (explicit `weights`). The same seeded draw on every process.
    sampling: str = "proportional"
    temperature: float = 2.0
    weights: dict[str, float] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)  # per dataset; default 1
    step_budgets: dict[str, int] = field(default_factory=dict)  # most steps a dataset may take
    # cofinetune: datasets mixed at every step; sequential: the transfer-learning baseline —
    # the upstream datasets first, then `downstream`, with the same per-dataset step counts.
    schedule: str = "cofinetune"
    downstream: tuple[str, ...] = ()
    box_loss: str = "bce"  # localisation datasets: bce | focal
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # clips per process per micro-step
    grad_accum: int = 1
    lr: float = 1e-5  # pretrained (CLIP) parameters
    lr_new: float = 1e-3  # new parameters: temporal module, heads, logit scale
    weight_decay: float = 0.05
    warmup_steps: int = 100
    clip_grad: float | None = 1.0
    label_smoothing: float = 0.0
    mixed_precision: str = "no"  # no | bf16 | fp16 (through Accelerate)
    seed: int = 0
    num_workers: int = 2
    log_every: int = 10
    eval_every: int = 0  # steps; 0: evaluate at the end only
    save_every: int = 200  # steps; the last step always saves
    keep_checkpoints: int = 2
    max_bad_fraction: float = 0.01  # fail when more training videos than this are unreadable


@dataclass(frozen=True)
class EvalConfig:
    datasets: tuple[str, ...] = ()  # names from `datasets` evaluated; empty: the training ones
    split: str = "val"
    batch_size: int = 8
    max_batches: int | None = None  # cap for quick checks


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    datasets: dict[str, DatasetCard] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/default"

    @property
    def eval_datasets(self) -> tuple[str, ...]:
        return self.eval.datasets or self.train.datasets


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
            raise InputError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")  # a bug in this module


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are InputErrors."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        sub = f"{where}.{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, sub)
        elif name == "datasets" and cls is ExperimentConfig:
            kwargs[name] = _read_datasets(value, sub)
        else:
            kwargs[name] = _coerce(value, tp, sub)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{where}: missing required key {missing[0]!r}")
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
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise InputError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return data


def load_card(name_or_path: str, overrides: dict | None = None, name: str | None = None) -> DatasetCard:
    """Load a dataset card (shipped name or path), apply per-run ``overrides``."""
    path = resources.find("datasets", name_or_path)
    data = load_yaml(path)
    data.update(overrides or {})
    data.setdefault("name", name or path.stem)
    card = from_dict(DatasetCard, data, str(path))
    _check_card(card, str(path))
    return card


def _check_card(card: DatasetCard, where: str) -> None:
    if card.task not in TASKS:
        raise InputError(f"{where}: task must be one of {TASKS}, got {card.task!r}")
    if card.sampling not in ("tsn", "dense"):
        raise InputError(f"{where}: sampling must be tsn or dense, got {card.sampling!r}")
    if card.test_crops not in (1, 3):
        raise InputError(f"{where}: test_crops must be 1 or 3, got {card.test_crops}")
    for key in ("num_frames", "frame_stride", "test_clips"):
        if getattr(card, key) < 1:
            raise InputError(f"{where}: {key} must be >= 1")
    if not card.prompts:
        raise InputError(f"{where}: `prompts` (the class-name prompt file) is required")


def _read_datasets(value: Any, where: str) -> dict[str, DatasetCard]:
    """``{name: {card: NAME_OR_PATH, **overrides}}``, or a full inline card (no `card` key)."""
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a mapping of dataset name -> card")
    cards = {}
    for name, entry in value.items():
        sub = f"{where}.{name}"
        if isinstance(entry, str):
            entry = {"card": entry}
        if not isinstance(entry, dict):
            raise InputError(f"{sub}: expected a card name/path or a mapping")
        entry = dict(entry)
        entry.setdefault("name", name)
        if entry["name"] != name:
            raise InputError(f"{sub}.name: {entry['name']!r} differs from its key {name!r}")
        if "card" in entry:
            cards[name] = load_card(entry.pop("card"), entry, name)
        else:
            cards[name] = from_dict(DatasetCard, entry, sub)
            _check_card(cards[name], sub)
    return cards


def _check_experiment(cfg: ExperimentConfig, where: str) -> None:
    for key in ("train.datasets", "eval.datasets"):
        section, _ = key.split(".")
        for name in getattr(cfg, section).datasets:
            if name not in cfg.datasets:
                raise InputError(f"{where}: {key} names {name!r}, which is not under `datasets` "
                                 f"(have: {', '.join(cfg.datasets) or 'none'})")
    m, t = cfg.model, cfg.train
    checks = [
        (m.backbone in ("open_clip", "hf"), "model.backbone must be open_clip or hf"),
        (m.temporal in ("mean", "transformer"), "model.temporal must be mean or transformer"),
        (m.box_temporal in ("mean", "transformer"),
         "model.box_temporal must be mean or transformer"),
        (m.head in ("text", "linear"), "model.head must be text or linear"),
        (t.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision must be no, bf16 or fp16"),
        (t.steps >= 1 and t.batch_size >= 1 and t.grad_accum >= 1,
         "train.steps, train.batch_size and train.grad_accum must be >= 1"),
        (0.0 <= t.max_bad_fraction <= 1.0, "train.max_bad_fraction must be in [0, 1]"),
        (t.box_loss in ("bce", "focal"), "train.box_loss must be bce or focal"),
        (cfg.eval.split in ("train", "val", "test"), "eval.split must be train, val or test"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(f"{where}: {message}")
    from .mixture import check_mixture  # mixture builds on this module
    check_mixture(cfg, where)


# --------------------------------------------------------------------------- overrides

def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected key=value, e.g. train.steps=100")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise InputError(f"--set {item!r}: value is not valid YAML: {e}") from None
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


def load_experiment(name_or_path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment config (shipped name or path) with ``--set`` overrides applied."""
    path = resources.find("experiments", name_or_path)
    data = apply_overrides(load_yaml(path), overrides or [])
    cfg = from_dict(ExperimentConfig, data, str(path))
    _check_experiment(cfg, str(path))
    return cfg


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
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
