"""The config dataclasses: what an experiment, a dataset card, a model, training and evaluation
are made of (defaults, comments and every field's choices here; ranges and checks in
:mod:`vlcofit.config.checks`; reading and writing YAML in :mod:`vlcofit.config.loading`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from ..errors import InputError

# Every choice a config field offers, written once: config.checks reads them from the field
# annotations; the registries that implement them (the task registry, the decoders, the
# evaluator revisions, ...) are checked against them by tests/test_layers.py.
Task = Literal["classification", "localization", "captions"]  # vlcofit.tasks
Format = Literal["csv", "list", "folder", "kinetics", "ucf101", "hmdb51", "ssv2",  # data.annotations
                 "ava",  # data.localization
                 "msrvtt", "webvid"]  # data.captions (also csv)
Decoder = Literal["pyav", "torchcodec", "decord", "pytorchvideo"]  # vlcofit.data.video
ClipSampling = Literal["tsn", "dense"]  # vlcofit.data.sampling
Granularity = Literal["fine", "coarse"]
TestCrops = Literal[1, 3]
Media = Literal["video", "frames"]  # vlcofit.data.localization
AvaProtocol = Literal["current", "activitynet-2019"]  # vlcofit.metrics.ava.PROTOCOLS
RetrievalProtocol = Literal["vlcofit", "clip4clip"]  # vlcofit.metrics.retrieval.PROTOCOLS
BackboneKind = Literal["open_clip", "hf"]
Temporal = Literal["mean", "transformer"]
Head = Literal["text", "linear"]
Loss = Literal["auto", "softmax", "sigmoid"]
MixtureSampling = Literal["proportional", "uniform", "temperature", "weights"]  # data.mixture
Schedule = Literal["cofinetune", "sequential"]
BoxLoss = Literal["bce", "focal"]
MixedPrecision = Literal["no", "bf16", "fp16"]
Tracker = Literal["tensorboard", "wandb", "mlflow"]  # vlcofit.train.trackers
Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = get_args(Split)

TEMPORAL_MAX_FRAMES = 64  # frames the temporal transformer's position embedding holds


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
    eval_protocol: AvaProtocol = "current"  # AVA evaluator revision: vlcofit.metrics.ava.PROTOCOLS
    media: Media = "video"  # video: <root>/<videos>/<video_id>.<ext>; frames: <video_id>/img_%05d.jpg
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
    task: Task = "classification"  # classification | localization | captions (vlcofit.tasks)
    # classification: csv | list | folder | kinetics | ucf101 | hmdb51 | ssv2; localization: ava;
    # captions: csv (path,caption) | msrvtt (JSON / JSON Lines) | webvid (vlcofit.data.captions)
    format: Format = "csv"
    root: str = "."  # video folder; relative paths are relative to the working directory
    train: str | None = None  # annotation/split file (or sub-folder for `folder`), relative to root
    val: str | None = None
    test: str | None = None
    # prompt file: shipped name (prompts/<name>.txt) or path; none for captions (free text)
    prompts: str = ""
    # template file: shipped name (prompts/templates/<name>.txt) or path; unused by captions
    templates: str = "text4vis"
    # coarse <-> fine (vlcofit.text.hierarchy): a file mapping each fine class (of `prompts`) to a
    # coarse group name ("fine<TAB>coarse" lines or a fine,coarse CSV); optional
    # `coarse_prompts` lists the group names (else: the map's, in first-seen order)
    coarse: str | None = None
    coarse_prompts: str | None = None
    granularity: Granularity = "fine"  # fine | coarse: train and evaluate these videos at either level
    num_classes: int | None = None  # if set, must equal the prompt file's class count
    num_frames: int = 8
    sampling: ClipSampling = "tsn"  # tsn (one frame per segment) | dense (consecutive frames, stride)
    frame_stride: int = 4  # dense sampling only
    test_clips: int = 1  # temporal views at test time
    test_crops: TestCrops = 1  # spatial views at test time: 1 (centre) or 3 (left/centre/right)
    hflip: bool = True  # training flips; false where classes name left/right (SSv2, the demo)
    min_crop_scale: float = 0.4  # training random-resized-crop area range: [min_crop_scale, 1]
    decoder: Decoder = "pyav"  # pyav | torchcodec | decord | pytorchvideo (vlcofit.data.video)
    filename_pattern: str = "{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"  # kinetics format
    video_extensions: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov")  # folder format
    # captions: whose retrieval metrics are unprefixed (vlcofit.metrics.retrieval.PROTOCOLS;
    # the others are reported too, prefixed): vlcofit | clip4clip (as most papers report)
    retrieval_protocol: RetrievalProtocol = "vlcofit"
    localization: LocalizationSpec = field(default_factory=LocalizationSpec)  # task: localization

    def split_file(self, split: str) -> str:
        """The annotation file (or folder) of ``split`` (train/val/test), checked to be set."""
        if split not in SPLITS:
            raise InputError(f"dataset {self.name}: unknown split {split!r} ({', '.join(SPLITS)})")
        value = getattr(self, split)
        if value is None:
            raise InputError(f"dataset {self.name}: the card sets no `{split}` split")
        return value


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneKind = "open_clip"  # open_clip | hf (transformers CLIPModel)
    # open_clip: architecture name (ViT-B-16), model-config JSON (shipped name or path),
    # or `hf-hub:` / `local-dir:` ids; hf: hub id or local folder.
    name: str = "tiny"
    pretrained: str | None = None  # open_clip tag (openai) or local weights file; None: as `name` says
    temporal: Temporal = "transformer"  # mean | transformer
    temporal_layers: int = 1
    # localisation box head: mean (time-averaged token map, SlowFast-style) | transformer
    # (per-frame RoIs through a temporal transformer: keeps the order of frames, for motion)
    box_temporal: Temporal = "mean"
    head: Head = "text"  # text (class-name embeddings) | linear (random-init, for comparison)
    train_text: bool = False  # text tower frozen (Text4Vis) unless set
    # softmax (CLIP's cross-entropy) | sigmoid (SigLIP's: one-vs-rest per class, pairwise for
    # captions, with a learned logit bias) | auto: sigmoid for a model trained with it (a bias)
    loss: Loss = "auto"
    grad_checkpointing: bool = False  # activation checkpointing in the towers' blocks
    # torch.compile each image-tower block in place (regional: one compiled block reused
    # L times, state-dict names unchanged; the per-frame tower is most of a step's FLOPs)
    compile: bool = False
    cache_dir: str | None = None  # where hub downloads go
    # A vlcofit checkpoint or run folder to start from (e.g. few-shot from a co-finetuned model):
    # every tensor whose name and shape match is loaded; label-space-sized ones are skipped.
    init_from: str | None = None
    # Re-initialise the last N image-tower blocks (the architecture's own init) after loading
    # the starting weights; they then train as new parameters (Plested et al. 2021).
    reinit_last: int = 0


@dataclass(frozen=True)
class TrainConfig:
    datasets: tuple[str, ...] = ()  # names from `datasets` trained on (a mixture if several)
    # Which dataset each step draws: proportional (to size) | uniform | temperature (size^(1/T))
    # | weights (explicit `weights`). The same seeded draw on every process.
    sampling: MixtureSampling = "proportional"
    temperature: float = 2.0
    weights: dict[str, float] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)  # per dataset; default 1
    step_budgets: dict[str, int] = field(default_factory=dict)  # most steps a dataset may take
    # cofinetune: datasets mixed at every step; sequential: the transfer-learning baseline —
    # the upstream datasets first, then `downstream`, with the same per-dataset step counts.
    schedule: Schedule = "cofinetune"
    downstream: tuple[str, ...] = ()
    box_loss: BoxLoss = "bce"  # localisation datasets: bce | focal
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # clips per process per micro-step
    grad_accum: int = 1
    lr: float = 1e-5  # pretrained (CLIP) parameters
    lr_new: float = 1e-3  # new parameters: those not loaded from the starting weights
    weight_decay: float = 0.05
    # Non-binary transfer (Plested et al. 2021), resolved by vlcofit.train.optim into param_groups.json.
    # Layer decay: lr at depth d = lr * layer_decay^(L+1-d) (embeddings 0, block i: i+1, the
    # final norm L with the last block as timm has it, projection and everything outside the
    # backbone L+1); 1: off.
    layer_decay: float = 1.0
    # {regex: factor} over parameter names (re.search; the first matching regex wins; one that
    # matches no trainable parameter is an error): on the lr, the weight decay, the L2-SP alpha.
    lr_mults: dict[str, float] = field(default_factory=dict)
    wd_mults: dict[str, float] = field(default_factory=dict)
    l2sp_mults: dict[str, float] = field(default_factory=dict)
    # L2-SP alpha: each step w <- w - lr*alpha*(w - w0) for transferred weights (w0: the starting
    # weights), decoupled, beside weight_decay's w <- w - lr*wd*w. 0: off.
    l2sp: float = 0.0
    # Frozen (requires_grad=False, not in the optimizer): "image:N" / "text:N" (the tower's
    # embeddings and first N blocks) or regexes over parameter names.
    freeze: tuple[str, ...] = ()
    # log the fit measures of the starting weights (vlcofit.experiment.fit) at step 0, on up to
    # fit_max_per_class training videos a class (None: all)
    fit_measures: bool = False
    fit_max_per_class: int | None = None
    warmup_steps: int = 100
    clip_grad: float | None = 1.0
    label_smoothing: float = 0.0
    mixed_precision: MixedPrecision = "no"  # no | bf16 | fp16 (through Accelerate)
    seed: int = 0
    num_workers: int = 2
    log_every: int = 10
    eval_every: int = 0  # steps; 0: evaluate at the end only
    save_every: int = 200  # steps; the last step always saves
    keep_checkpoints: int = 2
    max_bad_fraction: float = 0.01  # fail when more training videos than this are unreadable
    trackers: tuple[Tracker, ...] = ("tensorboard",)  # tensorboard | wandb | mlflow (vlcofit.train.trackers)
    # seconds a process waits in a collective (gradient all-reduce, barrier) for the others
    # before it fails naming its rank: a stalled or dead rank must not hold the rest forever
    collective_timeout: float = 1800.0


@dataclass(frozen=True)
class DataConfig:
    """How every loader of a run reads (vlcofit.data.loading)."""
    # a loader that yields no batch for this many seconds stops the command with an error
    # naming the dataset and the videos its workers were reading
    stall_timeout: float = 300.0


@dataclass(frozen=True)
class EvalConfig:
    datasets: tuple[str, ...] = ()  # names from `datasets` evaluated; empty: the training ones
    split: Split = "val"
    batch_size: int = 8
    max_batches: int | None = None  # cap for quick checks


@dataclass(frozen=True)
class SweepConfig:
    """``vlcofit sweep``: settings compared over seeds, and transfer measured after each run.
    Not read by training (a resume may change it)."""
    # named settings, each a list of --set overrides; `--grid` on the command line replaces them
    arms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    probe: tuple[str, ...] = ()  # datasets: frozen-encoder linear probe of each run's encoder
    # overrides of a follow-up run initialised from each run (the arm's own overrides not applied)
    finetune: tuple[str, ...] = ()
    # zero-shot on names never trained on, after each run: "DATASET:FILE:PROMPTS" (a `path,label`
    # CSV under that dataset's root, scored against a prompt file; `vlcofit zero-shot`'s code)
    zero_shot: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()  # keys in the table and plot (default: headline metrics)
    # a learning curve: this evaluation metric at every evaluation of each run (train.eval_every),
    # and the first step its mean over seeds reaches `reach` (vlcofit.protocols.sweep_curves)
    curve: str | None = None
    reach: float | None = None
    # few-shot from each run: K videos per class of this dataset, fine-tuned from the run under
    # the setting's overrides and then `few_shot_set`, for each K of `few_shot_k`
    few_shot: str | None = None
    few_shot_k: tuple[int, ...] = (1, 2, 4, 8, 16)
    few_shot_set: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    datasets: dict[str, DatasetCard] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    output_dir: str = "runs/default"

    @property
    def eval_datasets(self) -> tuple[str, ...]:
        return self.eval.datasets or self.train.datasets
