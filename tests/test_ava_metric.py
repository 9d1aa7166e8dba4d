"""AVA frame-mAP: hand-computed cases and exact agreement with a port of the official code."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vlcofit.data.ava_formats import AvaTable, write_detections, write_groundtruth, \
    write_labelmap_pbtxt
from vlcofit.metrics import ava
from vlcofit.metrics.ava import evaluate, evaluate_files

_spec = importlib.util.spec_from_file_location(
    "ava_bench", Path(__file__).resolve().parents[1] / "bench" / "ava_eval.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

LABELS = {1: "bend", 2: "crouch", 3: "dance"}
A = [0.1, 0.1, 0.4, 0.6]    # person boxes
B = [0.5, 0.2, 0.9, 0.8]
FAR = [0.0, 0.7, 0.2, 0.9]  # IoU 0 with A and B


def _table(rows, scores=True) -> AvaTable:
    """rows: (video, t, box, action[, score]) -> table."""
    keys = list(dict.fromkeys((r[0], r[1]) for r in rows))
    return AvaTable.from_arrays(keys, [keys.index((r[0], r[1])) for r in rows],
                                np.array([r[2] for r in rows]).reshape(-1, 4),
                                [r[3] for r in rows], [r[4] for r in rows] if scores else None)


def _eval(gt_rows, det_rows, exclusions=None, labels=LABELS) -> dict:
    result = evaluate(labels, _table(gt_rows, scores=False), _table(det_rows), exclusions)
    return result


def test_perfect_detections() -> None:
    gt = [("v", 902, A, 1), ("v", 902, B, 2), ("v", 903, A, 1), ("w", 902, B, 3)]
    det = [r + (0.9 - 0.1 * i,) for i, r in enumerate(gt)]
    assert _eval(gt, det) == {"mAP": 1.0, "per_class": {"bend": 1.0, "crouch": 1.0, "dance": 1.0}}


def test_hand_computed_ap() -> None:
    # One class, 3 gt boxes (keyframes 902, 903, 904). Detections by score:
    #   0.9 TP (902), 0.8 FP (902, far box), 0.7 TP (903), 0.6 FP (904, far box); 904 is missed.
    # precision 1, 1/2, 2/3, 2/4; recall 1/3, 1/3, 2/3, 2/3.
    # envelope (max to the right): 1, 2/3, 2/3, 1/2. Recall rises at the 1st and 3rd detection:
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    gt = [("v", 902, A, 1), ("v", 903, A, 1), ("v", 904, A, 1)]
    det = [("v", 902, A, 1, 0.9), ("v", 902, FAR, 1, 0.8), ("v", 903, A, 1, 0.7),
           ("v", 904, FAR, 1, 0.6)]
    result = _eval(gt, det)
    assert result["per_class"] == {"bend": pytest.approx(5 / 9, abs=1e-15)}
    assert result["mAP"] == result["per_class"]["bend"]


def test_top_50_cap_per_keyframe() -> None:
    # 49 wrong-class rows outscore the right one: it is row 50 and kept (AP 1); with 50 it is
    # row 51 and dropped (AP 0, the class has ground truth and no detection left).
    gt = [("v", 902, A, 1)]
    for n, expected in ((49, 1.0), (50, 0.0)):
        det = [("v", 902, B, 2, 0.9)] * n + [("v", 902, A, 1, 0.5)]
        assert _eval(gt, det)["per_class"] == {"bend": expected}
    # rows of ids outside the label map do not take places
    det = [("v", 902, B, 7, 0.9)] * 60 + [("v", 902, A, 1, 0.5)]
    assert _eval(gt, det)["per_class"] == {"bend": 1.0}
    # the cap is per keyframe
    det = [("v", 903, B, 2, 0.9)] * 60 + [("v", 902, A, 1, 0.5)]
    assert _eval(gt, det)["per_class"] == {"bend": 1.0}


@pytest.mark.parametrize("fill, tail, expected", [
    # rows tied at the cut: the heap is full after the first tied row, and a tied row never
    # replaces a tied one, so the first in file order stays
    (49, [(B, 1, 0.5), (A, 2, 0.5)], {"bend": 0.0, "crouch": 0.0}),
    (49, [(A, 2, 0.5), (B, 1, 0.5)], {"bend": 0.0, "crouch": 1.0}),
    # a later, higher row pops the smallest (score, action, y1, x1, y2, x2) tuple: action 1,
    # whatever the file order
    (48, [(A, 1, 0.5), (A, 2, 0.5), (FAR, 3, 0.95)], {"bend": 0.0, "crouch": 1.0}),
    (48, [(A, 2, 0.5), (A, 1, 0.5), (FAR, 3, 0.95)], {"bend": 0.0, "crouch": 1.0}),
])
def test_top_50_ties_follow_the_official_heap(tmp_path, fill, tail, expected) -> None:
    gt = [("v", 902, A, 1), ("v", 902, A, 2)]
    det = [("v", 902, FAR, 3, 0.9 + i / 1000) for i in range(fill)] + [("v", 902) + r for r in tail]
    assert _eval(gt, det)["per_class"] == expected
    write_labelmap_pbtxt(tmp_path / "l.pbtxt", LABELS)
    write_groundtruth(tmp_path / "gt.csv", _table(gt, scores=False))
    write_detections(tmp_path / "det.csv", _table(det))
    ref = bench.reference_evaluate(LABELS, tmp_path / "gt.csv", tmp_path / "det.csv")
    assert ref["per_class"] == expected


def test_duplicate_detection_is_false_positive() -> None:
    gt = [("v", 902, A, 1), ("v", 903, A, 1)]
    det = [("v", 902, A, 1, 0.9), ("v", 903, A, 1, 0.7)]
    assert _eval(gt, det)["mAP"] == 1.0
    # a second, slightly shifted detection of the 902 box ranks second: TP, FP, TP
    # precision 1, 1/2, 2/3; recall 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    dup = [0.11, 0.1, 0.41, 0.6]
    assert _eval(gt, det + [("v", 902, dup, 1, 0.8)])["mAP"] == pytest.approx(5 / 6, abs=1e-15)


def test_iou_ties_use_the_official_ground_truth_order(tmp_path) -> None:
    # D has exactly the same IoU (0.6) with G1 and G2. The official ground-truth list is sorted
    # by descending 8th column (person id), so D takes G2 (person 1) and E, equal to G1, is a
    # second true positive. Taking G1 first (file order) would make E a false positive.
    g1, g2 = [0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5]
    d = [0.125, 0.0, 0.625, 0.5]
    gt = AvaTable.from_arrays([("v", 902)], [0, 0], [g1, g2], [1, 1], person_ids=[0, 1])
    det = _table([("v", 902, d, 1, 0.9), ("v", 902, g1, 1, 0.8)])
    assert evaluate(LABELS, gt, det)["mAP"] == 1.0
    write_groundtruth(tmp_path / "gt.csv", gt)
    write_detections(tmp_path / "det.csv", det)
    assert bench.reference_evaluate(LABELS, tmp_path / "gt.csv", tmp_path / "det.csv")["mAP"] == 1.0


def test_multi_label_boxes() -> None:
    # one person doing two actions = one gt box per class
    gt = [("v", 902, A, 1), ("v", 902, A, 2), ("v", 903, B, 3)]
    det = [("v", 902, A, 1, 0.8), ("v", 902, A, 2, 0.7), ("v", 903, B, 3, 0.9)]
    assert _eval(gt, det)["per_class"] == {"bend": 1.0, "crouch": 1.0, "dance": 1.0}
    # the box scored for an action the person is not doing is a false positive of that class
    result = _eval(gt, det + [("v", 902, A, 3, 0.95)])
    assert result["per_class"] == {"bend": 1.0, "crouch": 1.0, "dance": 0.5}


def test_classes_without_ground_truth_are_left_out() -> None:
    gt = [("v", 902, A, 1)]
    det = [("v", 902, A, 1, 0.9), ("v", 902, B, 2, 0.8), ("v", 902, A, 3, 0.99)]
    assert _eval(gt, det) == {"mAP": 1.0, "per_class": {"bend": 1.0}}


def test_class_with_ground_truth_but_no_detections_scores_zero() -> None:
    gt = [("v", 902, A, 1), ("v", 902, B, 2)]
    det = [("v", 902, A, 1, 0.9)]
    assert _eval(gt, det) == {"mAP": 0.5, "per_class": {"bend": 1.0, "crouch": 0.0}}
    nothing = AvaTable.from_arrays([], [], np.zeros((0, 4)), [], [])
    assert evaluate(LABELS, _table(gt, scores=False), nothing) == \
        {"mAP": 0.0, "per_class": {"bend": 0.0, "crouch": 0.0}}


def test_excluded_keyframes_are_ignored() -> None:
    gt = [("v", 902, A, 1), ("v", 903, A, 1)]
    det = [("v", 902, A, 1, 0.9), ("v", 903, FAR, 1, 0.95)]
    assert _eval(gt, det)["mAP"] == pytest.approx(0.25)  # FP first, then TP: 1/2 * 1/2
    assert _eval(gt, det, exclusions={("v", 903)})["mAP"] == 1.0


def test_detections_on_keyframes_without_ground_truth_are_false_positives() -> None:
    # The official tool evaluates them against an empty box list (not ignored): FP, TP -> 0.5
    gt = [("v", 902, A, 1)]
    det = [("v", 902, A, 1, 0.5), ("v", 999, A, 1, 0.9)]
    assert _eval(gt, det)["mAP"] == 0.5
    assert _eval(gt, det, exclusions={("v", 999)})["mAP"] == 1.0


def test_ids_outside_the_label_map_are_dropped() -> None:
    gt = [("v", 902, A, 1), ("v", 902, B, 9)]
    det = [("v", 902, A, 1, 0.5), ("v", 902, B, 9, 0.9)]
    assert _eval(gt, det) == {"mAP": 1.0, "per_class": {"bend": 1.0}}


def test_degenerate_detection_boxes_are_dropped() -> None:
    gt = [("v", 902, A, 1)]
    det = [("v", 902, [0.2, 0.2, 0.2, 0.5], 1, 0.9), ("v", 902, A, 1, 0.5)]
    assert _eval(gt, det)["mAP"] == 1.0


def _boxes(rng, n: int, grid: int, min_size: int) -> np.ndarray:
    """[n, 4] x1y1x2y2 on a 1/grid grid, sides >= min_size / grid."""
    lo = rng.integers(0, grid - min_size + 1, (n, 2))
    hi = rng.integers(lo + min_size, grid + 1)
    return np.concatenate([lo, hi], 1) / grid


def _random_files(tmp_path, rng, n_keys: int, ties: bool):
    """Random AVA files; with ``ties``: scores on a 0.05 grid, boxes on a 0.1 grid, repeated
    gt boxes and more than 50 rows per keyframe, so every tie rule is exercised."""
    labels = {i: f"class {i}" for i in (1, 2, 3, 5, 8)}
    keys = [(f"vid{v}", 902 + t) for v in range(3) for t in range(n_keys // 3)]
    grid = 10 if ties else 1000
    gt, det, persons = [], [], {}
    for key in keys[:-2]:  # the last two keyframes only have detections
        persons[key] = _boxes(rng, rng.integers(1, 5), grid, 1)
        for p, box in enumerate(persons[key]):
            for a in rng.choice([1, 2, 3, 5, 8, 9], rng.integers(1, 3), replace=False):
                gt.append((key, box, a, p))
                if ties and rng.random() < 0.2:
                    gt.append((key, box, a, p))  # duplicated gt row
    for key in keys:
        near = persons.get(key, np.zeros((0, 4)))
        near = np.clip(near + rng.integers(-1, 2, near.shape) / (grid if ties else 50), 0, 1)
        near = np.concatenate([np.minimum(near[:, :2], near[:, 2:]),
                               np.maximum(near[:, :2], near[:, 2:])], 1)
        n = rng.integers(1, 20 if ties else 4)
        for box in np.concatenate([near, _boxes(rng, n, grid, 0)]):  # some with zero area
            for a in rng.choice([1, 2, 3, 5, 8, 9], rng.integers(1, 5), replace=False):
                score = rng.integers(1, 20) / 20 if ties else rng.random()
                det.append((key, box, a, score))
    rng.shuffle(det)  # not grouped by keyframe
    paths = {n: tmp_path / f"{n}.csv" for n in ("gt", "det", "excl")}
    write_labelmap_pbtxt(tmp_path / "labels.pbtxt", labels)
    for name, rows in (("gt", gt), ("det", det)):
        table = AvaTable.from_arrays(keys, [keys.index(r[0]) for r in rows],
                                     np.array([r[1] for r in rows]).reshape(-1, 4),
                                     [r[2] for r in rows],
                                     [r[3] for r in rows] if name == "det" else None,
                                     [r[3] for r in rows] if name == "gt" else None)
        (write_detections if name == "det" else write_groundtruth)(paths[name], table)
    paths["excl"].write_text(f"{keys[1][0]},{keys[1][1]:04d}\n")
    return labels, tmp_path / "labels.pbtxt", paths


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_official_port_exactly(tmp_path, seed, ties) -> None:
    rng = np.random.default_rng(seed)
    labels, lm, paths = _random_files(tmp_path, rng, 60, ties)
    for excl in (None, paths["excl"]):
        ours = evaluate_files(lm, paths["gt"], paths["det"], excl)
        ref = bench.reference_evaluate(labels, paths["gt"], paths["det"], excl)
        assert ours == ref  # bit-identical mAP and per-class APs
        assert 0.0 < ours["mAP"] < 1.0 and len(ours["per_class"]) == 5


def test_slow_path_used_only_where_order_matters(tmp_path, monkeypatch) -> None:
    calls = []
    real = ava._official_keyframe
    monkeypatch.setattr(ava, "_official_keyframe", lambda *a: calls.append(1) or real(*a))
    labels, lm, paths = _random_files(tmp_path, np.random.default_rng(0), 60, ties=False)
    evaluate_files(lm, paths["gt"], paths["det"])
    assert calls == []
    labels, lm, paths = _random_files(tmp_path, np.random.default_rng(0), 60, ties=True)
    evaluate_files(lm, paths["gt"], paths["det"])
    assert 0 < len(calls) <= 60


def test_bench_data_matches_reference(tmp_path) -> None:
    labels = {i: f"action {i}" for i in range(1, 81) if i % 4 != 2}
    paths = bench.make_data(tmp_path, labels, 40, seed=3)
    ours = evaluate_files(paths["labelmap"], paths["gt"], paths["det"], paths["excl"])
    assert ours == bench.reference_evaluate(labels, paths["gt"], paths["det"], paths["excl"])
    assert len(ours["per_class"]) > 30


def test_evaluate_files_needs_ground_truth(tmp_path) -> None:
    write_labelmap_pbtxt(tmp_path / "l.pbtxt", LABELS)
    (tmp_path / "gt.csv").write_text("v,0902,0.1,0.1,0.2,0.2,9,0\n")
    (tmp_path / "det.csv").write_text("")
    with pytest.raises(ava.InputError, match="gt.csv"):
        evaluate_files(tmp_path / "l.pbtxt", tmp_path / "gt.csv", tmp_path / "det.csv")
