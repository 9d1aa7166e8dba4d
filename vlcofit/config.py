"""Configs: YAML -> frozen dataclasses.

An experiment config holds the model, the dataset cards it uses (by name, with per-run
overrides), training and evaluation settings. Unknown keys and values of the wrong type are
errors naming the file and field. ``--set a.b=v`` overrides any field (the value is parsed as
YAML). The fully resolved config is written to each run folder and can be loaded again as is.

Every numeric field's range and every choice field's values are declared once, in ``RANGES``
and ``CHOICES``, and checked as the config is read. Errors name where the bad value came from:
the YAML file and the field, or the ``--set`` item that set it.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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
    eval_protocol: str = "current"  # AVA evaluator revision: vlcofit.metrics.ava.PROTOCOLS
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


# --------------------------------------------------------------------------- value checks

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
# each item). The dict-valued train.weights / loss_weights / step_budgets are checked per
# dataset by vlcofit.mixture.check_mixture.
RANGES: dict[type, dict[str, Bound]] = {
    ModelConfig: {"temporal_layers": NON_NEGATIVE},
    DatasetCard: {"num_classes": AT_LEAST_1, "num_frames": AT_LEAST_1, "frame_stride": AT_LEAST_1,
                  "test_clips": AT_LEAST_1, "min_crop_scale": Bound(0, 1, open_low=True)},
    LocalizationSpec: {"fps": POSITIVE, "first_frame_time": NON_NEGATIVE,
                       "keyframe_range": NON_NEGATIVE, "person_score_threshold": UNIT,
                       "train_proposal_iou": UNIT, "head_mid_tail": NON_NEGATIVE},
    TrainConfig: {
        "temperature": POSITIVE, "steps": AT_LEAST_1, "batch_size": AT_LEAST_1,
        "grad_accum": AT_LEAST_1, "lr": NON_NEGATIVE, "lr_new": NON_NEGATIVE,
        "weight_decay": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE, "clip_grad": NON_NEGATIVE,
        "label_smoothing": Bound(0, 1, open_high=True), "seed": NON_NEGATIVE,
        "num_workers": NON_NEGATIVE, "log_every": AT_LEAST_1, "eval_every": NON_NEGATIVE,
        "save_every": AT_LEAST_1, "keep_checkpoints": NON_NEGATIVE, "max_bad_fraction": UNIT},
    EvalConfig: {"batch_size": AT_LEAST_1, "max_batches": AT_LEAST_1},
}


def _mixture_choices(key: str) -> Callable[[], tuple[str, ...]]:
    def choices() -> tuple[str, ...]:
        from . import mixture  # builds on this module
        return getattr(mixture, key)
    return choices


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
                  "box_temporal": ("mean", "transformer"), "head": ("text", "linear")},
    DatasetCard: {"task": TASKS, "sampling": ("tsn", "dense"), "test_crops": (1, 3),
                  "decoder": _decoders},
    LocalizationSpec: {"media": _media},
    TrainConfig: {"sampling": _mixture_choices("SAMPLING"),
                  "schedule": _mixture_choices("SCHEDULES"),
                  "mixed_precision": ("no", "bf16", "fp16"), "box_loss": ("bce", "focal")},
    EvalConfig: {"split": ("train", "val", "test")},
}


def _check_value(cls: type, name: str, value: Any, key: str, source: Source) -> None:
    """``value`` of field ``name`` of ``cls`` (at dotted ``key``) against RANGES and CHOICES."""
    choices = CHOICES.get(cls, {}).get(name)
    if choices is not None:
        options = choices() if callable(choices) else choices
        if value not in options:
            _fail(source, key, f"must be one of {', '.join(map(str, options))}; got {value!r}")
    bound = RANGES.get(cls, {}).get(name)
    if bound is None or value is None:
        return
    for i, item in enumerate(value if isinstance(value, tuple) else (value,)):
        if item not in bound:
            _fail(source, key, f"must be {bound}, got {item!r}",
                  item=i if isinstance(value, tuple) else None)


# --------------------------------------------------------------------------- sources

# Where a config value came from, for messages: ``source(key, blame=None)`` -> (who, shown).
# ``who`` is a file or a ``--set ITEM``; ``shown`` is the dotted ``key`` as written there;
# ``blame`` (default ``key``) is the key whose origin decides ``who`` (an unknown key is reported
# at its section, but blamed on whoever wrote the key).
Source = Callable[..., tuple[str, str]]


def _file_source(file: str) -> Source:
    return lambda key, blame=None: (file, key)


def _set_source(base: Source, items: Sequence[str]) -> Source:
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


def _sub_source(parent: Source, prefix: str, own: Source | None = None,
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


def _where(source: Source, key: str, blame: str | None = None) -> str:
    """``file.key`` (or ``file`` at the top), ``--set ITEM: key``: the prefix of type errors."""
    who, shown = source(key, blame)
    if not shown:
        return who
    return f"{who}: {shown}" if who.startswith("--set ") else f"{who}.{shown}"


def _fail(source: Source, key: str, problem: str, item: int | None = None) -> typing.NoReturn:
    """``file: key problem`` or ``--set ITEM: key problem`` (``key[item]``: a list's item)."""
    who, shown = source(key)
    raise InputError(f"{who}: {shown}{'' if item is None else f'[{item}]'} {problem}")


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


def from_dict(cls: type, data: Any, where: str, source: Source | None = None,
              prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys, wrong types and values out of range
    (RANGES, CHOICES) are InputErrors naming ``where`` (the file) and the field, or, through
    ``source``, the ``--set`` item that set it. ``prefix``: the dotted key of ``data``."""
    source = source or _file_source(where)
    section = prefix.rstrip(".")
    if not isinstance(data, dict):
        raise InputError(f"{_where(source, section)}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise InputError(f"{_where(source, section, f'{prefix}{unknown[0]}')}: unknown key "
                         f"{unknown[0]!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, where, source, f"{key}.")
        elif name == "datasets" and cls is ExperimentConfig:
            kwargs[name] = _read_datasets(value, source)
        else:
            kwargs[name] = _coerce(value, tp, _where(source, key))
            _check_value(cls, name, kwargs[name], key, source)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise InputError(f"{_where(source, section)}: missing required key {missing[0]!r}")
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


def load_card(name_or_path: str, overrides: dict | None = None, name: str | None = None,
              source: Source | None = None) -> DatasetCard:
    """Load a dataset card (shipped name or path), apply per-run ``overrides``.

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
    card_source = _file_source(str(path))
    if source is not None:
        card_source = _sub_source(source, f"datasets.{data['name']}", card_source, overridden)
    card = from_dict(DatasetCard, data, str(path), card_source)
    _check_card(card, card_source)
    return card


def _check_card(card: DatasetCard, source: Source) -> None:
    """Card checks beyond RANGES and CHOICES (cross-field, list lengths)."""
    if not card.prompts:
        who, _ = source("prompts")
        raise InputError(f"{who}: `prompts` (the class-name prompt file) is required")
    spec = card.localization
    if spec.keyframe_range and (len(spec.keyframe_range) != 2
                                or spec.keyframe_range[0] > spec.keyframe_range[1]):
        _fail(source, "localization.keyframe_range",
              f"must be [first, last] (first <= last), got {list(spec.keyframe_range)}")
    if len(spec.head_mid_tail) != 2 or spec.head_mid_tail[0] > spec.head_mid_tail[1]:
        _fail(source, "localization.head_mid_tail",
              f"must be [tail_below, head_from] (increasing), got {list(spec.head_mid_tail)}")


def _read_datasets(value: Any, source: Source) -> dict[str, DatasetCard]:
    """``{name: {card: NAME_OR_PATH, **overrides}}``, or a full inline card (no `card` key)."""
    if not isinstance(value, dict):
        raise InputError(f"{_where(source, 'datasets')}: expected a mapping of dataset name -> card")
    cards = {}
    for name, entry in value.items():
        key = f"datasets.{name}"
        if isinstance(entry, str):
            entry = {"card": entry}
        if not isinstance(entry, dict):
            raise InputError(f"{_where(source, key)}: expected a card name/path or a mapping")
        entry = dict(entry)
        entry.setdefault("name", name)
        if entry["name"] != name:
            raise InputError(f"{_where(source, f'{key}.name')}: {entry['name']!r} differs from its "
                             f"key {name!r}")
        if "card" in entry:
            card = entry.pop("card")
            if not isinstance(card, str) or not card:
                raise InputError(f"{_where(source, f'{key}.card')}: expected a card name or path, "
                                 f"got {card!r}")
            try:
                cards[name] = load_card(card, entry, name, source)
            except InputError as e:
                if str(e).startswith(f"{card}: no such file"):  # name the config that names it
                    raise InputError(f"{_where(source, f'{key}.card')}: {e}") from None
                raise
        else:
            card_source = _sub_source(source, key)
            cards[name] = from_dict(DatasetCard, entry, str(key), card_source)
            _check_card(cards[name], card_source)
    return cards


def _check_experiment(cfg: ExperimentConfig, source: Source, overrides: Sequence[str] = ()) -> None:
    """Experiment checks beyond RANGES and CHOICES: names that must exist, cross-field limits."""
    for key in ("train.datasets", "eval.datasets"):
        section, _ = key.split(".")
        for name in getattr(cfg, section).datasets:
            if name not in cfg.datasets:
                _fail(source, key, f"names {name!r}, which is not under `datasets` "
                                   f"(have: {', '.join(cfg.datasets) or 'none'})")
    if cfg.model.temporal == "transformer":
        max_frames = _temporal_max_frames()
        for name in cfg.train.datasets + cfg.eval_datasets:
            if cfg.datasets[name].num_frames > max_frames:
                _fail(source, f"datasets.{name}.num_frames",
                      f"is {cfg.datasets[name].num_frames}; model.temporal=transformer takes at most "
                      f"{max_frames} frames")
    from .mixture import check_mixture  # mixture builds on this module
    file, _ = source("")
    mixing = [item for item in overrides if _mixture_key(item.partition("=")[0])]
    check_mixture(cfg, file + "".join(f" with --set {item}" for item in mixing))


def _mixture_key(key: str) -> bool:
    """Whether a --set key is one check_mixture reads (its errors then name the item too)."""
    parts = key.split(".")
    if parts[0] == "datasets":
        return len(parts) <= 2 or parts[2:] == ["num_frames"]
    return parts[0] == "train" and (len(parts) == 1 or parts[1] in (
        "datasets", "sampling", "temperature", "weights", "loss_weights", "step_budgets",
        "schedule", "downstream"))


def _temporal_max_frames() -> int:
    import inspect

    from .models.temporal import TemporalTransformer  # imports torch: only for this check
    return inspect.signature(TemporalTransformer).parameters["max_frames"].default


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
    """Load an experiment config (shipped name or path) with ``--set`` overrides applied.

    Errors about a value an override set name the ``--set`` item, the others the file."""
    path = resources.find("experiments", name_or_path)
    overrides = list(overrides or [])
    data = apply_overrides(load_yaml(path), overrides)
    source = _set_source(_file_source(str(path)), overrides)
    cfg = from_dict(ExperimentConfig, data, str(path), source)
    _check_experiment(cfg, source, overrides)
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
