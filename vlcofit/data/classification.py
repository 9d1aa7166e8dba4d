"""Video classification data: the records of an annotation (:mod:`vlcofit.data.annotations`)
-> a torch Dataset of clips.

Missing video files are not annotation errors: a large dataset always has some, and they are
found (and skipped or counted) when read. Only a training split where none of a spread sample
of the videos exists (a wrong ``root``) is an InputError, when the dataset is built, before
training starts.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset

from ..config.schema import DatasetCard
from ..errors import InputError, UnreadableVideosError
from ..text.prompts import ClassList
from .annotations import VideoRecord, read_records
from .sampling import SharedEpoch, sample_indices
from .video import check_backend, open_video
from .video.base import VideoError

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- dataset

_STEP = 7919  # a prime: substitutes for a bad training video spread over the dataset
_CHECKED = 16  # training videos looked for up front, spread over the split


def _where_videos_are(card: DatasetCard, record: VideoRecord) -> str:
    """Advice for a card whose videos are not found: which part of the path to fix."""
    root = Path(card.root)
    if root not in record.path.parents:  # the annotation file gave an absolute path
        return ("the annotation file lists absolute paths, which the card's root does not "
                "change: fix them there, or make them relative to root")
    state = "" if root.is_dir() else " (it does not exist)"
    return (f"is root {card.root!r} right{state}? The annotation's paths are relative to it: "
            f"--set datasets.{card.name}.root=/path/to/videos")


def check_videos_found(records: Sequence[VideoRecord], card: DatasetCard) -> None:
    """InputError when none of a spread sample of ``records``' video files exists: the card's
    root (or the annotation file's paths) must be wrong. Some missing videos are normal: training
    skips and counts them."""
    n = len(records)
    sample = [records[i * n // min(n, _CHECKED)] for i in range(min(n, _CHECKED))]
    if not sample or any(r.path.exists() for r in sample):
        return
    first = sample[0]
    raise InputError(f"dataset {card.name}: none of {len(sample)} of its {n} videos checked "
                     f"exists, e.g. {first.path} (from {first.source}); "
                     f"{_where_videos_are(card, first)}")


class ClassificationDataset(Dataset):
    """Clips of labelled videos.

    Items are dicts: ``video`` float ``[T, 3, S, S]`` (training) or ``[V, T, 3, S, S]``
    (evaluation, V = test_clips x crops, clip-major), ``label`` int, ``index`` the record used,
    ``valid`` bool, ``bad`` the paths that failed to decode.

    Training replaces an unreadable video by another record chosen deterministically from the
    index (so every process keeps its batch size); evaluation returns zeros with ``valid=False``.
    Training randomness is a function of (seed, epoch, record index): the epoch is ``set_epoch``'s
    plus ``i // len`` for an index ``i`` past the records (:class:`EpochBatches`).
    The transform must have ``image_size`` (and ``crops`` in evaluation), as those of
    :func:`vlcofit.data.transforms.build_transform` do.
    """


    @staticmethod
    def collate(batch):
        """The loader's ``collate_fn`` for these items (:func:`collate`)."""
        return collate(batch)
    def __init__(self, records: Sequence[VideoRecord], card: DatasetCard,
                 transform: Callable[[torch.Tensor], torch.Tensor], train: bool, seed: int = 0,
                 backend: str | None = None, max_tries: int | None = None) -> None:
        if not records:
            raise InputError(f"dataset {card.name}: no videos")
        self.records = list(records)
        self.card, self.transform, self.train = card, transform, train
        self.seed, self.max_tries = seed, max_tries
        self._epoch = SharedEpoch()
        self.backend = backend or card.decoder
        check_backend(self.backend)
        if train and len(self.records) >= 10:  # a smaller set fails at its first item
            check_videos_found(self.records, card)

    @classmethod
    def from_card(cls, card: DatasetCard, split: str, classes: ClassList | Sequence[str],
                  transform: Callable[[torch.Tensor], torch.Tensor], train: bool,
                  seed: int = 0) -> ClassificationDataset:
        """Read ``split``'s records from ``card`` and build the dataset."""
        return cls(read_records(card, split, classes), card, transform, train, seed)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def source(self, i: int) -> str:
        """The video item ``i`` reads first, and where its record was read (stall messages)."""
        record = self.records[i % len(self.records)]
        return f"{record.path} (from {record.source})"

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not self.train:
            return self._eval_item(i)
        later, i = divmod(i, len(self.records))  # an EpochBatches index: epoch and record
        return self._train_item(i, later)

    def _train_item(self, i: int, later: int = 0) -> dict[str, Any]:
        """A readable video: record ``i`` or, if it cannot be decoded, the next readable one
        (``max_tries`` at most, default every record), the unreadable ones listed in ``bad``.
        The trainer counts them and fails past ``train.max_bad_fraction``, so that is the limit
        users see, not an arbitrary run of bad videos in a row."""
        n, bad = len(self.records), []
        step = _STEP if n % _STEP else 1
        tries = n if self.max_tries is None else min(self.max_tries, n)
        for k in range(tries):
            j = (i + k * step) % n
            record = self.records[j]
            try:
                video = self._train_clip(record, j, later)
            except VideoError as err:
                logger.debug("unreadable training video, substituting: %s", err)
                bad.append(str(record.path))
                continue
            return {"video": video, "label": record.label, "index": j, "valid": True, "bad": bad}
        record = self.records[i]
        if all(not Path(p).exists() for p in bad):
            advice = f"no such files; {_where_videos_are(self.card, record)}"
        else:
            advice = "corrupt or undecodable files? (see the log with VLCOFIT_LOG=debug)"
        raise UnreadableVideosError(f"dataset {self.card.name}: {tries} unreadable videos "
                                    f"in a row from record {i} ({record.source}), e.g. {bad[0]}: "
                                    f"{advice}")

    def _train_clip(self, record: VideoRecord, j: int, later: int = 0) -> torch.Tensor:
        """``[T, 3, S, S]``; frames and augmentation drawn from (seed, epoch, j)."""
        rng = self._epoch.generator(self.seed, j, later)
        card = self.card
        with open_video(record.path, self.backend) as reader:
            (indices,) = sample_indices(reader.num_frames, card.num_frames, card.sampling,
                                        card.frame_stride, train=True, rng=rng)
            frames = reader.read(indices)
        with torch.random.fork_rng(devices=[]):  # v2 transforms draw from the global RNG
            torch.manual_seed(int(rng.integers(2**62)))
            return self.transform(frames)

    def _eval_item(self, i: int) -> dict[str, Any]:
        record = self.records[i]
        try:
            video, valid, bad = self._eval_views(record), True, []
        except VideoError as err:
            logger.debug("unreadable evaluation video: %s", err)
            video = torch.zeros(self._eval_shape(), dtype=torch.uint8)
            valid, bad = False, [str(record.path)]
        return {"video": video, "label": record.label, "index": i, "valid": valid, "bad": bad}

    def _eval_views(self, record: VideoRecord) -> torch.Tensor:
        """``[test_clips * crops, T, 3, S, S]``, all clips from one decoding pass."""
        card, t = self.card, self.card.num_frames
        with open_video(record.path, self.backend) as reader:
            clips = sample_indices(reader.num_frames, t, card.sampling, card.frame_stride,
                                   train=False, num_clips=card.test_clips)
            frames = reader.read([index for clip in clips for index in clip])
        return torch.cat([self.transform(frames[c * t:(c + 1) * t]) for c in range(len(clips))])

    def _eval_shape(self) -> tuple[int, ...]:
        size = self.transform.image_size
        views = self.card.test_clips * getattr(self.transform, "crops", 1)
        return (views, self.card.num_frames, 3, size, size)


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items: ``video`` ``[B, ...]``, ``label``/``index`` LongTensor ``[B]``,
    ``valid`` BoolTensor ``[B]``, ``bad`` one list of the failed paths."""
    return {
        "video": torch.stack([item["video"] for item in batch]),
        "label": torch.tensor([item["label"] for item in batch], dtype=torch.long),
        "index": torch.tensor([item["index"] for item in batch], dtype=torch.long),
        "valid": torch.tensor([item.get("valid", True) for item in batch], dtype=torch.bool),
        "bad": [path for item in batch for path in item.get("bad", [])],
    }
