"""Video classification annotations: formats -> labelled video records.

Formats (``card.format``; adding one = one function in ``FORMATS``); paths are relative to
``card.root``:

- ``csv``: ``path,label`` per line, optional header ``path,label``; label = class name or index.
- ``list``: ``path label`` (whitespace-separated, mmaction style); label = 0-based index or name.
- ``folder``: ``<root>/<split folder>/<class name>/<video>``.
- ``kinetics``: the official CSV (``label,youtube_id,time_start,time_end,split[,is_cc]``, any
  column order); the file name comes from ``card.filename_pattern``.
- ``ucf101``: the official split lists (``Class/v_Class_g01_c01.avi [1-based label]``); the class
  is the path's folder, so train and test lists read alike.
- ``hmdb51``: the official split files, ``card.<split>`` a glob such as
  ``splits/*_test_split1.txt``; lines ``video.avi 0|1|2`` (1 = train, 2 = test).
- ``ssv2``: the official JSON (``[{"id", "template", ...}]``); class = template without
  brackets, file name from ``card.filename_pattern`` with ``{id}``.

Bad annotations are InputErrors naming file and line. Missing video files are not: a large
dataset always has some, and they are found (and skipped or counted) when read
(:mod:`vlcofit.data.classification`).
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config.schema import DatasetCard
from ..errors import InputError, at
from ..text.hierarchy import read_hierarchy
from ..text.prompts import ClassList, canonical_name
from ..utils.files import read_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video; ``source`` is where it was declared (``file:line``), for messages."""
    path: Path
    label: int
    source: str


# --------------------------------------------------------------------------- helpers

def _as_classes(classes: ClassList | Sequence[str]) -> ClassList:
    return classes if isinstance(classes, ClassList) else ClassList.from_names(list(classes))


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-empty lines of a text file."""
    text = read_text(path, "annotation file")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _label(classes: ClassList, text: str, where: str) -> int:
    """Class index of a label written as an index (id) or a class name."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        index = classes.find_index(int(text))
        if index is None:
            ids = "0..%d" % (len(classes) - 1) if classes.ids == tuple(range(len(classes))) \
                else "ids as in the file"
            raise InputError(f"{where}: label index {text} is out of range for the prompt file "
                             f"{classes.path} ({len(classes)} classes, {ids})")
        return index
    index = classes.find_index(text) if text else None
    if index is None:
        keys = {canonical_name(n): n for n in classes.names}
        close = difflib.get_close_matches(canonical_name(text), list(keys), n=3)
        hint = f"; close names: {', '.join(repr(keys[c]) for c in close)}" if close else ""
        raise InputError(f"{where}: label {text!r} is not in the prompt file {classes.path}{hint}")
    return index


def annotation_file(card: DatasetCard, split: str) -> Path:
    path = Path(card.root) / card.split_file(split)
    if not path.exists():
        raise InputError(f"{path}: annotation file not found (dataset {card.name}, split {split}; "
                         f"root {card.root!r} + {split}: {card.split_file(split)!r})")
    return path


def _csv_row(text: str) -> list[str]:
    return [c.strip() for c in next(csv.reader([text]))]


# --------------------------------------------------------------------------- formats

def read_csv(card: DatasetCard, split: str, classes: ClassList) -> list[VideoRecord]:
    """``path,label`` lines, optional ``path,label`` header."""
    path, root = annotation_file(card, split), Path(card.root)
    records = []
    for number, text in text_lines(path):
        row = _csv_row(text)
        if not records and number == 1 and [c.lower() for c in row] == ["path", "label"]:
            continue
        where = at(path, number)
        if len(row) != 2 or not row[0]:
            raise InputError(f"{where}: expected 'path,label', got {len(row)} column(s): {text!r}")
        records.append(VideoRecord(root / row[0], _label(classes, row[1], where), where))
    return records


def read_list(card: DatasetCard, split: str, classes: ClassList) -> list[VideoRecord]:
    """``path label`` lines (whitespace-separated; label = 0-based index or name)."""
    path, root = annotation_file(card, split), Path(card.root)
    records = []
    for number, text in text_lines(path):
        where = at(path, number)
        row = text.split()
        if len(row) != 2:
            raise InputError(f"{where}: expected 'path label_index' (2 columns), got {len(row)}: "
                             f"{text!r} (the 'path num_frames label' form is not supported; "
                             "paths cannot contain spaces)")
        records.append(VideoRecord(root / row[0], _label(classes, row[1], where), where))
    return records


def read_folder(card: DatasetCard, split: str, classes: ClassList) -> list[VideoRecord]:
    """``<root>/<split folder>/<class name>/<video>``; folder names matched as class names."""
    folder = Path(card.root) / card.split_file(split)
    if not folder.is_dir():
        raise InputError(f"{folder}: split folder not found (dataset {card.name}, split {split})")
    extensions = {e.lower() for e in card.video_extensions}
    records = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        index = _label(classes, class_dir.name, f"{class_dir}: class folder")
        for video in sorted(class_dir.iterdir()):
            if video.is_file() and video.suffix.lower() in extensions:
                records.append(VideoRecord(video, index, str(video)))
    return records


_KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")


def header_rows(path: Path, lines: list[tuple[int, str]], required: Sequence[str], what: str,
                lower: bool = False):
    """The rows of a CSV with a header line, as ``(where, text, {column: value})``; a missing
    required column or a row of another width is an InputError naming the file and line."""
    header = [c.lower() if lower else c for c in _csv_row(lines[0][1])]
    missing = [c for c in required if c not in header]
    if missing:
        raise InputError(f"{at(path, lines[0][0])}: {what} header lacks column(s) "
                         f"{', '.join(missing)} (got {', '.join(header)})")
    for number, text in lines[1:]:
        where = at(path, number)
        row = _csv_row(text)
        if len(row) != len(header):
            raise InputError(f"{where}: expected {len(header)} columns as in the header, "
                             f"got {len(row)}: {text!r}")
        yield where, text, dict(zip(header, row))


def read_kinetics(card: DatasetCard, split: str, classes: ClassList) -> list[VideoRecord]:
    """The official Kinetics CSV; video path = root / card.filename_pattern.format(**row)."""
    path, root = annotation_file(card, split), Path(card.root)
    lines = text_lines(path)
    if not lines:
        return []
    records = []
    for where, text, fields in header_rows(path, lines, _KINETICS_COLUMNS, "Kinetics",
                                           lower=True):
        try:
            fields["time_start"] = int(float(fields["time_start"]))
            fields["time_end"] = int(float(fields["time_end"]))
        except ValueError:
            raise InputError(f"{where}: time_start/time_end must be numbers: {text!r}") from None
        label = _label(classes, fields["label"], where)
        records.append(VideoRecord(root / _filename(card, fields, where), label, where))
    return records


def _filename(card: DatasetCard, fields: dict[str, Any], where: str) -> str:
    try:
        return card.filename_pattern.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise InputError(f"dataset {card.name}: filename_pattern {card.filename_pattern!r} cannot "
                         f"be filled from {where} (fields: {', '.join(fields)}): {err!r}") from None


def read_ucf101(card: DatasetCard, split: str, classes: ClassList) -> list[VideoRecord]:
    """Official UCF101 lists: ``Class/video.avi [label]``; the class is the folder."""
    path, root = annotation_file(card, split), Path(card.root)
    records = []
    for number, text in text_lines(path):
        where = at(path, number)
        row = text.split()
        if len(row) not in (1, 2) or "/" not in row[0]:
            raise InputError(f"{where}: expected 'Class/video.avi [label]', got {text!r}")
        label = _label(classes, row[0].split("/")[0], where)  # the 1-based label column is unused
        records.append(VideoRecord(root / row[0], label, where))
    return records


_HMDB_FLAGS = {"train": "1", "val": "2", "test": "2"}


def read_hmdb51(card: DatasetCard, split: str, classes: ClassList) -> list[VideoRecord]:
    """Official HMDB51 split files ``<class>_test_split<k>.txt`` (a glob in the card)."""
    pattern = card.split_file(split)
    files = sorted(Path(card.root).glob(pattern))
    if not files:
        raise InputError(f"{Path(card.root) / pattern}: no HMDB51 split files match "
                         f"(dataset {card.name}, split {split})")
    records = []
    for path in files:
        class_name = re.sub(r"_test_split\d+$", "", path.stem)
        label = _label(classes, class_name, at(path))
        for number, text in text_lines(path):
            row = text.split()
            if len(row) != 2 or row[1] not in ("0", "1", "2"):
                raise InputError(f"{at(path, number)}: expected 'video.avi 0|1|2', got {text!r}")
            if row[1] == _HMDB_FLAGS[split]:
                records.append(VideoRecord(Path(card.root) / class_name / row[0], label,
                                           at(path, number)))
    return records


def read_ssv2(card: DatasetCard, split: str, classes: ClassList) -> list[VideoRecord]:
    """Official Something-Something v2 JSON: class = ``template`` with brackets removed."""
    path, root = annotation_file(card, split), Path(card.root)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{at(path)}: cannot read SSv2 JSON ({err})") from None
    if not isinstance(entries, list):
        raise InputError(f"{at(path)}: expected a JSON list of videos")
    records = []
    for i, entry in enumerate(entries):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
            raise InputError(f"{where}: expected an object with 'id' and 'template' "
                             "(the test split's JSON has no labels)")
        name = str(entry["template"]).replace("[", "").replace("]", "")
        label = _label(classes, name, where)
        name = _filename(card, {"id": entry["id"]}, where)
        records.append(VideoRecord(root / name, label, where))
    return records


FORMATS: dict[str, Callable[[DatasetCard, str, ClassList], list[VideoRecord]]] = {
    "csv": read_csv, "list": read_list, "folder": read_folder, "kinetics": read_kinetics,
    "ucf101": read_ucf101, "hmdb51": read_hmdb51, "ssv2": read_ssv2,
}


def read_records(card: DatasetCard, split: str,
                 classes: ClassList | Sequence[str]) -> list[VideoRecord]:
    """The labelled videos of ``split`` (train/val/test), read per ``card.format``.

    ``classes`` is the dataset's ClassList (its prompt file) or a list of class names.
    """
    if card.format not in FORMATS:
        raise InputError(f"dataset {card.name}: unknown format {card.format!r} "
                         f"(choose from {', '.join(FORMATS)})")
    records = FORMATS[card.format](card, split, _as_classes(classes))
    if not records:
        raise InputError(f"dataset {card.name}: split {split} ({card.split_file(split)} under "
                         f"{card.root}) has no videos")
    logger.info("dataset %s/%s: %d videos", card.name, split, len(records))
    return records


def granular_records(card, split: str, classes: ClassList) -> list:
    """The split's records labelled at the card's granularity (``classes``: its classes, from
    :func:`vlcofit.experiment.read_card_classes`); the annotation names fine classes either
    way."""
    if card.granularity == "fine":
        return read_records(card, split, classes)
    h = read_hierarchy(card)
    return [dataclasses.replace(r, label=h.fine_to_coarse[r.label])
            for r in read_records(card, split, h.fine)]
