"""AVA file formats: label maps, box CSVs (ground truth / detections), exclusions, proposals.

Box CSVs are held in columns (``AvaTable``: numpy arrays, row i = one CSV row) so evaluation and
dataset code can work vectorised; a 3M-row detections file reads in 1-2 s through a
chunked numpy parser (:mod:`vlcofit.data.ava_csv`). A keyframe key is ``(video_id, timestamp)`` with a numeric
timestamp, so ``0902``, ``902`` and ``902.0`` are the same keyframe (key ``("vid", 902)``).
Coordinates are normalised x1, y1, x2, y2; values up to 1e-3 outside [0, 1] are clipped, more is
an error. Boxes are float64 so IoUs equal the official evaluator's to the last bit.
"""
from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import InputError, at
from .ava_csv import Key, cat, index_keys, integers, make_key, read_csv, read_text

logger = logging.getLogger(__name__)

COORD_TOL = 1e-3


@dataclass(frozen=True)
class AvaTable:
    """Rows of an AVA box CSV. ``keys`` lists every keyframe of the file in order of first
    appearance (also ones with no box rows); ``key_index[i]`` is row i's keyframe.

    Arrays: key_index [N] int64, boxes [N, 4] float64 (x1, y1, x2, y2 in [0, 1]),
    labels [N] int64 action ids, scores [N] float64 (1.0 for ground truth),
    person_ids [N] int64 (-1 where unknown), lines [N] int64 1-based CSV lines (0: not from a file).
    """
    keys: list
    key_index: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    person_ids: np.ndarray
    lines: np.ndarray
    path: str = "<memory>"

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_arrays(cls, keys: Sequence[Key], key_index, boxes, labels, scores=None,
                    person_ids=None, path: str = "<memory>") -> "AvaTable":
        """Build a table from per-row arrays (e.g. model outputs); ``keys`` must be unique."""
        keys = [make_key(v, t) for v, t in keys]
        if len(set(keys)) != len(keys):
            raise ValueError("keys must be unique")
        n = len(labels)
        return cls(keys, np.asarray(key_index, np.int64).reshape(n),
                   np.asarray(boxes, np.float64).reshape(n, 4), np.asarray(labels, np.int64),
                   np.ones(n) if scores is None else np.asarray(scores, np.float64).reshape(n),
                   np.full(n, -1, np.int64) if person_ids is None
                   else np.asarray(person_ids, np.int64).reshape(n),
                   np.zeros(n, np.int64), path)

    def subset(self, rows) -> "AvaTable":
        """The rows selected by a boolean mask or index array; keeps every key."""
        return AvaTable(self.keys, self.key_index[rows], self.boxes[rows], self.labels[rows],
                        self.scores[rows], self.person_ids[rows], self.lines[rows], self.path)


class KeyframeBoxes(NamedTuple):
    """Unique person boxes of one keyframe: boxes [M, 4] float32 x1y1x2y2, labels [M, C]
    float32 multi-hot over the class columns, person_ids [M] int64."""
    boxes: np.ndarray
    labels: np.ndarray
    person_ids: np.ndarray


def format_timestamp(t) -> str:
    """Official spelling: 4-digit zero-padded integer seconds (0902); fractions kept as-is."""
    t = float(t)
    return "%04d" % t if t.is_integer() else repr(t)


# ---------------------------------------------------------------------------- label maps
_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_FIELD = re.compile(r"\b(name|display_name|id|label_id)\s*:\s*(\"[^\"]*\"|'[^']*'|[-\w.]+)")


def read_labelmap(path: str | Path) -> dict[int, str]:
    """Read a label map -> {id: name}: pbtxt (``item { name: "..." id: N }``, also
    ``label_id`` / ``display_name``) or text (``id: name`` per line)."""
    text = read_text(path)
    out: dict[int, str] = {}
    if _ITEM.search(text):
        for m in _ITEM.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            fields = {k: v.strip("\"'") for k, v in _FIELD.findall(m.group(1))}
            name = fields.get("name", fields.get("display_name"))
            ident = fields.get("id", fields.get("label_id"))
            if name is None or ident is None:
                raise InputError(f"{at(path, line)}: label-map item needs a name and an id")
            _add_label(out, ident, name, path, line)
    else:
        for line, raw in enumerate(text.splitlines(), 1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            ident, sep, name = raw.partition(":")
            if not sep or not name.strip():
                raise InputError(f"{at(path, line)}: expected 'id: name', got {raw.strip()!r}")
            _add_label(out, ident.strip(), name.strip(), path, line)
    if not out:
        raise InputError(f"{at(path)}: no labels found")
    return out


def _add_label(out: dict, ident: str, name: str, path, line: int) -> None:
    try:
        i = int(ident)
    except ValueError:
        raise InputError(f"{at(path, line)}: label id {ident!r} is not an integer") from None
    if i in out:
        raise InputError(f"{at(path, line)}: label id {i} appears twice")
    out[i] = name


def write_labelmap_pbtxt(path: str | Path, labelmap: Mapping[int, str]) -> None:
    """Write {id: name} in the official pbtxt form."""
    items = "".join(f'item {{\n  name: "{n}"\n  id: {i}\n}}\n' for i, n in sorted(labelmap.items()))
    Path(path).write_text(items)


# ---------------------------------------------------------------------------- box CSVs
def read_groundtruth(path: str | Path, labelmap: Mapping[int, str] | None = None,
                     strict: bool = False) -> AvaTable:
    """Read a ground-truth CSV: ``video_id,timestamp,x1,y1,x2,y2,action_id[,person_id]`` rows,
    plus ``video_id,timestamp`` rows for keyframes without actions. With a label map, rows of
    other action ids are dropped (as the official evaluator does), or are errors if ``strict``."""
    parts = read_csv(path, {2: "tf", 7: "tfffffi", 8: "tfffffii"})
    every = [parts[c] for c in (2, 7, 8) if c in parts]
    lines = cat([g[0] for g in every], np.int64)
    order = np.argsort(lines, kind="stable")  # keys in order of first appearance in the file
    keys, key_index = index_keys(cat([g[1][0] for g in every], "S1")[order],
                                 cat([g[1][1] for g in every], np.float64)[order],
                                 path, lines[order])
    box = [parts[c] for c in (7, 8) if c in parts]
    bl = cat([g[0] for g in box], np.int64)
    bo = np.argsort(bl, kind="stable")
    cols = [cat([g[1][k] for g in box], np.float64)[bo] for k in range(2, 7)]
    pid = cat([g[1][7] if len(g[1]) == 8 else np.full(len(g[0]), -1.0) for g in box],
               np.float64)[bo]
    bl = bl[bo]
    kidx = key_index[np.searchsorted(lines[order], bl)]
    table = _box_table(path, keys, kidx, bl, cols, np.ones(len(bl)),
                       integers(pid, path, bl, "person id"))
    return _filter_labels(table, labelmap, strict)


def read_detections(path: str | Path, labelmap: Mapping[int, str] | None = None,
                    strict: bool = False) -> AvaTable:
    """Read a detections CSV: ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` rows."""
    parts = read_csv(path, {8: "tfffffif"})
    lines, cols = parts.get(8, (np.zeros(0, np.int64), [np.zeros(0, "S1")] + [np.zeros(0)] * 7))
    keys, key_index = index_keys(cols[0], cols[1], path, lines)
    bad = ~np.isfinite(cols[7])
    if bad.any():
        raise InputError(f"{at(path, int(lines[bad.argmax()]))}: score is not a finite number")
    table = _box_table(path, keys, key_index, lines, cols[2:7], cols[7],
                       np.full(len(lines), -1, np.int64))
    return _filter_labels(table, labelmap, strict)


def read_exclusions(path: str | Path) -> set:
    """Read excluded keyframes (``video_id,timestamp`` rows) -> set of keys."""
    parts = read_csv(path, {2: "tf"})
    if not parts:
        return set()
    keys, _ = index_keys(*parts[2][1], path, parts[2][0])
    return set(keys)


def _box_table(path, keys, key_index, lines, cols, scores, person_ids) -> AvaTable:
    """Check box columns [x1, y1, x2, y2, action] and assemble a table."""
    boxes = np.stack(cols[:4], 1) if len(lines) else np.zeros((0, 4))
    out = ~((boxes >= -COORD_TOL) & (boxes <= 1 + COORD_TOL))  # also catches NaN
    names = ("x1", "y1", "x2", "y2")
    if out.any():
        r, c = np.unravel_index(out.argmax(), out.shape)
        raise InputError(f"{at(path, int(lines[r]))}: {names[c]}={float(boxes[r, c]):g} "
                         "is outside [0, 1]")
    np.clip(boxes, 0.0, 1.0, out=boxes)
    flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if flipped.any():
        r = int(flipped.argmax())
        raise InputError(f"{at(path, int(lines[r]))}: box {boxes[r].tolist()} "
                         "has x2 < x1 or y2 < y1")
    return AvaTable(keys, key_index, boxes, integers(cols[4], path, lines, "action id"),
                    scores, person_ids, lines, str(path))


def _filter_labels(table: AvaTable, labelmap, strict: bool) -> AvaTable:
    if labelmap is None:
        return table
    known = np.isin(table.labels, np.fromiter(labelmap, np.int64))
    if known.all():
        return table
    first = int((~known).argmax())
    if strict:
        raise InputError(f"{at(table.path, int(table.lines[first]))}: action id "
                         f"{table.labels[first]} is not in the label map")
    logger.info("%s: dropped %d rows with action ids not in the label map",
                table.path, int((~known).sum()))
    return table.subset(known)


def group_boxes(table: AvaTable, class_ids: Sequence[int] | None = None) -> dict:
    """Merge the rows of each keyframe into unique person boxes with multi-hot labels.

    A box is unique per (person id, coordinates). Column j of ``labels`` is action
    ``class_ids[j]`` (default: the sorted ids in the table); other ids set no column, so a
    person with only such actions keeps an all-zero row. Returns {key: KeyframeBoxes} for every
    key of the table, in key order (keyframes without rows get empty arrays); boxes keep their
    order of first appearance."""
    class_ids = np.unique(table.labels) if class_ids is None else np.asarray(class_ids, np.int64)
    n = len(table)
    ident = np.column_stack([table.key_index, table.person_ids, table.boxes.view(np.int64)])
    order = np.lexsort(ident.T[::-1])
    same = np.zeros(n, bool)
    same[1:] = (ident[order][1:] == ident[order][:-1]).all(1)
    head = order[~same]  # lowest row of each unique box (lexsort is stable)
    group = np.empty(n, np.int64)
    group[order] = np.cumsum(~same) - 1
    by_key = np.lexsort((head, table.key_index[head]))  # boxes by key, then first appearance
    rank = np.empty_like(by_key)
    rank[by_key] = np.arange(len(by_key))
    lead = head[by_key]
    multi = np.zeros((len(lead), len(class_ids)), np.float32)
    sorter = np.argsort(class_ids)
    pos = np.minimum(np.searchsorted(class_ids, table.labels, sorter=sorter), len(class_ids) - 1)
    col = sorter[pos] if len(class_ids) else pos
    hit = class_ids[col] == table.labels if len(class_ids) else np.zeros(n, bool)
    multi[rank[group[hit]], col[hit]] = 1.0
    starts = np.searchsorted(table.key_index[lead], np.arange(len(table.keys) + 1))
    out = {}
    for k, key in enumerate(table.keys):
        sl = lead[starts[k]:starts[k + 1]]
        out[key] = KeyframeBoxes(table.boxes[sl].astype(np.float32),
                                 multi[starts[k]:starts[k + 1]], table.person_ids[sl])
    return out


def write_detections(path: str | Path, table: AvaTable) -> None:
    """Write the official detections CSV: timestamp as 0902, coordinates with 3 decimals,
    score with the shortest text that reads back to the same float."""
    _write_rows(path, table, lambda i: repr(float(table.scores[i])))


def write_groundtruth(path: str | Path, table: AvaTable) -> None:
    """Write a ground-truth CSV (person id last; 7 columns where it is unknown, -1); keyframes
    without rows are written as ``video_id,timestamp`` rows."""
    pid = table.person_ids.tolist()
    _write_rows(path, table, lambda i: str(pid[i]) if pid[i] >= 0 else None, empty_keys=True)


def _write_rows(path, table: AvaTable, last, empty_keys: bool = False) -> None:
    heads = [f"{v},{format_timestamp(t)}" for v, t in table.keys]
    b = table.boxes.tolist()
    with open(path, "w") as f:
        f.writelines(f"{heads[k]},{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f},{a}"
                     + ("\n" if (end := last(i)) is None else f",{end}\n")
                     for i, (k, (x1, y1, x2, y2), a)
                     in enumerate(zip(table.key_index.tolist(), b, table.labels.tolist())))
        if empty_keys:
            missing = np.setdiff1d(np.arange(len(heads)), table.key_index)
            f.writelines(heads[k] + "\n" for k in missing.tolist())


# ---------------------------------------------------------------------------- proposals
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only containers and numpy arrays; any other global is refused."""
    _ALLOWED = {(f"numpy.{core}.{module}", name) for core in ("core", "_core")
                for module, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                                     ("numeric", "_frombuffer"))}
    _ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith(("numpy.core", "numpy._core")):  # pickles of numpy 1 and 2
            module = _NP_CORE + module.split("core", 1)[1]
        return super().find_class(module, name)


_NP_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"


def read_proposals(path: str | Path) -> dict:
    """Read person proposals -> {key: [N, 5] float32 x1, y1, x2, y2, score}.

    Either a pickle of {"video_id,timestamp": [N, 5] (or [N, 4]) array} loaded with an unpickler
    that only rebuilds numpy arrays and containers, or a CSV of
    ``video_id,timestamp,x1,y1,x2,y2,score`` rows."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return _proposals_csv(path)
    try:
        with open(path, "rb") as f:
            raw = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise InputError(f"{at(path)}: not a readable proposals pickle ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{at(path)}: expected a dict of arrays, got {type(raw).__name__}")
    out = {}
    for name, value in raw.items():
        vid, sep, t = str(name).rpartition(",")
        arr = np.asarray(value, np.float32) if isinstance(value, (np.ndarray, list)) else None
        if not sep or not vid or arr is None or arr.ndim != 2 or arr.shape[1] not in (4, 5):
            raise InputError(f"{at(path)}: entry {name!r} is not "
                             "'video_id,timestamp' -> [N, 5] array")
        if arr.shape[1] == 4:
            arr = np.concatenate([arr, np.ones((len(arr), 1), np.float32)], 1)
        try:
            key = make_key(vid, t)
        except ValueError:
            raise InputError(f"{at(path)}: entry {name!r} has a non-numeric timestamp") from None
        out[key] = _check_proposals(arr, f"{at(path)}: entry {name!r}")
    return out


def _proposals_csv(path: Path) -> dict:
    parts = read_csv(path, {7: "tffffff"})
    if not parts:
        return {}
    lines, cols = parts[7]
    keys, key_index = index_keys(cols[0], cols[1], path, lines)
    arr = np.stack(cols[2:], 1)
    bad = ~np.isfinite(arr).all(1)
    if bad.any():
        raise InputError(f"{at(path, int(lines[bad.argmax()]))}: non-finite value")
    out = {}
    order = np.argsort(key_index, kind="stable")
    starts = np.searchsorted(key_index[order], np.arange(len(keys) + 1))
    for k, key in enumerate(keys):
        r = order[starts[k]:starts[k + 1]]
        out[key] = _check_proposals(arr[r].astype(np.float32), f"{at(path, int(lines[r[0]]))}")
    return out


def _check_proposals(arr: np.ndarray, where: str) -> np.ndarray:
    box = arr[:, :4]
    if not ((box >= -COORD_TOL) & (box <= 1 + COORD_TOL)).all():
        raise InputError(f"{where}: box coordinates outside [0, 1]")
    if ((box[:, 2] < box[:, 0]) | (box[:, 3] < box[:, 1])).any():
        raise InputError(f"{where}: a box has x2 < x1 or y2 < y1")
    arr = arr.copy()
    np.clip(arr[:, :4], 0.0, 1.0, out=arr[:, :4])
    return arr


def validate_proposal_keys(proposals: Mapping, keys: Iterable[Key], path: str | Path) -> None:
    """Error if proposals name keyframes that are not among ``keys``."""
    known = set(keys)
    missing = [k for k in proposals if k not in known]
    if missing:
        shown = ", ".join(f"{v},{format_timestamp(t)}" for v, t in missing[:5])
        raise InputError(f"{at(path)}: {len(missing)} proposal keyframes are not in the "
                         f"annotations: {shown}{', ...' if len(missing) > 5 else ''}")
