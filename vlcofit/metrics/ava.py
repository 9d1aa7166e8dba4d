"""AVA frame-mAP@0.5 IoU, identical to the official evaluator, vectorised.

The official tool is ActivityNet's ``Evaluation/get_ava_performance.py`` (a PASCAL VOC evaluator
from the TF object-detection API: ``per_image_evaluation.py``, ``object_detection_evaluation.py``,
``metrics.py``). Reproduced here:

- only label-map classes count: ground-truth and detection rows of other ids are dropped before
  anything else (so they do not take places in the top 50 either);
- keyframes are (video id, numeric timestamp); excluded keyframes are dropped from both files;
- per keyframe, at most the 50 highest-scoring (box, class) detection rows are kept (a heap of
  ``(score, action, y1, x1, y2, x2)`` tuples in file order; a row replaces the smallest only if its
  score is strictly higher, so rows tied at the cut are resolved as the heap resolves them);
- then detections with x1 >= x2 or y1 >= y2 are dropped;
- every remaining detection is evaluated, also on keyframes absent from the ground truth, where
  it is a false positive (the official tool evaluates them against an empty box list);
- per class and keyframe, detections in the keyframe's descending-score order each take the
  ground-truth box of that class with the highest IoU (first one on IoU ties); a true positive if
  IoU >= 0.5 and that box is unmatched, else a false positive. A person with k actions is k boxes,
  one per class. IoU = inter / (area_det + area_gt - inter), areas without +1;
- AP = VOC all-point area under the precision envelope; a class with ground truth and no
  detections has AP 0; classes without ground truth are NaN in the official output and are left
  out of the mean (and of ``per_class`` here). mAP = nanmean over classes 1..max id.

Ties of equal scores. Across keyframes the official code sorts each class's detections with
``np.argsort(scores)[::-1]``, which is stable only for short arrays, so its order of tied scores
depends on numpy's sort. We use the stable version of that rule: equal scores in reverse order of
the official concatenation order (keyframes in order of their first label-map row in the detections
file, then the keyframe's list order). Inside a keyframe the order is fully determined by the
official code, and keyframes where it matters (a tie at the top-50 cut, equal scores of one
class, a detection with equal IoU >= 0.5 to two ground-truth boxes) are re-evaluated by
``_official_keyframe``, a direct port of the official per-keyframe steps.

Inputs: the official tool reads the ground truth's 8th column (person id) as a score, which
orders each keyframe's box list (it matters only for IoU ties, and is reproduced). Our readers
clip coordinates up to 1e-3 outside [0, 1] (the official tool uses them as written) and reject
worse ones, and accept fractional timestamps (the official tool cannot read them).

Several public codebases differ from this: no top-50 cap, only ground-truth keyframes evaluated
(detections elsewhere ignored rather than false positives), or classes without detections
dropped from the mean instead of scoring 0.
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


def evaluate_files(labelmap_path: str | Path, groundtruth_path: str | Path,
                   detections_path: str | Path, exclusions_path: str | Path | None = None) -> dict:
    """Official AVA frame-mAP of a detections CSV -> {"mAP": float, "per_class": {name: AP}}."""
    labelmap = read_labelmap(labelmap_path)
    gt = read_groundtruth(groundtruth_path, labelmap)
    if not len(gt):
        raise InputError(f"{at(groundtruth_path)}: no ground-truth rows of label-map classes")
    det = read_detections(detections_path)
    excluded = read_exclusions(exclusions_path) if exclusions_path else set()
    return evaluate(labelmap, gt, det, excluded)


def evaluate(labelmap: Mapping[int, str], groundtruth: AvaTable, detections: AvaTable,
             exclusions: Iterable | None = None) -> dict:
    """Official AVA frame-mAP@0.5 -> {"mAP": float, "per_class": {name: AP}} (classes with
    ground truth only, in label-map id order; mAP is NaN if no class has ground truth)."""
    ids = np.array(sorted(labelmap), np.int64)
    keys = {k: i for i, k in enumerate(groundtruth.keys)}
    g_key = groundtruth.key_index
    d_key = np.array([keys.setdefault(k, len(keys)) for k in detections.keys], np.int64)
    d_key = d_key[detections.key_index] if len(detections) else np.zeros(0, np.int64)
    excluded = np.zeros(len(keys), bool)
    excluded[[keys[k] for k in {make_key(*k) for k in exclusions or ()} if k in keys]] = True
    g_rows = np.flatnonzero(np.isin(groundtruth.labels, ids) & ~excluded[g_key])
    d_rows = np.flatnonzero(np.isin(detections.labels, ids) & ~excluded[d_key])
    gt = _Rows(groundtruth, g_rows, g_key[g_rows], ids)
    num_gt = np.bincount(gt.cls, minlength=len(ids))
    every = len(d_rows) == len(detections)  # usually: skip copying 3M-row columns
    d_key = d_key if every else d_key[d_rows]
    d_score = detections.scores if every else detections.scores[d_rows]

    kept, key_rank, flagged = _top_per_keyframe(d_key, d_score, len(keys))
    det = _Rows(detections, d_rows[kept], d_key[kept], ids)
    res, flagged = _match(det, gt, len(keys), flagged)
    keep = ~flagged[res["key"]]
    res = {name: v[keep] for name, v in res.items()}
    slow = flagged[d_key]  # all label-map rows of flagged keyframes, in file order
    slow = _official_keyframes(np.flatnonzero(flagged),
                               _Rows(detections, d_rows[slow], d_key[slow], ids), gt)
    res = {name: np.concatenate([res[name], slow[name]]) for name in res}
    ap = _average_precisions(res, key_rank, num_gt)
    return _summary(labelmap, ids, ap)


class _Rows:
    """Selected rows of a table, in file order: class position cls [n] (index into the sorted
    label-map ids), keyframe key [n] (shared numbering of both files), boxes [n, 4] x1y1x2y2,
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
    """Greedy matching of the kept detections, vectorised over (class, keyframe) groups.

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


def _average_precisions(res: dict, key_rank: np.ndarray, num_gt: np.ndarray) -> np.ndarray:
    """VOC all-point AP per class position (NaN without ground truth), as metrics.py does it."""
    # pos < CAPACITY, so one integer carries both tie-breaks
    later = key_rank[res["key"]] * CAPACITY + res["pos"]
    order = np.lexsort((-later, -res["score"], res["cls"]))
    cls, tp = res["cls"][order], res["tp"][order]
    bounds = np.searchsorted(cls, np.arange(len(num_gt) + 1))
    ap = np.full(len(num_gt), np.nan)
    for c in np.flatnonzero(num_gt):
        labels = tp[bounds[c]:bounds[c + 1]]
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
