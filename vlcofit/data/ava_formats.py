"""AVA file formats: label maps, box CSVs (ground truth / detections), exclusions, proposals.

Box CSVs are held in columns (``AvaTable``: numpy arrays, row i = one CSV row) so evaluation and
dataset code can work vectorised; a 3M-row detections file reads in 1-2 s through a
chunked numpy parser (``_read_csv``). A keyframe key is ``(video_id, timestamp)`` with a numeric
timestamp, so ``0902``, ``902`` and ``902.0`` are the same keyframe (key ``("vid", 902)``).
Coordinates are normalised x1, y1, x2, y2; values up to 1e-3 outside [0, 1] are clipped, more is
an error. Boxes are float64 so IoUs equal the official evaluator's to the last bit.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import pickle
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from ..errors import InputError, at

logger = logging.getLogger(__name__)

Key = tuple  # (video_id: str, timestamp: int | float)
COORD_TOL = 1e-3
_BLOCK = 8 << 20  # bytes parsed per chunk: keeps numpy temporaries small
_POW10 = np.array([float(10**k) for k in range(23)])  # exact doubles


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


def make_key(video_id: str, timestamp) -> Key:
    """Keyframe key with a numeric timestamp: ("vid", "0902") -> ("vid", 902)."""
    t = float(timestamp)
    return (str(video_id), int(t) if t.is_integer() else t)


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
    text = _read_text(path)
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
    parts = _read_csv(path, {2: "tf", 7: "tfffffi", 8: "tfffffii"})
    every = [parts[c] for c in (2, 7, 8) if c in parts]
    lines = _cat([g[0] for g in every], np.int64)
    order = np.argsort(lines, kind="stable")  # keys in order of first appearance in the file
    keys, key_index = _key_index(_cat([g[1][0] for g in every], "S1")[order],
                                 _cat([g[1][1] for g in every], np.float64)[order],
                                 path, lines[order])
    box = [parts[c] for c in (7, 8) if c in parts]
    bl = _cat([g[0] for g in box], np.int64)
    bo = np.argsort(bl, kind="stable")
    cols = [_cat([g[1][k] for g in box], np.float64)[bo] for k in range(2, 7)]
    pid = _cat([g[1][7] if len(g[1]) == 8 else np.full(len(g[0]), -1.0) for g in box],
               np.float64)[bo]
    bl = bl[bo]
    kidx = key_index[np.searchsorted(lines[order], bl)]
    table = _box_table(path, keys, kidx, bl, cols, np.ones(len(bl)),
                       _integers(pid, path, bl, "person id"))
    return _filter_labels(table, labelmap, strict)


def read_detections(path: str | Path, labelmap: Mapping[int, str] | None = None,
                    strict: bool = False) -> AvaTable:
    """Read a detections CSV: ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` rows."""
    parts = _read_csv(path, {8: "tfffffif"})
    lines, cols = parts.get(8, (np.zeros(0, np.int64), [np.zeros(0, "S1")] + [np.zeros(0)] * 7))
    keys, key_index = _key_index(cols[0], cols[1], path, lines)
    bad = ~np.isfinite(cols[7])
    if bad.any():
        raise InputError(f"{at(path, int(lines[bad.argmax()]))}: score is not a finite number")
    table = _box_table(path, keys, key_index, lines, cols[2:7], cols[7],
                       np.full(len(lines), -1, np.int64))
    return _filter_labels(table, labelmap, strict)


def read_exclusions(path: str | Path) -> set:
    """Read excluded keyframes (``video_id,timestamp`` rows) -> set of keys."""
    parts = _read_csv(path, {2: "tf"})
    if not parts:
        return set()
    keys, _ = _key_index(*parts[2][1], path, parts[2][0])
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
    return AvaTable(keys, key_index, boxes, _integers(cols[4], path, lines, "action id"),
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
    parts = _read_csv(path, {7: "tffffff"})
    if not parts:
        return {}
    lines, cols = parts[7]
    keys, key_index = _key_index(cols[0], cols[1], path, lines)
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


# ---------------------------------------------------------------------------- CSV engine
def _read_text(path) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{at(path)}: cannot read ({e})") from None


def _read_csv(path, schema: Mapping[int, str]) -> dict:
    """Parse a CSV whose rows have one of the column counts in ``schema`` ({ncols: kinds},
    kinds: 't' text, 'f' float, 'i' integer-valued float). Blank lines are skipped.
    Returns {ncols: (lines [R] int64, [column arrays])} for the counts present."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"{at(path)}: cannot read ({e})") from None
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
        data = data[3:]
    if b'"' in data:
        data = _unquote(data, path)
    blocks, pos, line0 = [], 0, 0
    while pos < len(data):
        end = data.find(b"\n", min(pos + _BLOCK, len(data)) - 1)
        end = len(data) if end < 0 else end + 1
        blocks.append((pos, end, line0))
        line0 += data.count(b"\n", pos, end)
        pos = end

    def parse(block: tuple) -> dict:
        start, stop, first_line = block
        return _parse_block(data[start:stop].replace(b"\r", b""), first_line, path, schema)
    workers = min(len(blocks), os.cpu_count() or 1, 8)
    if workers > 1:  # numpy releases the GIL in the heavy steps
        with ThreadPoolExecutor(workers) as pool:
            parsed = list(pool.map(parse, blocks))  # raises the first error in file order
    else:
        parsed = [parse(b) for b in blocks]
    acc: dict[int, list] = {}
    for got in parsed:
        for c, part in got.items():
            acc.setdefault(c, []).append(part)
    return {c: (np.concatenate([g[0] for g in gs]),
                [np.concatenate([g[1][k] for g in gs]) for k in range(c)])
            for c, gs in acc.items()}


def _unquote(data: bytes, path) -> bytes:
    """Rewrite a CSV that uses quotes as plain comma-separated text (same line numbers)."""
    out = io.StringIO()
    for line, row in enumerate(csv.reader(io.StringIO(data.decode("utf-8", "replace"))), 1):
        if any("," in v or "\n" in v for v in row):
            raise InputError(f"{at(path, line)}: quoted field with a comma or newline")
        out.write(",".join(row) + "\n")
    return out.getvalue().encode()


def _parse_block(blk: bytes, line0: int, path, schema) -> dict:
    if not blk.endswith(b"\n"):
        blk += b"\n"
    buf = np.frombuffer(blk + b"\0" * 32, np.uint8)  # padding: reads past a field stay inside
    seps = np.flatnonzero(buf[:len(blk)] <= 44)  # ',' is 44 and '\n' is 10
    ch = buf[seps]
    is_nl = ch == 10
    other = ~is_nl & (ch != 44)  # spaces, '+', ... belong to fields
    if other.any():
        seps, is_nl = seps[~other], is_nl[~other]
    nl = np.flatnonzero(is_nl)  # index into seps of each line end
    ncols = np.diff(nl, prepend=-1)
    line_end = seps[nl]
    line_start = np.r_[0, line_end[:-1] + 1]
    blank = (ncols == 1) & (line_end == line_start)
    wrong = ~blank & ~np.isin(ncols, list(schema))
    if wrong.any():
        r = int(wrong.argmax())
        want = " or ".join(map(str, sorted(schema)))
        raise InputError(f"{at(path, line0 + r + 1)}: expected {want} comma-separated columns, "
                         f"found {ncols[r]}")
    out = {}
    for c, kinds in schema.items():
        rows = np.flatnonzero((ncols == c) & ~blank)
        if not len(rows):
            continue
        if len(rows) == len(nl):  # every line has c columns
            ends = seps.reshape(-1, c)
        else:
            ends = seps[(nl[rows] - (c - 1))[:, None] + np.arange(c)]
        starts = np.empty_like(ends)
        starts[:, 0] = line_start[rows]
        starts[:, 1:] = ends[:, :-1] + 1
        lines = rows + (line0 + 1)
        cols = [_text(buf, starts[:, k], ends[:, k]) if kind == "t" else
                _numbers(buf, starts[:, k], ends[:, k], path, lines)
                for k, kind in enumerate(kinds)]
        out[c] = (lines, cols)
    return out


def _text(buf: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Fields as a fixed-width bytes array [R] (S8 or S16 for short fields)."""
    length = e - s
    width = max(int(length.max()), 1)
    if width <= 16:  # one or two 8-byte loads per field, bytes past the end masked off
        window = _windows(buf)
        out = np.empty((len(s), 1 if width <= 8 else 2), np.uint64)
        out[:, 0] = window[s] & _LOW[np.minimum(length, 8)]
        if width > 8:
            out[:, 1] = window[s + 8] & _LOW[np.maximum(length - 8, 0)]
        return out.view(f"S{8 * out.shape[1]}").ravel()
    col = np.arange(width)
    mat = buf[np.minimum(s[:, None] + col, len(buf) - 1)]
    mat[col >= length[:, None]] = 0
    return mat.view(f"S{width}").ravel()


def _windows(buf: np.ndarray) -> np.ndarray:
    """[len - 7] uint64: the 8 bytes starting at every offset (little-endian)."""
    return np.ndarray((len(buf) - 7,), "<u8", buf, 0, (1,))


_LOW = np.array([(1 << (8 * k)) - 1 for k in range(9)], np.uint64)  # low k bytes set


def _numbers(buf: np.ndarray, s: np.ndarray, e: np.ndarray, path, lines) -> np.ndarray:
    """Decimal fields -> float64, equal to Python's float() of each field.

    Fast path, per field length: fields spelled ``digits[.digits]`` with the dot where the
    first field of that length has it and <= 15 digits. The mantissa is then an exact double and
    mantissa / 10**k is one correctly rounded division, i.e. the correctly rounded decimal value,
    which is what float() returns. Other spellings (signs, exponents, spaces) use float()."""
    length = e - s
    vals = np.empty(len(s))
    ok = np.zeros(len(s), bool)
    counts = np.bincount(length)
    for n in np.flatnonzero(counts).tolist():
        idx = None if counts[n] == len(s) else np.flatnonzero(length == n)
        ss = s if idx is None else s[idx]
        first = bytes(buf[ss[0]:ss[0] + n])
        dot = first.find(b".")
        if not 0 < n - (dot >= 0) <= 15 or not first.replace(b".", b"", 1).isdigit():
            continue
        m, good = _swar_digits(buf, ss, n, dot) if n <= 8 else _loop_digits(buf, ss, n, dot)
        frac = n - 1 - dot if dot >= 0 else 0
        if idx is None:
            vals, ok = m / _POW10[frac], good
        else:
            vals[idx], ok[idx] = m / _POW10[frac], good
    slow = np.flatnonzero(~ok)
    if len(slow):
        vals[slow] = _floats(buf, s[slow], e[slow], path, lines[slow])
    return vals


def _swar_digits(buf: np.ndarray, s: np.ndarray, n: int, dot: int):
    """Mantissas of n <= 8 character fields with a dot at ``dot`` (-1: none), 8 bytes at a
    time (SIMD-within-a-register: the 8 characters as one little-endian uint64)."""
    u8 = np.uint64
    raw = _windows(buf)[s]
    keep = (1 << (8 * n)) - 1
    digits = keep & ~(0xFF << (8 * dot)) if dot >= 0 else keep
    x = (raw ^ u8(0x3030303030303030)) & u8(digits)  # '0'..'9' -> 0..9; dot and padding -> 0
    # a byte is a digit iff it is <= 9, i.e. neither it nor it + 0x76 has the high bit set
    bad = ((x | (x + u8(0x7676767676767676))) & u8(0x8080808080808080 & digits)) != 0
    if dot >= 0:
        bad |= ((raw >> u8(8 * dot)) & u8(0xFF)) != 46
    x <<= u8(8 * (8 - n))  # right-align: the padding becomes leading zeros
    x = ((x * u8(2561)) >> u8(8)) & u8(0x00FF00FF00FF00FF)  # pairs of digits
    x = ((x * u8(6553601)) >> u8(16)) & u8(0x0000FFFF0000FFFF)  # groups of 4
    x = (x * u8(42949672960001)) >> u8(32)  # all 8: the digits with a 0 where the dot was
    if dot >= 0:  # drop the 0 that stands for the dot
        f = n - 1 - dot
        x = (x // u8(10 ** (f + 1))) * u8(10 ** f) + x % u8(10 ** f)
    return x.astype(np.float64), ~bad


def _loop_digits(buf: np.ndarray, s: np.ndarray, n: int, dot: int):
    """Mantissas of longer fields, one character at a time (exact below 2**53)."""
    m = np.zeros(len(s))
    good = buf[s + dot] == 46 if dot >= 0 else np.ones(len(s), bool)
    for j in range(n):
        if j != dot:
            d = buf[s + j] - np.uint8(48)
            good &= d < 10
            m = m * 10.0 + d
    return m, good


def _floats(buf: np.ndarray, s: np.ndarray, e: np.ndarray, path, lines) -> np.ndarray:
    """float() of each field (numpy's bytes->float64 cast gives the same values)."""
    fields = _text(buf, s, e)
    try:
        return fields.astype(np.float64)
    except ValueError:
        for r, field in enumerate(fields.tolist()):
            try:
                float(field)
            except ValueError:
                raise InputError(f"{at(path, int(lines[r]))}: "
                                 f"{field.decode('utf-8', 'replace')!r} is not a number") from None
        raise


def _integers(vals: np.ndarray, path, lines, what: str) -> np.ndarray:
    bad = ~(np.isfinite(vals) & (vals == np.round(vals)) & (np.abs(vals) < 2**53))
    if bad.any():
        r = int(bad.argmax())
        raise InputError(f"{at(path, int(lines[r]))}: {what} {float(vals[r]):g} is not an integer")
    return vals.astype(np.int64)


def _cat(arrays: list, dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype)


def _key_index(vids: np.ndarray, ts: np.ndarray, path, lines) -> tuple[list, np.ndarray]:
    """Unique (video id, timestamp) keys in order of first appearance, and each row's key.
    Works on runs of equal keys first: files are usually grouped by keyframe."""
    n = len(vids)
    if n == 0:
        return [], np.zeros(0, np.int64)
    if not np.isfinite(ts).all():
        raise InputError(f"{at(path, int(lines[np.isfinite(ts).argmin()]))}: bad timestamp")
    head = np.ones(n, bool)
    words = vids.view(np.uint64).reshape(n, -1) if vids.itemsize % 8 == 0 else vids[:, None]
    head[1:] = (words[1:] != words[:-1]).any(1) | (ts[1:] != ts[:-1])
    h = np.flatnonzero(head)
    uv, vinv = np.unique(vids[h], return_inverse=True)
    hts = ts[h]
    order = np.lexsort((hts, vinv))
    sv, st = vinv[order], hts[order]
    new = np.ones(len(h), bool)
    new[1:] = (sv[1:] != sv[:-1]) | (st[1:] != st[:-1])
    gid = np.empty(len(h), np.int64)
    gid[order] = np.cumsum(new) - 1
    _, first = np.unique(gid, return_index=True)  # first head of each key (heads in file order)
    by_first = np.argsort(first)
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    keys = [make_key(uv[vinv[i]].decode("utf-8", "replace"), hts[i]) for i in first[by_first]]
    return keys, np.repeat(rank[gid], np.diff(np.r_[h, n]))
