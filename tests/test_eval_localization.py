"""Localisation evaluation: hand-made batches in the LOCALIZATION.md format, a stand-in model
whose box scores are known, a real Accelerator (and two real processes in one test)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from accelerate import Accelerator

from vlcofit.config import ModelConfig
from vlcofit.data.ava_formats import (AvaTable, make_key, read_detections, write_groundtruth,
                                      write_labelmap_pbtxt)
from vlcofit.eval_localization import (class_counts, class_groups, detections_table,
                                       evaluate_localization)
from vlcofit.metrics import ava
from vlcofit.models.boxes import BoxHead
from vlcofit.models.video import build_model
from vlcofit.prompts import ClassList

LABELMAP = {1: "stand", 3: "sit", 5: "walk", 7: "talk to"}
# id 9 is a dataset class outside the evaluated label map: never written to the detections
CLASSES = ClassList(("stand", "sit", "walk", "talk to", "dance"), (1, 3, 5, 7, 9), "<test>")
TRAIN_COUNTS = np.array([5000, 300, 20, 50, 7])  # stand: head, sit: mid, walk / talk to: tail
FALSE_BOX = [0.0, 0.0, 0.05, 0.05]  # an extra proposal on every keyframe, no action
# keyframe -> persons (box, action ids); B904 is unreadable in the loader
GT = {
    ("vidA", 902): [([0.1, 0.1, 0.4, 0.9], [1, 7]), ([0.5, 0.2, 0.8, 0.9], [3])],
    ("vidA", 903): [([0.1, 0.1, 0.4, 0.9], [1])],
    ("vidA", 904): [([0.2, 0.1, 0.5, 0.8], [5, 7]), ([0.6, 0.1, 0.9, 0.9], [1]),
                    ([0.0, 0.5, 0.2, 1.0], [3])],
    ("vidB", 902): [([0.3, 0.3, 0.7, 0.9], [5, 9])],
    ("vidB", 903): [([0.3, 0.3, 0.7, 0.9], [3, 7])],
    ("vidB", 904): [([0.1, 0.2, 0.3, 0.6], [1])],
}
KEYS = list(GT)
UNREADABLE = ("vidB", 904)


def write_gt(path: Path) -> Path:
    keys, key_index, boxes, labels, pids = [], [], [], [], []
    for k, (key, persons) in enumerate(GT.items()):
        keys.append(key)
        for p, (box, actions) in enumerate(persons):
            for a in actions:
                key_index.append(k), boxes.append(box), labels.append(a), pids.append(p)
    write_groundtruth(path, AvaTable.from_arrays(keys, key_index, boxes, labels, person_ids=pids))
    return path


def samples() -> list[dict]:
    """One dict per keyframe: gt persons + FALSE_BOX as proposals, multi-hot labels [k, C]."""
    out = []
    for i, (key, persons) in enumerate(GT.items()):
        boxes = [b for b, _ in persons] + [FALSE_BOX]
        labels = torch.zeros(len(boxes), len(CLASSES))
        for p, (_, actions) in enumerate(persons):
            for a in actions:
                labels[p, CLASSES.index_of(a)] = 1.0
        out.append({"index": i, "key": key, "boxes": torch.tensor(boxes), "labels": labels,
                    "valid": key != UNREADABLE})
    return out


def collate(items: list[dict]) -> dict:
    """The LOCALIZATION.md batch format. Sample i's video is the constant i, so a stand-in
    model can tell which sample a box came from."""
    video = torch.stack([torch.full((2, 3, 8, 8), float(s["index"])) for s in items])
    boxes = torch.cat([s["boxes"] for s in items])
    return {"video": video, "boxes": boxes, "orig_boxes": boxes.clone(),
            "box_batch": torch.cat([torch.full((len(s["boxes"]),), b) for b, s in enumerate(items)]),
            "labels": torch.cat([s["labels"] for s in items]),
            "box_scores": torch.ones(len(boxes)), "keys": [s["key"] for s in items],
            "valid": torch.tensor([s["valid"] for s in items]), "bad": [],
            "index": torch.tensor([s["index"] for s in items])}


class PerfectHead(nn.Module):
    """Knows each box's ground-truth labels: logits = +10 for positives, -10 for negatives
    (negated for the classes in ``flip``)."""

    def __init__(self, flip=()):
        super().__init__()
        self.table = {(s["index"], tuple(b)): s["labels"][j]
                      for s in samples() for j, b in enumerate(s["boxes"].tolist())}
        self.flip = list(flip)
        self.logit_bias = nn.Parameter(torch.zeros(()))
        self.texts = []

    def forward(self, token_map, boxes, box_batch, context):
        index = context[box_batch, 0].round().long().tolist()
        return torch.stack([self.table[(i, tuple(b))] for i, b in zip(index, boxes.tolist())])

    def logits(self, box_emb, text):
        self.texts.append(text)
        out = box_emb * 20 - 10
        out[:, self.flip] = -out[:, self.flip]
        return out


class StandIn(nn.Module):
    """encode_video -> (emb [B, E] whose entries are the sample index, token map [B, D, T, h, w])."""

    def __init__(self, head: nn.Module, embed_dim: int = 6):
        super().__init__()
        self.box_head = head
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.text = torch.nn.functional.normalize(torch.randn(len(CLASSES), embed_dim), dim=-1)

    def encode_video(self, video):
        b, t = video.shape[:2]
        return video.mean(dim=(1, 2, 3, 4))[:, None].repeat(1, self.text.shape[1]), \
            torch.zeros(b, 4, t, 2, 2)

    def class_matrix(self):
        return self.text


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


def run_eval(accelerator, model, tmp_path, loader=None, **kw):
    loader = loader or [collate(samples()[i:i + 2]) for i in range(0, len(GT), 2)]
    kw.setdefault("out_dir", tmp_path / "eval")
    return evaluate_localization(accelerator, model, loader, "ava", torch.arange(len(CLASSES)),
                                 CLASSES, write_gt(tmp_path / "gt.csv"), LABELMAP, **kw)


def test_perfect_scores_give_map_100_and_files(accelerator, tmp_path):
    class_text = torch.randn(len(CLASSES), 6)
    head = PerfectHead()
    out = run_eval(accelerator, StandIn(head), tmp_path, train_counts=TRAIN_COUNTS,
                   class_text=class_text)
    assert out == {"ava/mAP": 100.0, "ava/mAP_head": 100.0, "ava/mAP_mid": 100.0,
                   "ava/mAP_tail": 100.0, "ava/unreadable": 1.0, "ava/keyframes": 5.0}
    assert head.texts and all(torch.equal(t, class_text) for t in head.texts)  # zero-shot text
    det = read_detections(tmp_path / "eval" / "ava_detections.csv")
    assert set(det.keys) == set(KEYS) - {UNREADABLE}
    assert set(det.labels.tolist()) == set(LABELMAP)  # no row of id 9
    # every (box, label-map class) of the 5 readable keyframes: (3+2+4+2+2) boxes x 4 classes
    assert len(det) == 13 * 4
    # the number is the official evaluator's on the written file
    write_labelmap_pbtxt(tmp_path / "labelmap.pbtxt", LABELMAP)
    official = ava.evaluate_files(tmp_path / "labelmap.pbtxt", tmp_path / "gt.csv",
                                  tmp_path / "eval" / "ava_detections.csv", None)
    assert official["mAP"] < 1.0  # the unreadable keyframe's person is missed there ...
    excl = tmp_path / "excl.csv"
    excl.write_text("vidB,0904\n")  # ... and excluded by evaluate_localization
    assert ava.evaluate_files(tmp_path / "labelmap.pbtxt", tmp_path / "gt.csv",
                              tmp_path / "eval" / "ava_detections.csv", excl)["mAP"] == 1.0
    rows = (tmp_path / "eval" / "ava_per_class_ap.csv").read_text().splitlines()
    assert rows[0] == "class_id,class_name,train_count,group,ap"
    assert rows[1:] == ["1,stand,5000,head,100.00", "3,sit,300,mid,100.00",
                        "5,walk,20,tail,100.00", "7,talk to,50,tail,100.00"]
    png = (tmp_path / "eval" / "ava_per_class_ap.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 2000


def test_groups_follow_train_counts(accelerator, tmp_path):
    # "walk" (tail) scored backwards: only the tail group and the mean drop
    out = run_eval(accelerator, StandIn(PerfectHead(flip=[CLASSES.index_of(5)])), tmp_path,
                   train_counts=TRAIN_COUNTS)
    walk = float((tmp_path / "eval" / "ava_per_class_ap.csv").read_text()
                 .splitlines()[3].split(",")[-1])
    assert walk < 100.0
    assert out["ava/mAP_head"] == 100.0 and out["ava/mAP_mid"] == 100.0
    assert out["ava/mAP_tail"] == pytest.approx((walk + 100.0) / 2, abs=0.01)
    assert out["ava/mAP"] == pytest.approx((walk + 300.0) / 4, abs=0.01)
    # thresholds with an empty mid group -> NaN; no counts -> all groups NaN
    out = run_eval(accelerator, StandIn(PerfectHead()), tmp_path, train_counts=TRAIN_COUNTS,
                   thresholds=(60, 70), out_dir=None)
    assert np.isnan(out["ava/mAP_mid"]) and out["ava/mAP_head"] == 100.0
    out = run_eval(accelerator, StandIn(PerfectHead()), tmp_path / "nocounts")
    assert out["ava/mAP"] == 100.0 and all(np.isnan(out[f"ava/mAP_{g}"]) for g in ("head", "mid", "tail"))
    assert list(class_groups(np.array([0, 99, 100, 999, 1000]))) == ["tail", "tail", "mid", "mid", "head"]


def test_class_counts():
    table = AvaTable.from_arrays([("v", 1)], [0, 0, 0, 0], [[0, 0, 1, 1]] * 4, [1, 1, 7, 42])
    assert class_counts(table, CLASSES).tolist() == [2, 0, 0, 1, 0]


def test_prepared_loader_keeps_all_rows_of_the_last_sample(accelerator, tmp_path):
    # 5 readable keyframes in batches of 2: the last batch holds 1 sample with 4 boxes, and
    # gather_for_metrics cuts the last batch to 1 element: one element per sample is required
    data = [s for s in samples() if s["key"] != UNREADABLE]
    loader = accelerator.prepare(torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate))
    out = run_eval(accelerator, StandIn(PerfectHead()), tmp_path, loader=loader)
    assert out["ava/keyframes"] == 5.0 and out["ava/unreadable"] == 0.0
    assert out["ava/mAP"] == pytest.approx(100.0 * (3 + 0.5) / 4)  # B904's person missed (stand: AP 1/2)
    det = read_detections(tmp_path / "eval" / "ava_detections.csv")
    last = det.keys.index(data[-1]["key"])
    assert (det.key_index == last).sum() == len(data[-1]["boxes"]) * 4


def test_max_batches_scores_only_the_keyframes_seen(accelerator, tmp_path):
    out = run_eval(accelerator, StandIn(PerfectHead()), tmp_path, max_batches=1, out_dir=None)
    assert out["ava/keyframes"] == 2.0 and out["ava/mAP"] == 100.0


def test_top50_cut_gives_the_official_result():
    rng = np.random.default_rng(0)
    keys = [("v", t) for t in range(902, 922)]
    records, gt_rows = [], []
    for k, key in enumerate(keys):
        n = int(rng.integers(8, 20))  # 8-19 boxes x 4 classes: 32-76 rows, many over 50
        xy = rng.uniform(0, 0.5, (n, 2))
        boxes = np.hstack([xy, xy + rng.uniform(0.1, 0.5, (n, 2))])
        scores = np.round(rng.uniform(0, 1, (n, len(CLASSES))) * 8) / 8  # many ties
        records.append((make_key(*key), True, boxes, scores.astype(np.float32)))
        for j in rng.choice(n, 3, replace=False):
            gt_rows.append((k, boxes[j], int(rng.choice(list(LABELMAP)))))
    gt = AvaTable.from_arrays(keys, [r[0] for r in gt_rows], [r[1] for r in gt_rows],
                              [r[2] for r in gt_rows])
    capped, _ = detections_table(records, CLASSES, LABELMAP)
    full, _ = detections_table(records, CLASSES, LABELMAP, cap=10**9)
    assert len(capped) < len(full)
    per_key = np.bincount(capped.key_index)
    assert per_key.min() >= min(50, 8 * 4) and (per_key > 50).any()  # ties at the cut kept
    a, b = ava.evaluate(LABELMAP, gt, capped), ava.evaluate(LABELMAP, gt, full)
    assert a == b and 0 < a["mAP"] < 1


def test_with_tiny_video_clip_and_box_head(accelerator, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny"), list(CLASSES.names), [("a person {}.",)] * 5)
    model.box_head = BoxHead(model.backbone.width, model.backbone.embed_dim)
    loader = [{**b, "video": torch.randn(len(b["keys"]), 2, 3, 64, 64)}
              for b in (collate(samples()[i:i + 2]) for i in range(0, len(GT), 2))]
    out = run_eval(accelerator, model, tmp_path, loader=loader, train_counts=TRAIN_COUNTS)
    assert set(out) == {f"ava/{k}" for k in ("mAP", "mAP_head", "mAP_mid", "mAP_tail",
                                             "unreadable", "keyframes")}
    assert 0.0 < out["ava/mAP"] <= 100.0 and out["ava/keyframes"] == 5.0
    det = read_detections(tmp_path / "eval" / "ava_detections.csv")
    assert len(det) == 13 * 4 and ((det.scores > 0) & (det.scores < 1)).all()
    assert model.training  # evaluation restores the mode


SCRIPT = """
import json, os, sys
import torch
from accelerate import Accelerator
sys.path.insert(0, {tests!r})
import test_eval_localization as T
from pathlib import Path
acc = Accelerator(cpu=True)
data = [s for s in T.samples() if s["key"] != T.UNREADABLE]
loader = acc.prepare(torch.utils.data.DataLoader(data, batch_size=2, collate_fn=T.collate))
tmp = Path({tmp!r})
out = T.evaluate_localization(acc, T.StandIn(T.PerfectHead()), loader, "ava",
                              torch.arange(5), T.CLASSES, tmp / "gt.csv", T.LABELMAP,
                              out_dir=tmp / "eval")
(tmp / f"rank{{acc.process_index}}.json").write_text(json.dumps([acc.num_processes, out]))
"""


def test_two_processes_gather_every_sample_once(tmp_path):
    write_gt(tmp_path / "gt.csv")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), tmp=str(tmp_path)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29531", str(script)]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1]  # both processes see the main process's metrics
    world, out = results[0]
    assert world == 2
    # 5 samples on 2 processes x batch 2: the last global batch is padded with repeats
    assert out["ava/keyframes"] == 5.0
    assert out["ava/mAP"] == pytest.approx(100.0 * (3 + 0.5) / 4)
    det = read_detections(tmp_path / "eval" / "ava_detections.csv")
    assert len(det) == 13 * 4
