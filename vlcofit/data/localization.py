"""AVA-style localisation data: keyframes, person boxes with multi-hot labels, clips around them.

A card with ``task: localization`` and ``format: ava`` names each split's ground-truth CSV
(``card.train`` / ``val`` / ``test``, relative to ``card.root``) and, under ``localization:``,
where the media are, the person proposals, the excluded keyframes and thresholds (see
:class:`vlcofit.config.loading.LocalizationSpec`). Classes are the prompt file's ``id: name`` lines:
label column j is class index j (``ClassList.index_of(id)``), not the AVA id.

Keyframes. Training: the ground-truth keyframes with at least one person box. Evaluation: every
keyframe of the ground truth (``video_id,timestamp`` rows too) minus the excluded ones. Both keep
only keyframes inside ``keyframe_range`` when it is set (AVA: 902-1798).

Boxes. Training: the unique ground-truth boxes, plus, with ``train_proposal_iou``, proposals
whose IoU with a ground-truth box is at least that value, labelled as that box. Evaluation: the
proposals scoring at least ``person_score_threshold``, or the best proposal when none does; a
keyframe without proposals gets the whole frame [0, 0, 1, 1] with score 0 (counted and logged).
Without a proposals file, evaluation uses the ground-truth boxes (score 1) and says so once.

Media. ``media: video``: ``<root>/<videos>/<video_id><video_extension>``, ``num_frames`` frames
``frame_stride`` apart centred on the keyframe time. ``media: frames``:
``<root>/<videos>/<video_id>/<frame_pattern>``, the pattern formatted with the 1-based frame
number (and ``video_id=`` for SlowFast-style names), frame n shown at
``first_frame_time + (n - 1) / fps``; indices are clamped to the frames that exist.

Bad input. Errors (InputError naming file:line or the card field): wrong column counts,
non-numeric fields, coordinates outside [0, 1], x2 < x1 or y2 < y1, action ids not in the prompt
file in TRAINING ground truth (evaluation drops them, as the official evaluator does), missing or
unreadable annotation / proposals / exclusion files, proposals for videos not in the split (a
proposals file of another split). Skipped and counted: missing or corrupt videos, frame folders
and frames (training substitutes another keyframe and lists the path in ``bad``; evaluation
returns ``valid=False``), keyframes without proposals (warned, whole-frame box).
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence, get_args

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image
from torchvision.ops import box_iou

from ..config.schema import DatasetCard, Media
from ..errors import InputError, UnreadableVideosError
from ..text.prompts import ClassList
from ..utils.resources import find
from .ava_formats import (Key, KeyframeBoxes, format_timestamp, group_boxes, read_exclusions,
                          read_groundtruth, read_labelmap, read_proposals, validate_proposal_keys)
from .box_transforms import build_box_transform
from .sampling import SharedEpoch
from .video import check_backend, read_clip_at
from .video.base import VideoError

logger = logging.getLogger(__name__)

MEDIA = get_args(Media)
_STEP = 7919  # a prime: substitutes for a bad training keyframe spread over the dataset
_WHOLE_FRAME = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)


# --------------------------------------------------------------------------- files and records

def class_labelmap(classes: ClassList) -> dict[int, str]:
    """{AVA id: name} of the dataset's classes (the prompt file's ``id: name`` lines)."""
    return dict(zip(classes.ids, classes.names))


def evaluation_labelmap(card: DatasetCard, classes: ClassList) -> dict[int, str]:
    """The classes the metric averages over: ``localization.labelmap`` (a file under root, or a
    shipped prompt name such as ``ava_eval60``), else the dataset's own classes."""
    name = card.localization.labelmap
    if name is None:
        return class_labelmap(classes)
    path = Path(card.root) / name
    return read_labelmap(path if path.is_file() else find("prompts", name))


def _file(card: DatasetCard, relative: str, what: str) -> Path:
    path = Path(card.root) / relative
    if not path.is_file():
        raise InputError(f"{path}: {what} not found (dataset {card.name}, root {card.root!r})")
    return path


def _in_range(card: DatasetCard, keys: Sequence[Key]) -> list[Key]:
    bounds = card.localization.keyframe_range
    if not bounds:
        return list(keys)
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise InputError(f"dataset {card.name}: localization.keyframe_range must be "
                         f"[first, last], got {list(bounds)}")
    return [k for k in keys if bounds[0] <= k[1] <= bounds[1]]


def read_keyframes(card: DatasetCard, split: str, classes: ClassList,
                   train: bool) -> tuple[list[Key], dict[Key, KeyframeBoxes]]:
    """The keyframes of ``split`` (see the module docstring) and the ground-truth boxes of every
    keyframe of the file: {key: KeyframeBoxes(boxes [M, 4], labels [M, C], person_ids [M])}."""
    path = _file(card, card.split_file(split), f"ground truth of split {split}")
    table = read_groundtruth(path, class_labelmap(classes), strict=train)
    boxes = group_boxes(table, classes.ids)
    keys = _in_range(card, table.keys)
    if train:
        keys = [k for k in keys if len(boxes[k].boxes)]
    else:
        excluded = getattr(card.localization, f"exclusions_{split}", None)
        if excluded is not None:
            gone = read_exclusions(_file(card, excluded, "exclusions file"))
            keys = [k for k in keys if k not in gone]
    if not keys:
        raise InputError(f"{path}: no {'training ' if train else ''}keyframes "
                         f"(dataset {card.name}, split {split})")
    logger.info("dataset %s/%s: %d keyframes", card.name, split, len(keys))
    return keys, boxes


def read_split_proposals(card: DatasetCard, split: str, videos: set[str]) -> dict | None:
    """Proposals of ``split`` ({key: [N, 5] x1, y1, x2, y2, score}) or None when none are set.

    Proposals may cover keyframes absent from the ground truth (AVA's cover every keyframe) but
    not ``videos`` absent from it (the split's videos): that is another split's file, an
    InputError naming it."""
    relative = getattr(card.localization, f"proposals_{split}", None)
    if relative is None:
        return None
    path = _file(card, relative, f"proposals of split {split}")
    proposals = read_proposals(path)
    foreign = {k: v for k, v in proposals.items() if k[0] not in videos}
    if foreign:  # raises, naming the file and the first keys
        validate_proposal_keys(foreign, (), f"{path} (proposals for videos not in split {split})")
    return proposals


def train_instance_counts(card: DatasetCard, classes: ClassList) -> np.ndarray:
    """Training (box, label) instances per class -> int64 ``[C]`` (for head/mid/tail groups)."""
    keys, boxes = read_keyframes(card, "train", classes, train=True)
    labels = np.concatenate([boxes[k].labels for k in keys])
    return labels.sum(0).round().astype(np.int64)


# --------------------------------------------------------------------------- media

class _FrameFolders:
    """Reads clips from folders of extracted frames (``media: frames``)."""

    def __init__(self, card: DatasetCard) -> None:
        self.spec, self.card = card.localization, card
        self.root = Path(card.root) / self.spec.videos
        self._last: dict[str, int] = {}
        try:
            names = {self.spec.frame_pattern.format(n, video_id="v") for n in (1, 2)}
        except (KeyError, IndexError, ValueError) as err:
            names = {repr(err)}
        if len(names) != 2:
            raise InputError(f"dataset {card.name}: localization.frame_pattern "
                             f"{self.spec.frame_pattern!r} must name frame n with '{{}}' "
                             f"(e.g. img_{{:05d}}.jpg; also {{video_id}}) ({names.pop()})")

    def _frame(self, video_id: str, n: int) -> Path:
        return self.root / video_id / self.spec.frame_pattern.format(n, video_id=video_id)

    def last_frame(self, video_id: str) -> int:
        """Number of the last frame of the folder (an exponential then binary search)."""
        if video_id not in self._last:
            if not self._frame(video_id, 1).is_file():
                raise VideoError(self._frame(video_id, 1), "no such frame (frame folder missing "
                                 "or frame_pattern / first frame number wrong)")
            low, high = 1, 2
            while self._frame(video_id, high).is_file():
                low, high = high, high * 2
            while high - low > 1:
                mid = (low + high) // 2
                low, high = (mid, high) if self._frame(video_id, mid).is_file() else (low, mid)
            self._last[video_id] = low
        return self._last[video_id]

    def read(self, video_id: str, seconds: float) -> torch.Tensor:
        """uint8 ``[T, 3, H, W]`` centred on the frame shown at ``seconds``."""
        card, spec = self.card, self.spec
        last = self.last_frame(video_id)
        centre = int(round((seconds - spec.first_frame_time) * spec.fps)) + 1
        numbers = [min(max(centre + (k - card.num_frames // 2) * card.frame_stride, 1), last)
                   for k in range(card.num_frames)]
        images = {}
        for n in sorted(set(numbers)):
            path = self._frame(video_id, n)
            try:
                with warnings.catch_warnings():  # 0.29 announces a move to TorchCodec
                    warnings.simplefilter("ignore", DeprecationWarning)
                    images[n] = decode_image(str(path), mode=ImageReadMode.RGB)
            except (RuntimeError, OSError) as err:
                raise VideoError(path, f"cannot read frame ({str(err).splitlines()[-1]})") from None
        if len({tuple(im.shape) for im in images.values()}) > 1:
            raise VideoError(self.root / video_id, "frames of different sizes")
        return torch.stack([images[n] for n in numbers])


# --------------------------------------------------------------------------- dataset

class LocalizationDataset(Dataset):
    """Keyframe clips with person boxes (see the module docstring for keyframes and boxes).

    Items are dicts: ``video`` float ``[T, 3, S, S]``; ``boxes`` ``[M, 4]`` normalised to the
    transformed frame; ``orig_boxes`` ``[M, 4]`` normalised to the original frame; ``labels``
    ``[M, C]`` multi-hot (zeros in evaluation); ``box_scores`` ``[M]``; ``key``
    (video_id, timestamp); ``valid``; ``bad`` (paths that failed); ``index``. M >= 1.
    Training randomness is a function of (seed, epoch, index): call ``set_epoch`` each epoch.
    """


    @staticmethod
    def collate(batch):
        """The loader's ``collate_fn`` for these items (:func:`collate_boxes`)."""
        return collate_boxes(batch)
    def __init__(self, card: DatasetCard, split: str, classes: ClassList, image_size: int,
                 train: bool, seed: int = 0,
                 backend: str | None = None, max_tries: int | None = None) -> None:
        if card.task != "localization" or card.format != "ava":
            raise InputError(f"dataset {card.name}: LocalizationDataset needs task: localization "
                             f"and format: ava (got {card.task}, {card.format})")
        spec = card.localization
        if spec.media not in MEDIA:
            raise InputError(f"dataset {card.name}: localization.media must be one of {MEDIA}, "
                             f"got {spec.media!r}")
        self.card, self.split, self.classes, self.train = card, split, classes, train
        self.seed, self.max_tries = seed, max_tries
        self._epoch = SharedEpoch()
        self.backend = backend or card.decoder
        check_backend(self.backend)
        self.keys, self.gt = read_keyframes(card, split, classes, train)
        self.proposals = None
        if not train or spec.train_proposal_iou is not None:
            self.proposals = read_split_proposals(card, split, {v for v, _ in self.gt})
            self._report_proposals()
        self.transform = build_box_transform(train, image_size, flip=card.hflip,
                                             scale=(card.min_crop_scale, 1.0))
        self._frames = _FrameFolders(card) if spec.media == "frames" else None

    def _report_proposals(self) -> None:
        """Say once how many keyframes go without proposals (or the proposals file)."""
        where = f"dataset {self.card.name}/{self.split}"
        if self.proposals is None:
            if self.train:
                logger.warning("%s: train_proposal_iou is set but localization.proposals_%s "
                               "is not; training on ground-truth boxes only", where, self.split)
            else:
                empty = sum(not len(self.gt[k].boxes) for k in self.keys)
                logger.warning("%s: no proposals file (localization.proposals_%s); evaluating "
                               "on the ground-truth boxes (%d keyframes without any get the "
                               "whole frame, score 0)", where, self.split, empty)
            return
        missing = sum(not len(self.proposals.get(k, ())) for k in self.keys)
        if missing:
            logger.warning("%s: %d of %d keyframes have no proposals%s", where, missing,
                           len(self.keys), "" if self.train else
                           "; they get the whole frame as their box (score 0)")

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.keys)

    def source(self, i: int) -> str:
        """The media item ``i`` reads, and its keyframe (stall messages)."""
        key = self.keys[i % len(self.keys)]
        return f"{self.media_path(key)} (keyframe {key[1]})"

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not self.train:
            return self._eval_item(i)
        later, i = divmod(i, len(self.keys))  # an EpochBatches index: epoch and keyframe
        return self._train_item(i, later)

    def media_path(self, key: Key) -> Path:
        """The video file or frame folder of a keyframe."""
        spec = self.card.localization
        folder = Path(self.card.root) / spec.videos
        if spec.media == "video":
            return folder / f"{key[0]}{spec.video_extension}"
        return folder / key[0]

    def read_clip(self, key: Key) -> torch.Tensor:
        """uint8 ``[T, 3, H, W]`` centred on the keyframe; VideoError if unreadable."""
        if self._frames is not None:
            return self._frames.read(key[0], float(key[1]))
        return read_clip_at(self.media_path(key), float(key[1]), self.card.num_frames,
                            self.card.frame_stride, self.backend)

    # ---- boxes
    def train_boxes(self, key: Key) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ground-truth boxes [M, 4], labels [M, C], scores [M] (1.0), plus matched proposals."""
        gt = self.gt[key]
        boxes, labels, scores = gt.boxes, gt.labels, np.ones(len(gt.boxes), np.float32)
        threshold = self.card.localization.train_proposal_iou
        found = self.proposals.get(key) if self.proposals is not None else None
        if threshold is not None and found is not None and len(found):
            iou = box_iou(torch.from_numpy(found[:, :4]), torch.from_numpy(gt.boxes))
            best, match = iou.max(1)
            take = (best >= threshold).numpy()
            boxes = np.concatenate([boxes, found[take, :4]])
            labels = np.concatenate([labels, gt.labels[match.numpy()[take]]])
            scores = np.concatenate([scores, found[take, 4]])
        return boxes, labels, scores

    def eval_boxes(self, key: Key) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation boxes [M, 4] and scores [M] of a keyframe (see the module docstring)."""
        if self.proposals is None:
            found = self.gt[key].boxes
            found = np.concatenate([found, np.ones((len(found), 1), np.float32)], 1)
        else:
            found = self.proposals.get(key, np.zeros((0, 5), np.float32))
        if not len(found):
            return _WHOLE_FRAME.copy(), np.zeros(1, np.float32)
        keep = found[:, 4] >= self.card.localization.person_score_threshold
        if not keep.any():
            keep = np.argmax(found[:, 4])[None]
        return found[keep, :4].copy(), found[keep, 4].copy()

    # ---- items
    def _train_item(self, i: int, later: int = 0) -> dict[str, Any]:
        """Keyframe ``i`` or, if its clip cannot be read, the next readable one (``max_tries``
        at most, default all); the trainer counts the bad ones against max_bad_fraction.
        ``later``: epochs past ``set_epoch``'s (an :class:`EpochBatches` index)."""
        n, bad = len(self.keys), []
        step = _STEP if n % _STEP else 1
        tries = n if self.max_tries is None else min(self.max_tries, n)
        for k in range(tries):
            j = (i + k * step) % n
            key = self.keys[j]
            try:
                frames = self.read_clip(key)
            except VideoError as err:
                logger.debug("unreadable training clip, substituting: %s", err)
                bad.append(err.path)
                continue
            boxes, labels, scores = self.train_boxes(key)
            rng = self._epoch.generator(self.seed, j, later)
            with torch.random.fork_rng(devices=[]):  # v2 transforms draw from the global RNG
                torch.manual_seed(int(rng.integers(2**62)))
                video, out, keep = self.transform(frames, torch.from_numpy(boxes))
            keep = keep.numpy()
            return self._item(video, out, boxes[keep], labels[keep], scores[keep], j, True, bad)
        raise UnreadableVideosError(f"dataset {self.card.name}: {tries} unreadable clips in a row "
                           f"from keyframe {i} ({_show(self.keys[i])}), e.g. {bad[0]}; is root "
                           f"{self.card.root!r} (localization.videos "
                           f"{self.card.localization.videos!r}) right?")

    def _eval_item(self, i: int) -> dict[str, Any]:
        key = self.keys[i]
        boxes, scores = self.eval_boxes(key)
        labels = np.zeros((len(boxes), len(self.classes)), np.float32)
        try:
            video, out, _ = self.transform(self.read_clip(key), torch.from_numpy(boxes))
            valid, bad = True, []
        except VideoError as err:
            logger.debug("unreadable evaluation clip: %s", err)
            size, out = self.transform.image_size, torch.from_numpy(boxes)
            video = torch.zeros(self.card.num_frames, 3, size, size, dtype=torch.uint8)
            valid, bad = False, [err.path]
        return self._item(video, out, boxes, labels, scores, i, valid, bad)

    def _item(self, video, boxes, orig, labels, scores, index, valid, bad) -> dict[str, Any]:
        return {"video": video, "boxes": boxes.float(),
                "orig_boxes": torch.as_tensor(orig, dtype=torch.float32),
                "labels": torch.as_tensor(labels, dtype=torch.float32),
                "box_scores": torch.as_tensor(scores, dtype=torch.float32),
                "key": self.keys[index], "valid": valid, "bad": bad, "index": index}


def _show(key: Key) -> str:
    return f"{key[0]},{format_timestamp(key[1])}"


def collate_boxes(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Items -> the localisation batch: ``video`` [B, T, 3, S, S]; ``boxes``, ``orig_boxes``
    [K, 4]; ``box_batch`` long [K] (sample of each box); ``labels`` [K, C]; ``box_scores`` [K];
    ``keys`` list of B keys; ``valid`` bool [B]; ``bad`` list of paths; ``index`` long [B]."""
    counts = torch.tensor([len(item["boxes"]) for item in batch])
    return {
        "video": torch.stack([item["video"] for item in batch]),
        "boxes": torch.cat([item["boxes"] for item in batch]),
        "orig_boxes": torch.cat([item["orig_boxes"] for item in batch]),
        "box_batch": torch.repeat_interleave(torch.arange(len(batch)), counts),
        "labels": torch.cat([item["labels"] for item in batch]),
        "box_scores": torch.cat([item["box_scores"] for item in batch]),
        "keys": [item["key"] for item in batch],
        "valid": torch.tensor([item["valid"] for item in batch], dtype=torch.bool),
        "bad": [path for item in batch for path in item["bad"]],
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),
    }
