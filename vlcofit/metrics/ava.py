"""AVA frame-mAP@0.5 IoU, equal to ActivityNet's official evaluator, vectorised.

The official tool is ActivityNet's ``Evaluation/get_ava_performance.py`` (a PASCAL VOC evaluator
from the TF object-detection API: ``per_image_evaluation.py``, ``object_detection_evaluation.py``,
``metrics.py``). Two revisions of it are reproduced, chosen by ``protocol`` (``PROTOCOLS``):

- ``"current"`` (default): the file at its latest commit, af461c3 (2020-05-19; after c070fdb
  "Empty keyframes are now represented by rows with only video-id,timestamp" and 4e455cb
  "timestamps with microsecond precision"). The ground truth lists every annotated keyframe,
  those without actions as 2-column ``video_id,timestamp`` rows; detections on keyframes absent
  from it are ignored; a keyframe is the video id and the timestamp as a 6-decimal number
  (``"%.6f"``: 902.5 works, 0902 = 902 = 902.0000001). It reads no exclusions file (c070fdb:
  keyframes without actions became 2-column rows instead); excluded keyframes are deleted from
  its ground truth, and an exclusions file here does exactly that.
- ``"activitynet-2019"``: revision 3fee089 (2019-03-01), the last with an exclusions file and the
  one most codebases copied (``read_exclusions``). Excluded keyframes are dropped from both
  files; detections on keyframes absent from the ground truth are false positives (evaluated
  against an empty box list); keyframes are integer seconds (``"%04d"``; fractional timestamps
  are an error, as its ``int(timestamp)`` cannot read them).

Both revisions, reproduced here:

- only label-map classes count: ground-truth and detection rows of other ids are dropped before
  anything else (so they do not take places in the top 50 either); the ground truth's keyframes
  are all keyframes of its file, also those of 2-column rows and of rows of other ids;
- per keyframe, at most the 50 highest-scoring (box, class) detection rows are kept (a heap of
  ``(score, action, y1, x1, y2, x2)`` tuples in file order; a row replaces the smallest only if its
  score is strictly higher, so rows tied at the cut are resolved as the heap resolves them);
- then detections with x1 >= x2 or y1 >= y2 are dropped;
- per class and keyframe, detections in the keyframe's descending-score order each take the
  ground-truth box of that class with the highest IoU (first one on IoU ties); a true positive if
  IoU >= 0.5 and that box is unmatched, else a false positive. A person with k actions is k boxes,
  one per class. IoU = inter / (area_det + area_gt - inter), areas without +1;
- AP = VOC all-point area under the precision envelope; a class with ground truth and no
  detections has AP 0; classes without ground truth are NaN in the official output and are left
  out of the mean (and of ``per_class`` here). mAP = nanmean over classes 1..max id.

Ties of equal scores. Each class's detections are concatenated keyframe by keyframe (keyframes in
the order of their first label-map row in the detections file, each in its list order) and
ranked with ``np.argsort(scores)[::-1]``: numpy's default, unstable sort, called here on the
same array, so tied scores get the official order (a stable sort gives other APs on ties).
Inside a keyframe the order is fully determined by the official code, and keyframes where it
matters (a tie at the top-50 cut, equal scores of one class, a detection with equal IoU >= 0.5 to
two ground-truth boxes) are re-evaluated by ``_official_keyframe``, which follows the official
per-keyframe steps (its heap, its stable sort, its greedy matching).

Inputs: the official tool reads the ground truth's 8th column (person id) as a score, which
orders each keyframe's box list (it matters only for IoU ties, and is reproduced). Our readers
clip coordinates up to 1e-3 outside [0, 1] (the official tool uses them as written) and reject
worse ones. ``evaluate`` also takes keyframes to leave out of both tables (``exclusions``); under
``"current"`` that equals deleting them from the ground-truth file (vlcofit uses it for a card's
excluded keyframes and for unreadable clips), and ``evaluate_files`` takes an exclusions file
under either protocol. APs are fractions here, as the official tool prints them; vlcofit's
reports (``eval``, ``ava-eval``) give them in percent. An evaluation without any detection left
to score is reported in ``"warnings"`` and logged, not silently 0.

Public codebases differ from the current official tool in several ways: the 2019 revision's
exclusions and false positives on keyframes absent from the ground truth, integer-second keys,
no top-50 cap, classes without detections dropped from the mean instead of scoring 0, or a
stable sort of tied scores.
"""
from __future__ import annotations

import heapq
import logging
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..data.ava_formats import (AvaTable, make_key, read_detections, read_exclusions,
                                read_groundtruth, read_labelmap)
from ..errors import InputError, at

logger = logging.getLogger(__name__)

CAPACITY = 50  # detection rows kept per keyframe
IOU_THRESHOLD = 0.5
CURRENT, ACTIVITYNET_2019 = "current", "activitynet-2019"
PROTOCOLS = {  # the revisions of get_ava_performance.py reproduced (module docstring)
    CURRENT: "the latest official evaluator (af461c3, 2020): excluded keyframes deleted from "
             "the ground truth, detections on keyframes absent from it ignored, 6-decimal "
             "timestamps",
    ACTIVITYNET_2019: "its 2019 revision (3fee089): exclusions file, detections on keyframes "
                      "absent from the ground truth are false positives, integer seconds",
}


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of PROTOCOLS, else an InputError listing them."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown AVA evaluation protocol {protocol!r} "
                         f"(choose from {', '.join(PROTOCOLS)})")
    return protocol


def evaluate_files(labelmap_path: str | Path, groundtruth_path: str | Path,
                   detections_path: str | Path, exclusions_path: str | Path | None = None,
                   protocol: str = CURRENT) -> dict:
    """Official AVA frame-mAP of a detections CSV -> {"mAP": float, "per_class": {name: AP}}
    (fractions; plus "warnings": [str] when there is nothing to score). Keyframes of the
    exclusions file are left out under either protocol (module docstring)."""
    check_protocol(protocol)
    labelmap = read_labelmap(labelmap_path)
    gt = read_groundtruth(groundtruth_path, labelmap)
    if not len(gt):
        raise InputError(f"{at(groundtruth_path)}: no ground-truth rows of label-map classes")
    det = read_detections(detections_path)
    excluded = read_exclusions(exclusions_path) if exclusions_path else set()
    return evaluate(labelmap, gt, det, excluded, protocol)


def official_key(key: tuple, protocol: str = CURRENT, where: str = "") -> tuple:
    """The official evaluator's keyframe identity of (video id, timestamp): the timestamp as a
    6-decimal number (current) or as integer seconds (activitynet-2019)."""
    video, t = key
    if protocol == CURRENT:
        return video, "%.6f" % t
    if float(t).is_integer():
        return video, int(t)
    raise InputError(f"{where or 'keyframe'} {video},{t}: the {ACTIVITYNET_2019!r} protocol keys "
                     "keyframes by integer seconds (its official code cannot read fractional "
                     f"timestamps); use the {CURRENT!r} protocol")


def evaluate(labelmap: Mapping[int, str], groundtruth: AvaTable, detections: AvaTable,
             exclusions: Iterable | None = None, protocol: str = CURRENT) -> dict:
    """Official AVA frame-mAP@0.5 -> {"mAP": float, "per_class": {name: AP}} (classes with
    ground truth only, in label-map id order; mAP is NaN if no class has ground truth), plus
    "warnings": [str] (also logged) when no detection is left to score. ``exclusions``: keys
    left out of both tables (module docstring)."""
    check_protocol(protocol)
    ids = np.array(sorted(labelmap), np.int64)
    keys: dict = {}  # official key -> shared keyframe number; ground-truth keyframes first

    def number(table: AvaTable) -> np.ndarray:
        where = f"{table.path}: keyframe"
        own = np.array([keys.setdefault(official_key(k, protocol, where), len(keys))
                        for k in table.keys], np.int64)
        return own[table.key_index] if len(table) else np.zeros(0, np.int64)
    g_key = number(groundtruth)
    n_truth = len(keys)  # keyframes of the ground-truth file, with or without rows
    d_key = number(detections)
    excluded = np.zeros(len(keys), bool)
    for k in exclusions or ():
        try:
            excluded[keys[official_key(make_key(*k), protocol)]] = True
        except (KeyError, InputError):  # not a keyframe of either table
            pass
    g_rows = np.flatnonzero(np.isin(groundtruth.labels, ids) & ~excluded[g_key])
    d_known = np.isin(detections.labels, ids) & ~excluded[d_key]
    d_scored = d_known & (d_key < n_truth) if protocol == CURRENT else d_known
    warnings = _check_scored(detections, d_known, d_scored)
    d_rows = np.flatnonzero(d_scored)
    every = len(d_rows) == len(detections)  # usually: skip copying 3M-row columns
    d_key = d_key if every else d_key[d_rows]
    d_score = detections.scores if every else detections.scores[d_rows]

    kept, key_rank, flagged = _top_per_keyframe(d_key, d_score, len(keys))
    # from here keyframes are numbered in the official order of images (key_rank)
    flagged = _ranked(flagged, key_rank)
    gt = _Rows(groundtruth, g_rows, key_rank[g_key[g_rows]], ids)
    num_gt = np.bincount(gt.cls, minlength=len(ids))
    d_key = key_rank[d_key]
    det = _Rows(detections, d_rows[kept], d_key[kept], ids)
    res, flagged = _match(det, gt, len(keys), flagged)
    keep = ~flagged[res["key"]]
    res = {name: v[keep] for name, v in res.items()}
    slow = flagged[d_key]  # all label-map rows of flagged keyframes, in file order
    slow = _official_keyframes(np.flatnonzero(flagged),
                               _Rows(detections, d_rows[slow], d_key[slow], ids), gt)
    if len(slow["cls"]):  # into (class, keyframe) order; each group is from one path
        res = {name: np.concatenate([res[name], slow[name]]) for name in res}
        order = np.argsort(res["cls"] * len(keys) + res["key"], kind="stable")
        res = {name: v[order] for name, v in res.items()}
    ap = _average_precisions(res, num_gt)
    out = _summary(labelmap, ids, ap)
    if warnings:
        out["warnings"] = warnings
    return out


def _ranked(flags: np.ndarray, rank: np.ndarray) -> np.ndarray:
    out = np.zeros_like(flags)
    out[rank[flags]] = True
    return out


def _check_scored(detections: AvaTable, known: np.ndarray, scored: np.ndarray) -> list[str]:
    """Warnings (also logged) when no detection row is left to score; info on ignored rows."""
    n, n_known, n_scored = len(detections), int(known.sum()), int(scored.sum())
    where = detections.path
    if n_known > n_scored:
        logger.info("%s: %d detection rows on keyframes absent from the ground truth ignored "
                    "(current official protocol)", where, n_known - n_scored)
    if n_scored:
        return []
    if not n:
        msg = f"{where}: no detections: every class with ground truth scores AP 0"
    elif not n_known:
        msg = (f"{where}: none of the {n} detection rows is of a label-map class on a "
               "keyframe that is not excluded: every class with ground truth scores AP 0")
    else:
        msg = (f"{where}: all {n_known} detection rows are on keyframes absent from the ground "
               "truth, which the current official evaluator ignores (another split's file? "
               "timestamps?): every class with ground truth scores AP 0")
    logger.warning(msg)
    return [msg]


class _Rows:
    """Selected rows of a table, in file order: class position cls [n] (index into the sorted
    label-map ids), keyframe key [n] (numbering shared by both files), boxes [n, 4] x1y1x2y2,
    scores [n], action ids [n], person ids [n]."""

    def __init__(self, table: AvaTable, rows: np.ndarray, key: np.ndarray, ids: np.ndarray):
        self.key = key
        self.labels = table.labels[rows]
        self.cls = np.searchsorted(ids, self.labels)
        self.boxes = table.boxes[rows]
        self.scores = table.scores[rows]
        self.person_ids = table.person_ids[rows]


def _top_per_keyframe(key: np.ndarray, scores: np.ndarray, n_keys: int):
    """The 50 best of each keyframe's rows (key [n], scores [n]).

    Returns kept row indices [m], key_rank [n_keys] (keyframes ordered by their first row in
    the file, the official order of images) and flagged [n_keys]: keyframes with a score tie at
    the cut, whose kept rows are decided by the slow path instead."""
    n = len(key)
    if (key[1:] >= key[:-1]).all():  # rows grouped by keyframe, as files usually are
        by_key, k_sorted, s_sorted = np.arange(n), key, scores
    else:
        by_key = np.argsort(key, kind="stable")
        k_sorted, s_sorted = key[by_key], scores[by_key]
    start = np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]]) if n else by_key[:0]
    count = np.diff(np.r_[start, n])
    first = np.full(n_keys, np.iinfo(np.int64).max)
    first[k_sorted[start]] = by_key[start]  # stable sort: the lowest row of each keyframe
    key_rank = np.empty(n_keys, np.int64)
    key_rank[np.argsort(first, kind="stable")] = np.arange(n_keys)
    flagged = np.zeros(n_keys, bool)
    big = count > CAPACITY
    if not big.any():
        return np.arange(n), key_rank, flagged
    width = int(count.max())
    if (count == width).all():  # scores as a [keyframes, width] matrix
        nth = _nth_best(s_sorted.reshape(-1, width)[big])
    elif len(start) * width <= 4 * n:  # a padded one
        group = np.cumsum(np.r_[True, k_sorted[1:] != k_sorted[:-1]]) - 1
        mat = np.full((len(start), width), -np.inf)
        mat[group, np.arange(n) - start[group]] = s_sorted
        nth = _nth_best(mat[big])
    else:
        ranked = s_sorted[np.lexsort((-s_sorted, k_sorted))]
        nth = ranked[start[big, None] + [CAPACITY - 1, CAPACITY]]
    flagged[k_sorted[start[big]][nth[:, 0] == nth[:, 1]]] = True
    threshold = np.full(n_keys, -np.inf)
    threshold[k_sorted[start[big]]] = nth[:, 0]
    return np.flatnonzero(scores >= threshold[key]), key_rank, flagged


def _nth_best(mat: np.ndarray) -> np.ndarray:
    """[K, 2]: each row's 50th and 51st highest values."""
    return -np.partition(-mat, [CAPACITY - 1, CAPACITY], axis=1)[:, CAPACITY - 1:CAPACITY + 1]


def _match(det: _Rows, gt: _Rows, n_keys: int, flagged: np.ndarray):
    """Greedy matching of the kept detections, vectorised over (class, keyframe) groups;
    the rows come out in (class, keyframe number, descending score) order.

    Each detection's target is its highest-IoU box regardless of earlier matches, so a
    detection is a true positive iff its IoU >= 0.5 and it is the first such detection of its
    target in the group's score order. Rows of flagged keyframes are evaluated too but are
    replaced by the slow path later; ``pos`` (list position) only matters there."""
    box = det.boxes
    kept = np.flatnonzero((box[:, 0] < box[:, 2]) & (box[:, 1] < box[:, 3]))
    code = det.cls[kept] * n_keys + det.key[kept]  # (class, keyframe) group
    order = np.lexsort((-det.scores[kept], code))
    kept, code = kept[order], code[order]
    box, cls, key, score = det.boxes[kept], det.cls[kept], det.key[kept], det.scores[kept]
    same = np.zeros(len(code), bool)
    same[1:] = (code[1:] == code[:-1]) & (score[1:] == score[:-1])
    flagged[key[same]] = True  # equal scores of one class: the keyframe's list order decides

    g_code = gt.cls * n_keys + gt.key
    g_order = np.argsort(g_code, kind="stable")
    g_sorted, g_box = g_code[g_order], gt.boxes[g_order]
    lo = np.searchsorted(g_sorted, code, "left")
    count = np.searchsorted(g_sorted, code, "right") - lo
    best = np.full(len(code), -1.0)
    target = np.zeros(len(code), np.int64)
    tie = np.zeros(len(code), bool)
    for j in range(int(count.max()) if len(count) else 0):
        sel = np.flatnonzero(count > j)
        iou = _iou(box[sel], g_box[lo[sel] + j])
        better = iou > best[sel]
        tie[sel[better]] = False
        tie[sel[(iou == best[sel]) & (iou >= IOU_THRESHOLD)]] = True
        best[sel[better]] = iou[better]
        target[sel[better]] = lo[sel[better]] + j
    flagged[key[tie]] = True  # first-max order then depends on the official ground-truth order

    candidate = np.flatnonzero(best >= IOU_THRESHOLD)
    _, first = np.unique(target[candidate], return_index=True)
    tp = np.zeros(len(code), bool)
    tp[candidate[first]] = True
    pos = np.zeros(len(code), np.int64)
    return {"cls": cls, "key": key, "score": score, "tp": tp, "pos": pos}, flagged


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of [n, 4] x1y1x2y2 boxes, with the official operation order."""
    h = np.maximum(0.0, np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]))
    w = np.maximum(0.0, np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]))
    inter = h * w
    area_a = (a[:, 3] - a[:, 1]) * (a[:, 2] - a[:, 0])
    area_b = (b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0])
    return inter / (area_a + area_b - inter)


def _official_keyframes(keys: np.ndarray, det: _Rows, gt: _Rows) -> dict:
    """Evaluate whole keyframes with the official per-keyframe steps, for the keyframes whose
    outcome depends on orders the vectorised path does not model (see module docstring)."""
    out: dict[str, list] = {n: [] for n in ("cls", "key", "score", "tp", "pos")}
    d_order, g_order = np.argsort(det.key, kind="stable"), np.argsort(gt.key, kind="stable")
    d_start = np.searchsorted(det.key[d_order], keys)
    d_end = np.searchsorted(det.key[d_order], keys, "right")
    g_start = np.searchsorted(gt.key[g_order], keys)
    g_end = np.searchsorted(gt.key[g_order], keys, "right")
    for k, ds, de, gs, ge in zip(keys.tolist(), d_start, d_end, g_start, g_end):
        for name, vals in zip(out, _official_keyframe(det, d_order[ds:de], gt, g_order[gs:ge])):
            out[name].extend(vals if name != "key" else [k] * len(vals))
    dtypes = {"cls": np.int64, "key": np.int64, "score": np.float64, "tp": bool, "pos": np.int64}
    return {n: np.array(v, dtypes[n]) for n, v in out.items()}


def _official_keyframe(det: _Rows, d_rows: np.ndarray, gt: _Rows, g_rows: np.ndarray):
    """One keyframe, as the official code does it: heap of (score, action, y1, x1, y2, x2)
    tuples in file order (capacity 50 for detections; for ground truth the 'score' is the
    person id of 8-column rows), sorted by descending score (stable), per-class greedy matching.
    Returns lists cls, key (placeholders), score, tp, pos of the evaluated detections."""
    def heap(rows: Iterable[tuple], capacity: int) -> list:
        entries: list = []
        for item in rows:
            if capacity < 1 or len(entries) < capacity:
                heapq.heappush(entries, item)
            elif item[0] > entries[0][0]:
                heapq.heapreplace(entries, item)
        return sorted(entries, key=lambda tup: -tup[0])

    def tuples(rows: _Rows, idx, scores) -> list:
        b = rows.boxes[idx].tolist()
        return [(s, int(rows.cls[i]), y1, x1, y2, x2)
                for i, s, (x1, y1, x2, y2) in zip(idx.tolist(), scores, b)]
    # class position orders like the action id, so heap tie-breaks are unchanged
    dets = heap(tuples(det, d_rows, det.scores[d_rows].tolist()), CAPACITY)
    g_score = np.where(gt.person_ids[g_rows] >= 0, gt.person_ids[g_rows], 1).astype(float)
    gts = heap(tuples(gt, g_rows, g_score.tolist()), 0)
    g_cls = np.array([t[1] for t in gts], np.int64)
    g_box = np.array([t[2:] for t in gts], np.float64).reshape(-1, 4)[:, [1, 0, 3, 2]]
    out = []  # (class, key placeholder, score, tp, position in the keyframe's list)
    for c in sorted({t[1] for t in dets}):
        mine = [(p, t) for p, t in enumerate(dets) if t[1] == c and t[2] < t[4] and t[3] < t[5]]
        boxes = g_box[g_cls == c]
        matched = np.zeros(len(boxes), bool)
        for p, t in mine:
            hit = False
            if len(boxes):
                iou = _iou(np.array([[t[3], t[2], t[5], t[4]]] * len(boxes)), boxes)
                j = int(np.argmax(iou))
                if iou[j] >= IOU_THRESHOLD and not matched[j]:
                    hit = matched[j] = True
            out.append((c, None, t[0], hit, p))
    return [list(col) for col in zip(*out)] if out else [[]] * 5


def _average_precisions(res: dict, num_gt: np.ndarray) -> np.ndarray:
    """VOC all-point AP per class position (NaN without ground truth), as metrics.py does it.
    ``res`` rows are in (class, official keyframe order, keyframe list order) order: each
    class's slice is the official concatenation, ranked by the same unstable argsort."""
    cls, tp, score = res["cls"], res["tp"], res["score"]
    bounds = np.searchsorted(cls, np.arange(len(num_gt) + 1))
    ap = np.full(len(num_gt), np.nan)
    for c in np.flatnonzero(num_gt):
        lo, hi = bounds[c], bounds[c + 1]
        labels = tp[lo:hi][np.argsort(score[lo:hi])[::-1]]  # default kind, like metrics.py
        if not len(labels):
            ap[c] = 0.0
            continue
        cum_tp = np.cumsum(labels)
        cum_fp = np.cumsum((labels <= 0).astype(float))
        precision = cum_tp.astype(float) / (cum_tp + cum_fp)
        recall = cum_tp.astype(float) / num_gt[c]
        recall = np.concatenate([[0], recall, [1]])
        precision = np.concatenate([[0], precision, [0]])
        precision = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.flatnonzero(recall[1:] != recall[:-1]) + 1
        ap[c] = np.sum((recall[idx] - recall[idx - 1]) * precision[idx])
    return ap


def _summary(labelmap: Mapping[int, str], ids: np.ndarray, ap: np.ndarray) -> dict:
    # the official mean runs over classes 1..max id (NaN for absent ids); same array, same sum
    if len(ids) and ids[0] >= 1:
        full = np.full(int(ids[-1]), np.nan)
        full[ids - 1] = ap
    else:
        full = ap
    has = ~np.isnan(full)
    mean = float(np.nanmean(full)) if has.any() else math.nan
    if not has.any():
        logger.warning("no class of the label map has ground truth; mAP is NaN")
    per_class = {labelmap[int(i)]: float(a) for i, a in zip(ids, ap) if not np.isnan(a)}
    return {"mAP": mean, "per_class": per_class}
