"""Video-caption data: annotation formats -> records (a video and its captions) -> clips.

Formats (``card.format`` of a ``task: captions`` card; adding one = one function in
``FORMATS``); paths are relative to ``card.root``:

- ``csv``: ``path,caption`` per line, optional header ``path,caption``; a video may have several
  lines (one caption each). A caption holding commas may be quoted or not: everything after
  the first comma is the caption.
- ``msrvtt``: JSON list of ``{"video": path, "caption": text or [texts]}`` objects (the MSR-VTT
  style of CLIP4Clip-derived annotation files), or JSON Lines (a ``.jsonl`` file: one object a
  line); entries naming the same video are merged. Or the official ``*_videodatainfo.json``
  (``videos`` with their split, ``sentences``): the card split's videos, 20 captions each.
- ``webvid``: the WebVid CSV (header ``videoid,contentUrl,duration,page_dir,name``, columns
  matched by name; ``name`` is the caption); the file is ``{page_dir}/{videoid}.mp4`` unless
  the card sets ``filename_pattern`` (filled from the row's columns).

Captions are free text: no prompt file, no templates. An empty caption, a malformed line or entry
is an InputError naming the file and line (or entry). Missing videos are not: as for
classification, training substitutes and counts them, evaluation counts and leaves them out.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..config.schema import DatasetCard
from ..errors import InputError, at
from ..utils.files import read_text
from .annotations import annotation_file, header_rows, text_lines
from .classification import ClassificationDataset, collate as collate_clips

logger = logging.getLogger(__name__)

WEBVID_PATTERN = "{page_dir}/{videoid}.mp4"
_CAPTION_STREAM = 1  # keeps the caption draw apart from the clip's draws of the same item


@dataclass(frozen=True)
class CaptionRecord:
    """One video and its captions; ``source`` is where it was first declared (``file:line``)."""
    path: Path
    captions: tuple[str, ...]
    source: str
    label: int = -1  # no class; the clip-reading code shared with classification passes it on


def _caption(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{where}: a caption must be text, got {text!r}")
    text = " ".join(text.split())
    if not text:
        raise InputError(f"{where}: empty caption")
    return text


def _group(rows: Sequence[tuple[Path, str, str]]) -> list[CaptionRecord]:
    """(video path, caption, where) rows -> one record per video, in first-seen order."""
    by_path: dict[Path, tuple[list[str], str]] = {}
    for path, caption, where in rows:
        by_path.setdefault(path, ([], where))[0].append(caption)
    return [CaptionRecord(p, tuple(c), w) for p, (c, w) in by_path.items()]


# --------------------------------------------------------------------------- formats

def read_caption_csv(card: DatasetCard, split: str) -> list[CaptionRecord]:
    """``path,caption`` lines, optional ``path,caption`` header."""
    path, root = annotation_file(card, split), Path(card.root)
    rows: list[tuple[Path, str, str]] = []
    for number, text in text_lines(path):
        row = next(csv.reader([text]))  # cells unstripped: an unquoted ", " stays in the caption
        if not rows and [c.strip().lower() for c in row] == ["path", "caption"]:  # the header
            continue
        where = at(path, number)
        if len(row) < 2 or not row[0].strip():
            raise InputError(f"{where}: expected 'path,caption', got {text!r}")
        rows.append((root / row[0].strip(), _caption(",".join(row[1:]), where), where))
    return _group(rows)


def _json_entries(path: Path) -> list[tuple[str, Any]]:
    """(where, entry) of a JSON list (``file: entry i``) or a JSON Lines file (``file:line``)."""
    text = read_text(path, "caption JSON")
    if path.suffix.lower() == ".jsonl":
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append((at(path, number), json.loads(line)))
                except json.JSONDecodeError as err:
                    raise InputError(f"{at(path, number)}: invalid JSON ({err.msg})") from None
        return entries
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = " (one object a line? name the file .jsonl)" if err.msg == "Extra data" else ""
        raise InputError(f"{at(path, err.lineno)}: invalid JSON ({err.msg}){hint}") from None
    if isinstance(data, dict) and {"videos", "sentences"} <= set(data):
        return _official_msrvtt(path, data)
    if not isinstance(data, list):
        raise InputError(f"{at(path)}: expected a JSON list of {{\"video\", \"caption\"}} objects "
                         f"or the official MSR-VTT videodatainfo object")
    return [(f"{path}: entry {i}", entry) for i, entry in enumerate(data)]


# the official files' split names by card split (train_val_videodatainfo.json: train + validate)
_OFFICIAL_SPLITS = {"train": "train", "val": "validate", "test": "test"}


def _official_msrvtt(path: Path, data: dict) -> list[tuple[str, Any]]:
    """The official MSR-VTT ``*_videodatainfo.json`` (``{"videos": [{"video_id", "split"}],
    "sentences": [{"video_id", "caption"}]}``) as ``{"video", "caption", "split"}`` entries, one
    per video in the file's order; ``split`` is the card split it belongs to."""
    if not isinstance(data["videos"], list) or not isinstance(data["sentences"], list):
        raise InputError(f"{at(path)}: 'videos' and 'sentences' must be lists")
    splits, captions = {}, {}
    for i, video in enumerate(data["videos"]):
        if not isinstance(video, dict) or not isinstance(video.get("video_id"), str) \
                or video.get("split") not in _OFFICIAL_SPLITS.values():
            raise InputError(f"{path}: videos[{i}]: expected {{'video_id': str, 'split': "
                             f"train|validate|test}}, got {str(video)[:80]!r}")
        splits[video["video_id"]] = video["split"]
        captions[video["video_id"]] = []
    for i, sentence in enumerate(data["sentences"]):
        vid = sentence.get("video_id") if isinstance(sentence, dict) else None
        if vid not in captions or "caption" not in sentence:
            raise InputError(f"{path}: sentences[{i}]: expected {{'video_id', 'caption'}} naming "
                             f"a video of 'videos', got {str(sentence)[:80]!r}")
        captions[vid].append(sentence["caption"])
    card_split = {v: k for k, v in _OFFICIAL_SPLITS.items()}
    return [(f"{path}: video {vid}", {"video": vid, "caption": captions[vid] or None,
                                      "split": card_split[splits[vid]]}) for vid in captions]


def read_msrvtt(card: DatasetCard, split: str) -> list[CaptionRecord]:
    """MSR-VTT-style JSON / JSON Lines: ``{"video": path, "caption": text or [texts]}``; or the
    official ``videodatainfo.json``: the videos of ``split`` (val: the file's "validate"), each
    file ``filename_pattern`` filled with ``video_id`` (default ``{video_id}.mp4``)."""
    path, root = annotation_file(card, split), Path(card.root)
    rows: list[tuple[Path, str, str]] = []
    for where, entry in _json_entries(path):
        if not isinstance(entry, dict) or "video" not in entry or "caption" not in entry:
            raise InputError(f"{where}: expected an object with 'video' and 'caption', "
                             f"got {str(entry)[:80]!r}")
        if "split" in entry:  # an official file's video
            if entry["split"] != split:
                continue
            entry = {**entry, "video": _official_name(card, entry["video"])}
        video, captions = entry["video"], entry["caption"]
        if not isinstance(video, str) or not video.strip():
            raise InputError(f"{where}: field 'video' must be a path, got {video!r}")
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not captions:
            raise InputError(f"{where}: field 'caption' must be a text or a non-empty list")
        for k, caption in enumerate(captions):
            rows.append((root / video.strip(), _caption(caption, f"{where}: caption[{k}]"), where))
    return _group(rows)


def _official_name(card: DatasetCard, video_id: str) -> str:
    default = DatasetCard.__dataclass_fields__["filename_pattern"].default  # Kinetics'
    pattern = "{video_id}.mp4" if card.filename_pattern == default else card.filename_pattern
    try:
        return pattern.format(video_id=video_id)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(f"dataset {card.name}: filename_pattern {pattern!r} cannot be filled "
                         f"from an MSR-VTT video_id (only {{video_id}}): {err!r}") from None


_WEBVID_COLUMNS = ("videoid", "name")


def read_webvid(card: DatasetCard, split: str) -> list[CaptionRecord]:
    """The WebVid CSV (``videoid,contentUrl,duration,page_dir,name``): ``name`` is the caption."""
    path, root = annotation_file(card, split), Path(card.root)
    lines = text_lines(path)
    if not lines:
        return []
    pattern = _webvid_pattern(card)
    needed = list(_WEBVID_COLUMNS) + (["page_dir"] if pattern == WEBVID_PATTERN else [])
    rows: list[tuple[Path, str, str]] = []
    for where, _, fields in header_rows(path, lines, needed, "WebVid"):
        try:
            name = pattern.format(**fields)
        except (KeyError, IndexError, ValueError) as err:
            raise InputError(f"dataset {card.name}: filename_pattern {pattern!r} cannot be filled "
                             f"from {where} (columns: {', '.join(fields)}): {err!r}") from None
        rows.append((root / name, _caption(fields["name"], f"{where}: column 'name'"), where))
    return _group(rows)


def _webvid_pattern(card: DatasetCard) -> str:
    """The card's ``filename_pattern`` if it sets one, else WebVid's own layout (the field's
    default is the Kinetics pattern, which WebVid rows cannot fill)."""
    default = DatasetCard.__dataclass_fields__["filename_pattern"].default
    return WEBVID_PATTERN if card.filename_pattern == default else card.filename_pattern


FORMATS: dict[str, Callable[[DatasetCard, str], list[CaptionRecord]]] = {
    "csv": read_caption_csv, "msrvtt": read_msrvtt, "webvid": read_webvid,
}


def read_caption_records(card: DatasetCard, split: str) -> list[CaptionRecord]:
    """The captioned videos of ``split`` (train/val/test), read per ``card.format``."""
    if card.format not in FORMATS:
        raise InputError(f"dataset {card.name}: format {card.format!r} is not a caption format "
                         f"(task: captions reads {', '.join(FORMATS)})")
    records = FORMATS[card.format](card, split)
    if not records:
        raise InputError(f"dataset {card.name}: split {split} ({card.split_file(split)} under "
                         f"{card.root}) has no captions")
    logger.info("dataset %s/%s: %d videos, %d captions", card.name, split, len(records),
                sum(len(r.captions) for r in records))
    return records


# --------------------------------------------------------------------------- dataset

class CaptionDataset(ClassificationDataset):
    """Clips of captioned videos: the classification dataset's clips (decoding, sampling,
    transforms, unreadable-video handling), and captions in place of a label.

    Training items add ``caption`` (str): one of the clip's record's captions, drawn from
    (seed, epoch, record index), so a resumed run draws what the uninterrupted one did.
    Evaluation items add ``captions`` (tuple of str): all of them (each caption is a query).
    """


    @staticmethod
    def collate(batch):
        """The loader's ``collate_fn`` for these items (:func:`collate`)."""
        return collate(batch)
    def __init__(self, records: Sequence[CaptionRecord], card: DatasetCard,
                 transform: Callable[[torch.Tensor], torch.Tensor], train: bool,
                 seed: int = 0, **kwargs: Any) -> None:
        super().__init__(records, card, transform, train, seed, **kwargs)
        # padded width of an evaluation batch's captions (the same on every process)
        self.max_captions = max(len(r.captions) for r in self.records)

    @classmethod
    def from_card(cls, card: DatasetCard, split: str, classes: Any,
                  transform: Callable[[torch.Tensor], torch.Tensor], train: bool,
                  seed: int = 0) -> CaptionDataset:
        """Read ``split``'s records from ``card`` (``classes`` unused: captions have none)."""
        return cls(read_caption_records(card, split), card, transform, train, seed)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        j = item["index"]
        record = self.records[j]  # in training, possibly a readable substitute for record i
        if self.train:
            epoch = self._epoch.epoch(i // len(self.records))  # as the clip's (EpochBatches)
            rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, j, _CAPTION_STREAM])
            item["caption"] = record.captions[int(rng.integers(len(record.captions)))]
        else:
            item["captions"] = record.captions
        return item


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The clips' collate (``video``, ``index``, ``valid``, ``bad``), plus ``caption`` (list
    of B str, training) or ``captions`` (list of B tuples of str, evaluation)."""
    out = collate_clips(batch)
    del out["label"]  # no classes
    key = "caption" if "caption" in batch[0] else "captions"
    out[key] = [item[key] for item in batch]
    return out
