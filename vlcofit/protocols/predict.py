"""Predict labels for a user's own videos with a zero-shot or fine-tuned model.

Model: a vlcofit checkpoint (its run's ``config.yaml`` says how to build it) or a plain CLIP
(``ModelConfig``; mean pooling over frames). Labels: any prompt file (one name per line), scored
through the text tower under a template file; with a checkpoint and no label file, the run's own
training classes (which also works for a ``head: linear`` model).

Clips: the evaluation transform (short side resized, centre crop), card-independent defaults of
8 frames with TSN sampling, 1 clip x 1 crop, all settable. Probabilities are a softmax over the
label list per view (a SigLIP-style sigmoid model: each label's sigmoid), averaged over views.

Localisation models (a checkpoint whose config has a ``task: localization`` dataset) also score
person boxes: a CSV with rows ``video_path,time_sec,x1,y1,x2,y2`` (coordinates normalised to
[0, 1] of the frame, x right, y down; optional header; paths relative to the CSV's folder). One
clip of the run's ``num_frames`` frames ``frame_stride`` apart is centred on each distinct
(video, time); each box gets independent sigmoid probabilities (multi-label), top-k shown.

Making a boxes file: run any person detector on the frame at ``time_sec`` and divide its pixel
boxes by the frame's width and height. With torchvision's COCO detector (label 1 = person)::

    import torch, torchvision
    from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2
    from vlcofit.data.video import open_video
    detector = fasterrcnn_resnet50_fpn_v2(weights="DEFAULT").eval()
    with open_video("my.mp4") as reader, open("boxes.csv", "w") as out:
        out.write("video_path,time_sec,x1,y1,x2,y2\\n")
        for t in (1.0, 2.0, 3.0):
            frame = reader.read([reader.time_to_index(t)])[0]          # uint8 [3, H, W]
            found = detector([frame.float() / 255])[0]
            h, w = frame.shape[1:]
            for box, label, score in zip(found["boxes"], found["labels"], found["scores"]):
                if label == 1 and score > 0.8:
                    x1, y1, x2, y2 = (box / torch.tensor([w, h, w, h])).tolist()
                    out.write(f"my.mp4,{t},{x1:.4f},{y1:.4f},{x2:.4f},{y2:.4f}\\n")
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, get_args

import torch

from ..config.schema import ClipSampling, DataConfig, DatasetCard, ModelConfig, TestCrops
from ..data.annotations import VideoRecord
from ..data.box_transforms import BoxEvalTransform
from ..data.classification import ClassificationDataset
from ..data.loading import build_loader
from ..data.transforms import build_transform
from ..data.video import open_video, read_clip_at
from ..data.video.base import VideoError
from ..errors import InputError, at
from ..eval.classification import extract_embeddings, view_scores
from ..models.prepared import for_inference
from ..models.video import VideoCLIP, build_model
from ..run.model import check_architecture, load_run_model
from ..tasks import task_of
from ..text.prompts import ClassList, read_class_list, read_templates
from ..utils.files import read_text

logger = logging.getLogger(__name__)


@dataclass
class Predictor:
    """A model ready to score videos, its default labels and its clip settings."""
    model: VideoCLIP
    card: DatasetCard  # clip sampling for whole-video predictions (no annotation files)
    templates: str = "text4vis"  # default template file for --labels
    classes: ClassList | None = None  # default labels (a run's training classes)
    rows: torch.Tensor | None = None  # their label-space rows
    box_card: DatasetCard | None = None  # localisation runs: clip length/stride around a keyframe
    box_labels: tuple[ClassList, torch.Tensor, str] | None = None  # its (classes, rows, templates)


def _clip_card(num_frames: int, sampling: str, frame_stride: int, clips: int, crops: int,
               decoder: str) -> DatasetCard:
    if sampling not in get_args(ClipSampling):
        raise InputError(f"--sampling must be one of {', '.join(get_args(ClipSampling))}, "
                         f"got {sampling!r}")
    if crops not in get_args(TestCrops) or clips < 1 or num_frames < 1 or frame_stride < 1:
        raise InputError("--crops must be 1 or 3; --clips, --frames and --stride must be >= 1")
    return DatasetCard(name="predict", prompts="-", num_frames=num_frames, sampling=sampling,
                       frame_stride=frame_stride, test_clips=clips, test_crops=crops,
                       decoder=decoder)


def load_predictor(checkpoint_path: str | None = None, model_cfg: ModelConfig | None = None,
                   config: str | None = None, num_frames: int = 8, sampling: str = "tsn",
                   frame_stride: int = 4, clips: int = 1, crops: int = 1,
                   decoder: str = "pyav") -> Predictor:
    """A fine-tuned model (``checkpoint_path``: checkpoint or run folder; ``config`` defaults to
    the run's config.yaml) or a plain CLIP (``model_cfg``), on CPU."""
    card = _clip_card(num_frames, sampling, frame_stride, clips, crops, decoder)
    if checkpoint_path is None:
        cfg = model_cfg or ModelConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a model without pretrained weights is the same every time
            model = build_model(cfg, [], [])
        return Predictor(model.eval(), card)
    run = load_run_model(checkpoint_path, config=config)
    if model_cfg is not None:
        check_architecture(run.cfg.model, model_cfg, checkpoint_path, "--model/--backbone",
                           keys=("backbone", "name"))
    model, cfg, labels = run.model, run.cfg, run.labels
    used = list(dict.fromkeys(cfg.train.datasets + cfg.eval_datasets)) or list(cfg.datasets)
    used = [n for n in used if task_of(cfg.datasets[n]).has_classes]  # captions name no labels
    loc = [n for n in used if task_of(cfg.datasets[n]).uses_boxes]
    first = ([n for n in used if n not in loc] or used or [None])[0]  # a clip dataset's classes
    if first is None:  # a captions-only run: labels come from --labels
        return Predictor(model.eval(), card)
    predictor = Predictor(model.eval(), card, cfg.datasets[first].templates,
                          labels.classes[first], labels.rows(first))
    if loc:
        predictor.box_card = cfg.datasets[loc[0]]
        predictor.box_labels = (labels.classes[loc[0]], labels.rows(loc[0]),
                                cfg.datasets[loc[0]].templates)
    return predictor


def _text(predictor: Predictor, labels: str | None, templates: str | None
          ) -> tuple[ClassList, torch.Tensor | None]:
    """The label list and its class embeddings [C, E] (None: the model's own classifier rows)."""
    model = predictor.model
    if labels is None:
        if predictor.classes is None:
            raise InputError("--labels: give a label file (one class name per line)")
        if templates is None:
            return predictor.classes, None
        if model.linear is None:  # the run's own classes (maybe coarse groups: no file)
            return predictor.classes, model.embed_texts(predictor.classes.names,
                                                        read_templates(templates))
    if model.linear is not None:
        raise InputError("--labels: this checkpoint has a linear head (model.head: linear), which "
                         "can only score its own training classes; leave out --labels")
    classes = read_class_list(labels)
    return classes, model.embed_texts(classes.names, read_templates(templates or predictor.templates))


def _top(probs: torch.Tensor, names: Sequence[str], k: int) -> list[dict]:
    values, indices = probs.topk(min(k, len(names)))
    return [{"label": names[i], "prob": float(v)} for v, i in zip(values.tolist(), indices.tolist())]


def _why(path: Path, backend: str) -> str:
    """The reason a video cannot be read (for the error message)."""
    try:
        with open_video(path, backend) as reader:
            reader.read([0])
    except VideoError as err:
        return err.reason
    return "could not be decoded"


def predict_videos(predictor: Predictor, videos: Sequence[str | Path], labels: str | None = None,
                   templates: str | None = None, top_k: int = 5, batch_size: int = 8,
                   num_workers: int = 0,
                   stall_timeout: float = DataConfig.stall_timeout) -> list[dict]:
    """One entry per video: ``{"video", "top": [{"label", "prob"}, ...]}`` or ``{"video",
    "error"}`` for a video that cannot be read."""
    from accelerate import Accelerator

    if not videos:
        raise InputError("predict: no videos given")
    model, card = predictor.model, predictor.card
    accelerator = Accelerator(mixed_precision="no")
    model = for_inference(accelerator, model)  # on the GPU where there is one
    classes, text = _text(predictor, labels, templates)
    backbone = predictor.model.backbone
    transform = build_transform(False, backbone.image_size, crops=card.test_crops)
    records = [VideoRecord(Path(v), 0, f"argument {i + 1}") for i, v in enumerate(videos)]
    dataset = ClassificationDataset(records, card, transform, train=False)
    loader = accelerator.prepare(build_loader(dataset, batch_size, False, num_workers,
                                             stall_timeout))
    feats = extract_embeddings(accelerator, model, loader, desc="predict")
    base = accelerator.unwrap_model(model)
    if text is None:
        probs = view_scores(base, feats["emb"], rows=predictor.rows.to(base.logit_scale.device))
    else:
        probs = view_scores(base, feats["emb"], text=text)
    out = []
    for record, ok, p in zip(records, feats["valid"].tolist(), probs):
        entry = {"video": str(record.path)}
        if ok:
            entry["top"] = _top(p, classes.names, top_k)
        else:
            entry["error"] = _why(record.path, card.decoder)
        out.append(entry)
    return out


# --------------------------------------------------------------------------- person boxes

@dataclass(frozen=True)
class BoxRow:
    video: Path
    time: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in [0, 1]
    source: str  # file:line


def read_boxes_csv(path: str | Path) -> list[BoxRow]:
    """Rows ``video_path,time_sec,x1,y1,x2,y2`` (optional header; see the module docstring)."""
    path = Path(path)
    lines = read_text(path, "boxes file").splitlines()
    rows = []
    for number, row in enumerate(csv.reader(lines), start=1):
        row = [c.strip() for c in row]
        if not any(row) or (number == 1 and row and row[0].lower() in ("video", "video_path", "path")):
            continue
        where = at(path, number)
        if len(row) != 6:
            raise InputError(f"{where}: expected video_path,time_sec,x1,y1,x2,y2, got "
                             f"{len(row)} columns")
        try:
            time, *box = (float(v) for v in row[1:])
        except ValueError:
            raise InputError(f"{where}: time and box coordinates must be numbers: {row[1:]}") from None
        x1, y1, x2, y2 = box
        if not math.isfinite(time):
            raise InputError(f"{where}: time_sec must be a finite number of seconds, got {row[1]}")
        if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1) or time < 0:
            raise InputError(f"{where}: need 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1 (normalised "
                             f"coordinates) and time >= 0, got {row[1:]}")
        rows.append(BoxRow(path.parent / row[0], time, (x1, y1, x2, y2), where))
    if not rows:
        raise InputError(f"{path}: no boxes")
    return rows


@torch.no_grad()
def predict_boxes(predictor: Predictor, boxes_csv: str | Path, labels: str | None = None,
                  templates: str | None = None, top_k: int = 5, batch_size: int = 4) -> list[dict]:
    """Per box: ``{"video", "time", "box", "top": [{"label", "prob"}]}`` (sigmoid probabilities)
    or ``{..., "error"}`` when its video cannot be read."""

    model, card = predictor.model, predictor.box_card
    if card is None or model.box_head is None:
        raise InputError("--boxes needs a localisation model: a checkpoint whose config trains a "
                         "`task: localization` dataset")
    rows = read_boxes_csv(boxes_csv)
    _check_times(rows, card.decoder)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    if predictor.box_labels is not None:  # default labels: the localisation dataset's actions
        box_classes, box_rows, box_templates = predictor.box_labels
        predictor = dataclasses.replace(predictor, classes=box_classes, rows=box_rows,
                                        templates=box_templates)
    classes, text = _text(predictor, labels, templates)
    label_rows = None if text is not None else predictor.rows.to(device)
    transform = BoxEvalTransform(model.backbone.image_size)
    frames: dict[tuple[Path, float], list[BoxRow]] = {}
    for row in rows:
        frames.setdefault((row.video, row.time), []).append(row)
    results: dict[BoxRow, dict] = {}
    keys = list(frames)
    for start in range(0, len(keys), batch_size):
        clips, boxes, box_batch, members = [], [], [], []
        for key in keys[start:start + batch_size]:
            try:
                clip = read_clip_at(key[0], key[1], card.num_frames, card.frame_stride, card.decoder)
            except VideoError as err:
                for row in frames[key]:
                    results[row] = {"error": err.reason}
                continue
            video, kept, _ = transform(clip, torch.tensor([r.box for r in frames[key]]))
            box_batch += [len(clips)] * len(kept)
            clips.append(video)
            boxes.append(kept)
            members += frames[key]
        if not clips:
            continue
        emb, token_map = model.encode_video(torch.stack(clips).to(device))
        logits = model.box_logits(token_map, torch.cat(boxes).to(device),
                                  torch.tensor(box_batch, dtype=torch.long, device=device),
                                  rows=label_rows, text=text, context=emb)
        for row, p in zip(members, logits.float().sigmoid().cpu()):
            results[row] = {"top": _top(p, classes.names, top_k)}
    return [{"video": str(r.video), "time": r.time, "box": list(r.box), **results[r]} for r in rows]


def _check_times(rows: list[BoxRow], decoder: str) -> None:
    """Every box's time inside its video, before anything is scored (a time past the end
    would score the last frames, silently). Unreadable videos are reported per box later."""
    durations: dict[Path, float | None] = {}
    for row in rows:
        if row.video not in durations:
            try:
                with open_video(row.video, decoder) as reader:
                    durations[row.video] = reader.num_frames / reader.fps
            except VideoError:
                durations[row.video] = None
        duration = durations[row.video]
        if duration is not None and row.time > duration:
            raise InputError(f"{row.source}: time_sec {row.time:g} is past the end of "
                             f"{row.video} ({duration:.2f} s long)")


def format_predictions(entries: list[dict]) -> str:
    """A text table: one line per video (or box) with its top-k labels and probabilities."""
    lines = []
    for e in entries:
        where = e["video"] + (f" @ {e['time']:g}s [{', '.join(f'{v:.3f}' for v in e['box'])}]"
                              if "box" in e else "")
        if "error" in e:
            lines.append(f"{where}\n    error: {e['error']}")
            continue
        tops = "\n".join(f"    {100 * t['prob']:6.2f} %  {t['label']}" for t in e["top"])
        lines.append(f"{where}\n{tops}")
    return "\n".join(lines)
