"""Benchmark: vlcofit's AVA frame-mAP against a direct port of the official evaluator.

    python bench/ava_eval.py [--keyframes 10000] [--ref-keyframes 1000] [--seed 0]

Writes synthetic AVA files (N keyframes x 5 ground-truth persons with ~2 actions each, some
keyframes without actions as 2-column rows; detections: 5 boxes x 60 classes = 300 rows per
keyframe, scores with 6 decimals, ~1 % of the keyframes absent from the ground truth) to a temp
dir, then times reading and evaluation with vlcofit on N keyframes, and the reference on a
--ref-keyframes dataset from the same generator (time extrapolated to N, and marked so). Both
must give the same mAP and per-class APs, bit for bit, on that smaller dataset.

``reference_evaluate`` is also an oracle of tests/test_ava_metric.py: the official
get_ava_performance.py steps in plain Python (csv reader, heapq top-50, per-image per-class
greedy matching, metrics.py AP with numpy's default argsort). ``protocol="current"``: its latest
revision (af461c3: 6-decimal timestamp keys, detections on keyframes absent from the ground
truth ignored); ``"activitynet-2019"``: revision 3fee089 (integer-second keys, exclusions file,
those detections are false positives).
"""
from __future__ import annotations

import argparse
import csv
import heapq
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

LABELS = Path(__file__).resolve().parents[2] / "shared" / "labels" / "ava_v2.2_eval60.txt"


# ---------------------------------------------------------------------------- reference
def _key(video_id: str, timestamp: str, protocol: str) -> str:
    if protocol == "current":
        return "%s,%.6f" % (video_id, float(timestamp))
    return "%s,%04d" % (video_id, int(timestamp))


def _read_boxes(path, whitelist: set, capacity: int, protocol: str):
    """({key: [(score, action, y1, x1, y2, x2)] by descending score}, every key of the file)."""
    entries, every = defaultdict(list), set()
    with open(path) as f:
        for row in csv.reader(f):
            assert len(row) in (2, 7, 8), row
            key = _key(row[0], row[1], protocol)
            every.add(key)
            if len(row) == 2:  # a keyframe without actions
                continue
            x1, y1, x2, y2 = (float(v) for v in row[2:6])
            action = int(row[6])
            if action not in whitelist:
                continue
            score = float(row[7]) if len(row) == 8 else 1.0
            if capacity < 1 or len(entries[key]) < capacity:
                heapq.heappush(entries[key], (score, action, y1, x1, y2, x2))
            elif score > entries[key][0][0]:
                heapq.heapreplace(entries[key], (score, action, y1, x1, y2, x2))
    return {k: sorted(v, key=lambda t: -t[0]) for k, v in entries.items()}, every


def _iou(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """[N, M] IoU of y1x1y2x2 boxes, np_box_ops style."""
    y1a, x1a, y2a, x2a = np.split(det, 4, axis=1)
    y1b, x1b, y2b, x2b = np.split(gt, 4, axis=1)
    h = np.maximum(np.zeros((len(det), len(gt))), np.minimum(y2a, y2b.T) - np.maximum(y1a, y1b.T))
    w = np.maximum(np.zeros((len(det), len(gt))), np.minimum(x2a, x2b.T) - np.maximum(x1a, x1b.T))
    inter = h * w
    area_a = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    area_b = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _image_tp_fp(dets: list, gts: list, classes: list):
    boxes = np.array([t[2:] for t in dets], float).reshape(-1, 4)
    labels = np.array([t[1] for t in dets], int)
    scores = np.array([t[0] for t in dets], float)
    valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
    boxes, labels, scores = boxes[valid], labels[valid], scores[valid]
    g_boxes = np.array([t[2:] for t in gts], float).reshape(-1, 4)
    g_labels = np.array([t[1] for t in gts], int)
    out = {}
    for c in classes:
        d, s, g = boxes[labels == c], scores[labels == c], g_boxes[g_labels == c]
        tp = np.zeros(len(d), bool)
        if len(d) and len(g):
            iou = _iou(d, g)
            best = np.argmax(iou, axis=1)
            matched = np.zeros(len(g), bool)
            for i in range(len(d)):
                if iou[i, best[i]] >= 0.5 and not matched[best[i]]:
                    tp[i] = matched[best[i]] = True
        if len(d):
            out[c] = (s, tp)
    return out


def _voc_ap(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float:
    order = np.argsort(scores)[::-1]  # numpy's default (unstable) sort, as metrics.py
    labels = tp[order]
    cum_tp = np.cumsum(labels)
    cum_fp = np.cumsum((labels <= 0).astype(float))
    precision = cum_tp.astype(float) / (cum_tp + cum_fp)
    recall = cum_tp.astype(float) / num_gt
    if not precision.size:
        return 0.0
    recall = np.concatenate([[0], recall, [1]])
    precision = np.concatenate([[0], precision, [0]])
    for i in range(len(precision) - 2, -1, -1):
        precision[i] = np.maximum(precision[i], precision[i + 1])
    idx = np.where(recall[1:] != recall[:-1])[0] + 1
    return np.sum((recall[idx] - recall[idx - 1]) * precision[idx])


def reference_evaluate(labelmap: dict, gt_path, det_path, excl_path=None,
                       protocol: str = "current") -> dict:
    """Official-style evaluation of CSV files -> {"mAP", "per_class"} (classes with gt)."""
    classes = sorted(labelmap)
    excluded = set()
    if excl_path:
        assert protocol == "activitynet-2019", "the current evaluator has no exclusions file"
        with open(excl_path) as f:
            excluded = {_key(*row, protocol) for row in csv.reader(f) if row}
    gt, gt_keys = _read_boxes(gt_path, set(classes), 0, protocol)
    gt = {k: v for k, v in gt.items() if k not in excluded}
    num_gt = defaultdict(int)
    for v in gt.values():
        for t in v:
            num_gt[t[1]] += 1
    per_class = defaultdict(lambda: ([], []))
    for key, dets in _read_boxes(det_path, set(classes), 50, protocol)[0].items():
        if key in excluded or (protocol == "current" and key not in gt_keys):
            continue
        for c, (s, tp) in _image_tp_fp(dets, gt.get(key, []), classes).items():
            per_class[c][0].append(s)
            per_class[c][1].append(tp)
    ap = np.full(max(classes), np.nan)
    for c in classes:
        if num_gt[c]:
            s, tp = per_class[c]
            ap[c - 1] = _voc_ap(np.concatenate(s or [np.zeros(0)]),
                                np.concatenate(tp or [np.zeros(0, bool)]), num_gt[c])
    return {"mAP": float(np.nanmean(ap)),
            "per_class": {labelmap[c]: float(ap[c - 1]) for c in classes if num_gt[c]}}


# ---------------------------------------------------------------------------- data
def make_data(out: Path, labelmap: dict, n_keyframes: int, seed: int = 0, persons: int = 5,
              det_boxes: int = 5, decimals: int = 6) -> dict:
    """Write labelmap.pbtxt, gt.csv, det.csv, excl.csv under ``out``; returns their paths.
    Detections are jittered ground-truth boxes (sometimes a false box) scored for every class,
    higher for the person's true actions; scores rounded to ``decimals``. Every 50th keyframe
    has no actions (a 2-column ground-truth row), every 97th only detections; excl.csv (for the
    activitynet-2019 protocol) lists every 89th."""
    from vlcofit.data.ava_formats import (
        AvaTable, write_detections, write_groundtruth, write_labelmap_pbtxt,
    )
    rng = np.random.default_rng(seed)
    ids = np.array(sorted(labelmap))
    n_vid = max(1, n_keyframes // 100)
    keys = [(f"vid{v:08d}", 902 + t) for v in range(n_vid) for t in range(-(-n_keyframes // n_vid))]
    keys = keys[:n_keyframes]
    xy = rng.random((n_keyframes, persons, 2)) * 0.6
    wh = 0.1 + rng.random((n_keyframes, persons, 2)) * 0.3
    gt_boxes = np.round(np.concatenate([xy, xy + wh], -1), 3)
    acts = rng.random((n_keyframes, persons, len(ids))) < 2.0 / len(ids)
    acts[..., 0] |= ~acts.any(-1)
    acts[5::50] = False  # keyframes without actions
    in_gt = np.ones(n_keyframes, bool)
    in_gt[3::97] = False  # keyframes absent from the ground truth
    k, p, c = np.nonzero(acts & in_gt[:, None, None])
    labels = ids[c]
    labels[rng.random(len(labels)) < 0.02] = 999  # ids outside the label map are dropped
    gt = AvaTable.from_arrays([key for key, i in zip(keys, in_gt) if i],
                              (np.cumsum(in_gt) - 1)[k], gt_boxes[k, p], labels, person_ids=p)
    jitter = rng.normal(0, 0.03, (n_keyframes, det_boxes, 4))
    src = np.minimum(np.arange(det_boxes), persons - 1)
    d_boxes = np.clip(gt_boxes[:, src] + jitter, 0, 1)
    false = rng.random((n_keyframes, det_boxes)) < 0.15
    d_boxes[false] = np.sort(rng.random((int(false.sum()), 4)).reshape(-1, 2, 2), 1).reshape(-1, 4)
    d_boxes = np.concatenate([np.minimum(d_boxes[..., :2], d_boxes[..., 2:]),
                              np.maximum(d_boxes[..., :2], d_boxes[..., 2:])], -1)
    truth = acts[:, src] & ~false[..., None]
    scores = np.round(np.clip(rng.random(truth.shape) * 0.6 + 0.35 * truth, 0, 1), decimals)
    kk, bb, cc = np.indices(scores.shape).reshape(3, -1)
    det = AvaTable.from_arrays(keys, kk, np.round(d_boxes[kk, bb], 3), ids[cc], scores.ravel())
    paths = {n: out / f"{n}.{'pbtxt' if n == 'labelmap' else 'csv'}"
             for n in ("labelmap", "gt", "det", "excl")}
    write_labelmap_pbtxt(paths["labelmap"], labelmap)
    write_groundtruth(paths["gt"], gt)
    write_detections(paths["det"], det)
    paths["excl"].write_text("".join(f"{v},{t:04d}\n" for v, t in keys[7::89]))
    return paths


# ---------------------------------------------------------------------------- bench
def _best_of(n: int, fn, *args):
    """(fastest wall time of n calls, result)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return min(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keyframes", type=int, default=10_000)
    ap.add_argument("--ref-keyframes", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from vlcofit.data.ava_formats import read_detections, read_groundtruth, read_labelmap
    from vlcofit.metrics.ava import evaluate, evaluate_files
    labelmap = read_labelmap(LABELS) if LABELS.exists() else \
        {i: f"action {i}" for i in range(1, 81) if i % 4 != 2}  # 60 ids out of 80, like AVA
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        (Path(tmp) / "full").mkdir()
        (Path(tmp) / "sub").mkdir()
        full = make_data(Path(tmp) / "full", labelmap, args.keyframes, args.seed)
        sub = make_data(Path(tmp) / "sub", labelmap, args.ref_keyframes, args.seed)
        n_rows = sum(1 for _ in open(full["det"]))
        print(f"wrote {n_rows:,} detection rows for {args.keyframes:,} keyframes "
              f"({time.perf_counter() - t0:.1f} s)")

        gt = read_groundtruth(full["gt"], labelmap)
        t_read, det = _best_of(3, read_detections, full["det"])
        t_eval, ours = _best_of(3, evaluate, labelmap, gt, det)  # current official protocol

        t = time.perf_counter()
        ref_sub = reference_evaluate(labelmap, sub["gt"], sub["det"])
        t_ref = (time.perf_counter() - t) * args.keyframes / args.ref_keyframes
        ours_sub = evaluate_files(sub["labelmap"], sub["gt"], sub["det"])
    same = ours_sub == ref_sub
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          "(other work on the machine slows every row)")
    print(f"\nmAP on {args.keyframes:,} keyframes: {ours['mAP']:.6f}")
    print(f"{args.ref_keyframes:,}-keyframe dataset: ours {ours_sub['mAP']!r}, "
          f"reference {ref_sub['mAP']!r} -> "
          + ("identical (mAP and all per-class APs)" if same else "DIFFERENT"))
    scale = args.keyframes / args.ref_keyframes
    total = t_read + t_eval
    rows = [(f"reference, official port (measured on {args.ref_keyframes:,}, "
             f"x{scale:g} extrapolated)", t_ref, "1.0"),
            ("vlcofit read_detections (CSV), best of 3", t_read, ""),
            ("vlcofit evaluate (in memory), best of 3", t_eval, ""),
            ("vlcofit read + evaluate", total, f"{t_ref / total:.0f}x faster")]
    print(f"\n| step ({args.keyframes:,} keyframes, {n_rows:,} rows) | seconds | vs reference |")
    print("| --- | --- | --- |")
    for name, sec, ratio in rows:
        print(f"| {name} | {sec:.2f} | {ratio} |")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
