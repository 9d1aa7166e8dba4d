"""Localisation dataset: keyframes, boxes and labels, proposals, media, bad inputs, batches."""
from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_jpeg as _write_jpeg

from vlcofit.config.schema import DatasetCard, LocalizationSpec
from vlcofit.data.localization import (
    LocalizationDataset, collate_boxes, evaluation_labelmap, read_keyframes, train_instance_counts,
)
from vlcofit.data.synthetic.clips import write_video
from vlcofit.errors import InputError
from vlcofit.text.prompts import ClassList

# ids with a gap, as AVA's: columns are class indices 0, 1, 2
CLASSES = ClassList(("stand", "sit", "talk to"), (1, 3, 4), "prompts/x.txt")
TRAIN = """\
v1,0001,0.100,0.100,0.500,0.500,1,0
v1,0001,0.100,0.100,0.500,0.500,3,0
v1,0001,0.600,0.600,0.900,0.900,4,1
v1,0002
v2,0001,0.200,0.200,0.400,0.400,3,0
"""
VAL = """\
v1,0001,0.100,0.100,0.500,0.500,1,0
v1,0002
v2,0001,0.200,0.200,0.400,0.400,4,0
v2,0002,0.200,0.200,0.400,0.400,4,0
v2,0003,0.200,0.200,0.400,0.400,99,0
"""


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path.name


def _videos(root: Path, names=("v1", "v2"), seconds: int = 4, fps: int = 8) -> None:
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for v, name in enumerate(names):
        frames = np.full((seconds * fps, 32, 48, 3), 40 + 60 * v, np.uint8)
        write_video(root / "videos" / f"{name}.mp4", frames, fps=fps)


def write_jpeg(image: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():  # torchvision 0.29 announces a move to TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        _write_jpeg(image, path)


def _proposals(root: Path, name: str, entries: dict) -> str:
    with open(root / name, "wb") as f:
        pickle.dump({k: np.asarray(v, np.float32) for k, v in entries.items()}, f)
    return name


def _card(root: Path, **spec) -> DatasetCard:
    return DatasetCard(name="toy", task="localization", format="ava", root=str(root),
                       train="train.csv", val="val.csv", prompts="x", num_frames=4,
                       frame_stride=2, min_crop_scale=1.0, hflip=False,
                       localization=LocalizationSpec(**spec))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    _write(tmp_path / "train.csv", TRAIN)
    _write(tmp_path / "val.csv", VAL)
    _write(tmp_path / "excluded.csv", "v2,0002\n")
    _videos(tmp_path)
    return tmp_path


def _dataset(card: DatasetCard, split: str, train: bool, size: int = 16) -> LocalizationDataset:
    return LocalizationDataset(card, split, CLASSES, size, train)


# --------------------------------------------------------------------------- keyframes

def test_training_keyframes_skip_those_without_boxes(root):
    keys, boxes = read_keyframes(_card(root), "train", CLASSES, train=True)
    assert keys == [("v1", 1), ("v2", 1)]
    assert len(boxes[("v1", 2)].boxes) == 0


def test_evaluation_keeps_empty_keyframes_and_drops_exclusions(root):
    keys, _ = read_keyframes(_card(root, exclusions_val="excluded.csv"), "val", CLASSES,
                             train=False)
    assert keys == [("v1", 1), ("v1", 2), ("v2", 1), ("v2", 3)]


def test_keyframe_range(root):
    keys, _ = read_keyframes(_card(root, keyframe_range=(2, 3)), "val", CLASSES, train=False)
    assert keys == [("v1", 2), ("v2", 2), ("v2", 3)]


def test_person_with_two_actions_is_one_multi_hot_box(root):
    _, boxes = read_keyframes(_card(root), "train", CLASSES, train=True)
    v1 = boxes[("v1", 1)]
    assert np.allclose(v1.boxes, [[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]])
    assert v1.labels.tolist() == [[1, 1, 0], [0, 0, 1]]  # ids 1, 3 -> columns 0, 1; id 4 -> 2
    assert train_instance_counts(_card(root), CLASSES).tolist() == [1, 2, 1]


def test_unknown_action_id_in_training_is_an_error_naming_the_line(root):
    _write(root / "train.csv", TRAIN.replace("0.900,4,1", "0.900,7,1"))
    with pytest.raises(InputError, match=r"train\.csv:3: action id 7 is not in the label map"):
        read_keyframes(_card(root), "train", CLASSES, train=True)


def test_unknown_action_id_in_evaluation_is_dropped(root):
    _, boxes = read_keyframes(_card(root), "val", CLASSES, train=False)
    assert len(boxes[("v2", 3)].boxes) == 0  # id 99 dropped, keyframe kept


def test_bad_box_is_an_error(root):
    _write(root / "train.csv", "v1,0001,0.5,0.1,0.2,0.5,1,0\n")
    with pytest.raises(InputError, match=r"train\.csv:1: .*x2 < x1"):
        read_keyframes(_card(root), "train", CLASSES, train=True)


def test_missing_ground_truth_file(tmp_path):
    with pytest.raises(InputError, match="ground truth of split train not found"):
        read_keyframes(_card(tmp_path), "train", CLASSES, train=True)


# --------------------------------------------------------------------------- items and batches

def test_batch_format(root):
    dataset = _dataset(_card(root), "train", train=True)
    batch = collate_boxes([dataset[0], dataset[1]])
    assert set(batch) == {"video", "boxes", "orig_boxes", "box_batch", "labels", "box_scores",
                          "keys", "valid", "bad", "index"}
    assert batch["video"].shape == (2, 4, 3, 16, 16) and batch["video"].dtype == torch.uint8
    assert batch["boxes"].shape == batch["orig_boxes"].shape == (3, 4)
    assert batch["box_batch"].tolist() == [0, 0, 1]
    assert batch["labels"].tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]
    assert batch["box_scores"].tolist() == [1.0, 1.0, 1.0]
    assert batch["keys"] == [("v1", 1), ("v2", 1)]
    assert batch["valid"].tolist() == [True, True] and batch["bad"] == []
    assert batch["index"].tolist() == [0, 1]
    # crop area 1 (aspect within 3/4..4/3 of the frame's): about the whole frame, no flip
    assert torch.allclose(batch["boxes"], batch["orig_boxes"], atol=0.04)
    assert torch.allclose(batch["video"][1, 0, 0].float(), torch.full((16, 16), 100.0), atol=8)


def test_training_items_are_deterministic_per_epoch(root):
    card = _card(root)
    card = DatasetCard(**{**card.__dict__, "min_crop_scale": 0.3})
    dataset = _dataset(card, "train", train=True)
    first = dataset[0]["boxes"]
    assert torch.equal(first, dataset[0]["boxes"])
    changed = False
    for epoch in range(1, 6):
        dataset.set_epoch(epoch)
        changed |= not torch.equal(first, dataset[0]["boxes"])
    assert changed


def test_training_adds_matching_proposals_with_their_box_labels(root):
    name = _proposals(root, "props.pkl", {
        "v1,0001": [[0.12, 0.1, 0.5, 0.52, 0.9],   # IoU ~0.9 with person 0
                    [0.0, 0.0, 0.05, 0.05, 0.99],  # overlaps nobody
                    [0.55, 0.6, 0.9, 0.9, 0.4]],   # IoU ~0.86 with person 1, low score
        "v1,0003": [[0.1, 0.1, 0.2, 0.2, 0.9]]})   # a keyframe without ground truth: fine
    dataset = _dataset(_card(root, proposals_train=name, train_proposal_iou=0.7), "train", True)
    boxes, labels, scores = dataset.train_boxes(("v1", 1))
    assert np.allclose(boxes[2:], [[0.12, 0.1, 0.5, 0.52], [0.55, 0.6, 0.9, 0.9]])
    assert labels.tolist() == [[1, 1, 0], [0, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert np.allclose(scores, [1, 1, 0.9, 0.4])
    item = dataset[0]
    assert item["labels"].shape == (4, 3) and np.allclose(item["box_scores"], [1, 1, 0.9, 0.4])
    # without the IoU setting the proposals are not used in training
    plain = _dataset(_card(root, proposals_train=name), "train", True)
    assert len(plain.train_boxes(("v1", 1))[0]) == 2


def test_evaluation_threshold_best_proposal_and_whole_frame(root, caplog):
    name = _proposals(root, "props.pkl", {
        "v1,0001": [[0.1, 0.1, 0.5, 0.5, 0.9], [0.2, 0.2, 0.3, 0.3, 0.5],
                    [0.6, 0.6, 0.9, 0.9, 0.85]],
        "v1,0002": [[0.1, 0.1, 0.2, 0.2, 0.3], [0.3, 0.3, 0.6, 0.6, 0.6]],
        "v2,0001": [[0.2, 0.2, 0.4, 0.4, 0.95]]})  # v2,0002 and v2,0003: none
    card = _card(root, proposals_val=name, person_score_threshold=0.8)
    with caplog.at_level(logging.WARNING):
        dataset = _dataset(card, "val", train=False)
    assert "toy/val: 2 of 5 keyframes have no proposals; they get the whole frame" in caplog.text
    boxes, scores = dataset.eval_boxes(("v1", 1))
    assert np.allclose(scores, [0.9, 0.85]) and np.allclose(boxes[1], [0.6, 0.6, 0.9, 0.9])
    boxes, scores = dataset.eval_boxes(("v1", 2))
    assert np.allclose(scores, [0.6]) and np.allclose(boxes, [[0.3, 0.3, 0.6, 0.6]])
    boxes, scores = dataset.eval_boxes(("v2", 2))
    assert boxes.tolist() == [[0, 0, 1, 1]] and scores.tolist() == [0]
    batch = collate_boxes([dataset[i] for i in range(len(dataset))])
    assert batch["box_batch"].tolist() == [0, 0, 1, 2, 3, 4]
    assert float(batch["labels"].abs().sum()) == 0.0
    assert torch.equal(batch["boxes"], batch["orig_boxes"])  # the squash keeps coordinates


def test_evaluation_without_proposals_uses_ground_truth(root, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = _dataset(_card(root), "val", train=False)
    assert "no proposals file" in caplog.text
    boxes, scores = dataset.eval_boxes(("v1", 1))
    assert np.allclose(boxes, [[0.1, 0.1, 0.5, 0.5]]) and scores.tolist() == [1.0]
    boxes, scores = dataset.eval_boxes(("v1", 2))  # no box at all: the whole frame, score 0
    assert boxes.tolist() == [[0, 0, 1, 1]] and scores.tolist() == [0.0]


def test_proposals_of_another_split_are_an_error(root):
    name = _proposals(root, "props.pkl", {"v1,0001": [[0.1, 0.1, 0.5, 0.5, 0.9]],
                                          "other,0001": [[0.1, 0.1, 0.5, 0.5, 0.9]]})
    with pytest.raises(InputError, match=r"props\.pkl.*not in split val.*other,0001"):
        _dataset(_card(root, proposals_val=name), "val", train=False)


def test_missing_or_unreadable_proposals_are_errors(root):
    with pytest.raises(InputError, match="proposals of split val not found"):
        _dataset(_card(root, proposals_val="nope.pkl"), "val", train=False)
    _write(root / "bad.pkl", "not a pickle")
    with pytest.raises(InputError, match="bad.pkl"):
        _dataset(_card(root, proposals_val="bad.pkl"), "val", train=False)


def test_missing_training_video_is_substituted_and_listed(root):
    (root / "videos" / "v2.mp4").unlink()
    dataset = _dataset(_card(root), "train", train=True)
    item = dataset[1]
    assert item["index"] == 0 and item["key"] == ("v1", 1) and item["valid"]
    assert item["bad"] == [str(root / "videos" / "v2.mp4")]
    assert collate_boxes([item])["bad"] == item["bad"]


def test_missing_evaluation_video_is_invalid(root):
    (root / "videos" / "v2.mp4").unlink()
    dataset = _dataset(_card(root), "val", train=False)
    item = dataset[2]
    assert item["key"] == ("v2", 1) and not item["valid"]
    assert item["video"].shape == (4, 3, 16, 16) and float(item["video"].abs().sum()) == 0
    assert item["boxes"].shape == (1, 4) and item["bad"] == [str(root / "videos" / "v2.mp4")]
    assert dataset[0]["valid"]


def test_frames_media(tmp_path):
    # 10 frames at 2 fps, frame 1 at 100 s, frame n a flat grey 20 * n
    for n in range(1, 11):
        folder = tmp_path / "frames" / "v1"
        folder.mkdir(parents=True, exist_ok=True)
        write_jpeg(torch.full((3, 8, 12), 20 * n, dtype=torch.uint8), str(folder / f"{n}.jpg"))
    _write(tmp_path / "val.csv", "v1,0102,0.1,0.1,0.5,0.5,1,0\nv1,0104,0.1,0.1,0.5,0.5,1,0\n"
                                 "v2,0102,0.1,0.1,0.5,0.5,1,0\n")
    card = _card(tmp_path, media="frames", videos="frames", frame_pattern="{:d}.jpg", fps=2,
                 first_frame_time=100)
    dataset = _dataset(card, "val", train=False, size=4)
    levels = lambda item: [round(float(f[0].float().mean()) / 20) for f in item["video"]]  # noqa
    assert levels(dataset[0]) == [1, 3, 5, 7]  # t=102 -> frame 5; 4 frames, stride 2
    assert levels(dataset[1]) == [5, 7, 9, 10]  # t=104 -> frame 9; clamped to the last frame
    missing = dataset[2]  # no folder for v2
    assert not missing["valid"] and missing["bad"] == [str(tmp_path / "frames" / "v2" / "1.jpg")]


def test_frames_media_with_video_id_in_pattern(tmp_path):
    folder = tmp_path / "frames" / "abc"
    folder.mkdir(parents=True)
    for n in range(1, 4):
        write_jpeg(torch.full((3, 8, 8), 50 * n, dtype=torch.uint8),
                   str(folder / f"abc_{n:06d}.jpg"))
    _write(tmp_path / "train.csv", "abc,0001,0.1,0.1,0.5,0.5,1,0\n")
    card = _card(tmp_path, media="frames", videos="frames", frame_pattern="{video_id}_{:06d}.jpg",
                 fps=1, first_frame_time=0)
    item = _dataset(card, "train", train=True, size=4)[0]
    assert item["valid"] and round(float(item["video"][2].float().mean()) / 50) == 2  # frame 2


def test_bad_card_settings(root):
    with pytest.raises(InputError, match="media must be one of"):
        _dataset(_card(root, media="tiles"), "val", train=False)
    with pytest.raises(InputError, match="frame_pattern 'img.jpg' must name frame n"):
        _dataset(_card(root, media="frames", frame_pattern="img.jpg"), "val", train=False)
    with pytest.raises(InputError, match="keyframe_range"):
        read_keyframes(_card(root, keyframe_range=(3,)), "val", CLASSES, train=False)
    with pytest.raises(InputError, match="task: localization"):
        LocalizationDataset(DatasetCard(name="c", prompts="x", root=str(root)), "val", CLASSES,
                            16, train=False)


def test_evaluation_labelmap(root):
    assert evaluation_labelmap(_card(root), CLASSES) == {1: "stand", 3: "sit", 4: "talk to"}
    eval60 = evaluation_labelmap(_card(root, labelmap="ava_eval60"), CLASSES)
    assert len(eval60) == 60 and 2 not in eval60 and eval60[1].startswith("bend")
    _write(root / "map.pbtxt", 'item {\n  name: "sit"\n  id: 3\n}\n')
    assert evaluation_labelmap(_card(root, labelmap="map.pbtxt"), CLASSES) == {3: "sit"}
