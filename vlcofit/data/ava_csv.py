"""The chunked numpy CSV engine behind :mod:`vlcofit.data.ava_formats`: AVA box CSVs of
millions of rows parsed block by block (threads over blocks), numbers converted without Python
per-row loops, every malformed field an InputError naming the file and line.
"""
from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError, at

Key = tuple  # (video_id: str, timestamp: int | float)
_BLOCK = 8 << 20  # bytes parsed per chunk: keeps numpy temporaries small
_POW10 = np.array([float(10**k) for k in range(23)])  # exact doubles


def make_key(video_id: str, timestamp) -> Key:
    """Keyframe key with a numeric timestamp: ("vid", "0902") -> ("vid", 902)."""
    t = float(timestamp)
    return (str(video_id), int(t) if t.is_integer() else t)


def read_text(path) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{at(path)}: cannot read ({e})") from None


def read_csv(path, schema: Mapping[int, str]) -> dict:
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


def integers(vals: np.ndarray, path, lines, what: str) -> np.ndarray:
    bad = ~(np.isfinite(vals) & (vals == np.round(vals)) & (np.abs(vals) < 2**53))
    if bad.any():
        r = int(bad.argmax())
        raise InputError(f"{at(path, int(lines[r]))}: {what} {float(vals[r]):g} is not an integer")
    return vals.astype(np.int64)


def cat(arrays: list, dtype) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype)


def index_keys(vids: np.ndarray, ts: np.ndarray, path, lines) -> tuple[list, np.ndarray]:
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
