"""The synthetic AVA-format demo: official formats, long tail, boxes on the shapes, determinism."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from vlcofit.experiment import load_card
from vlcofit.data.ava_formats import (
    read_exclusions, read_groundtruth, read_labelmap, read_proposals,
)
from vlcofit.data.localization import LocalizationDataset, collate_boxes, train_instance_counts
from vlcofit.data.synthetic.ava import DEMO_AVA_ACTIONS, make_demo_ava
from vlcofit.data.video import open_video, read_frames
from vlcofit.text.prompts import read_class_list

SMALL = dict(num_train_videos=3, num_val_videos=2, seconds=4)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_ava(tmp_path_factory.mktemp("demo_ava"))  # the default parameters


def test_label_map_matches_the_prompt_file(demo):
    classes = read_class_list("demo_ava")
    assert dict(zip(classes.ids, classes.names)) == DEMO_AVA_ACTIONS
    assert read_labelmap(demo / "labelmap.pbtxt") == DEMO_AVA_ACTIONS
    assert 6 not in DEMO_AVA_ACTIONS and len(DEMO_AVA_ACTIONS) == 9


def test_ground_truth_in_official_form(demo):
    table = read_groundtruth(demo / "train.csv", DEMO_AVA_ACTIONS, strict=True)
    assert len(table.keys) == 32 * 9
    assert {t for _, t in table.keys} == set(range(1, 10))
    first = (demo / "train.csv").read_text().splitlines()[0].split(",")
    assert len(first) == 8 and first[0] == "train_000" and first[1] == "0001"
    empty = set(table.keys) - {table.keys[k] for k in np.unique(table.key_index)}
    assert empty  # some keyframes have no actor: `video_id,timestamp` rows
    with open_video(demo / "videos" / "train_000.mp4") as reader:
        assert (reader.num_frames, reader.fps) == (80, 8.0)


def test_long_tail(demo):
    card = load_card("demo_ava", {"root": str(demo)})
    counts = train_instance_counts(card, read_class_list("demo_ava"))
    assert counts.min() > 0 and counts.min() * 5 < counts.max()
    # the card's head/mid/tail thresholds give non-empty groups
    low, high = card.localization.head_mid_tail
    assert (counts < low).any() and ((counts >= low) & (counts < high)).any() \
        and (counts >= high).any()
    val = read_groundtruth(demo / "val.csv", DEMO_AVA_ACTIONS)
    assert set(np.unique(val.labels)) == set(DEMO_AVA_ACTIONS)  # every class has val boxes


def test_proposals_pickle_and_csv_agree_and_cover_the_people(demo):
    for split in ("train", "val"):
        pkl = read_proposals(demo / f"proposals_{split}.pkl")
        csv = read_proposals(demo / f"proposals_{split}.csv")
        gt = read_groundtruth(demo / f"{split}.csv")
        assert set(pkl) == set(csv) == set(gt.keys)
        for key in list(pkl)[:50]:
            assert len(pkl[key]) >= 1 and np.allclose(pkl[key], csv[key], atol=6e-4)
    found = hits = 0
    for k, key in enumerate(gt.keys):
        boxes = torch.from_numpy(np.unique(gt.boxes[gt.key_index == k], axis=0))
        if len(boxes):
            iou = box_iou(boxes, torch.from_numpy(pkl[key][:, :4]).double())
            found, hits = found + len(boxes), hits + int((iou.max(1).values >= 0.5).sum())
    assert hits / found > 0.95


def test_exclusions_name_val_keyframes(demo):
    excluded = read_exclusions(demo / "val_excluded_timestamps.csv")
    assert len(excluded) == 2
    assert excluded <= set(read_groundtruth(demo / "val.csv").keys)


def test_boxes_are_on_the_shapes(demo):
    table = read_groundtruth(demo / "val.csv")
    frames = read_frames(demo / "videos" / "val_000.mp4", [8 * t for t in range(1, 10)])
    inside, outside = [], []
    for k, (video, t) in enumerate(table.keys):
        if video != "val_000":
            continue
        image = frames[t - 1].float().mean(0)  # [H, W]
        mask = torch.zeros_like(image, dtype=torch.bool)
        for x1, y1, x2, y2 in table.boxes[table.key_index == k]:
            mask[round(y1 * 80):round(y2 * 80), round(x1 * 96):round(x2 * 96)] = True
        if mask.any():
            inside.append(image[mask].mean())
            outside.append(image[~mask].mean())
    assert len(inside) >= 7 and min(inside) > max(outside) + 30


def test_the_card_reads_the_demo(demo):
    card = load_card("demo_ava", {"root": str(demo)})
    classes = read_class_list("demo_ava")
    train = LocalizationDataset(card, "train", classes, 32, train=True)
    val = LocalizationDataset(card, "val", classes, 32, train=False)
    assert len(val) == 12 * 9 - 2
    batch = collate_boxes([train[0], train[5], val[0]])
    assert batch["video"].shape == (3, 8, 3, 32, 32) and batch["valid"].all()
    assert batch["labels"].shape[1] == 9 and batch["labels"][batch["box_batch"] < 2].sum() > 0


def test_deterministic_and_idempotent(tmp_path):
    a = make_demo_ava(tmp_path / "a", **SMALL)
    b = make_demo_ava(tmp_path / "b", **SMALL)
    names = ["train.csv", "val.csv", "proposals_train.pkl", "proposals_val.csv",
             "val_excluded_timestamps.csv", "labelmap.pbtxt", "meta.json"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert torch.equal(read_frames(a / "videos" / "val_001.mp4", [0, 10, 20]),
                       read_frames(b / "videos" / "val_001.mp4", [0, 10, 20]))
    stamp = (a / "train.csv").stat().st_mtime_ns
    make_demo_ava(a, **SMALL)
    assert (a / "train.csv").stat().st_mtime_ns == stamp  # same parameters: skipped
    c = make_demo_ava(tmp_path / "c", **SMALL, seed=1)
    assert (c / "train.csv").read_bytes() != (a / "train.csv").read_bytes()


def test_bad_size():
    with pytest.raises(ValueError, match="even"):
        make_demo_ava("unused", size=(95, 80))
