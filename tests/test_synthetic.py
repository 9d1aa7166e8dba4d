"""The demo dataset: decodable videos, labels that match the motion, deterministic, idempotent."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from vlcofit.config import load_card
from vlcofit.data.classification import read_records
from vlcofit.data.synthetic import (DEMO_CLASSES, _motion, make_demo_dataset, render_clip,
                                    write_video)
from vlcofit.data.video import open_video
from vlcofit.prompts import read_class_list

SMALL = dict(per_class_train=2, per_class_val=1, size=32, num_frames=8)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data", **SMALL)


def test_prompt_file_lists_the_demo_classes():
    assert read_class_list("demo").names == DEMO_CLASSES


def test_files_and_labels(demo):
    for split, per_class in (("train", 2), ("val", 1)):
        with open(demo / f"{split}.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["path", "label"]
        assert sorted(r[1] for r in rows[1:]) == sorted(DEMO_CLASSES * per_class)
        for path, _ in rows[1:]:
            with open_video(demo / path) as reader:
                assert (reader.num_frames, reader.fps) == (8, 8.0)
                assert reader.read(list(range(8))).shape == (8, 3, 32, 32)


def test_the_shipped_card_reads_the_demo_data(demo):
    card = load_card("demo", {"root": str(demo)})
    records = read_records(card, "train", read_class_list(card.prompts))
    assert len(records) == 16
    assert [r.label for r in records[:8]] == list(range(8))


def test_deterministic_and_idempotent(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", **SMALL)
    for name in ("train.csv", "val.csv", "train/000005.mp4", "val/000007.mp4"):
        assert (demo / name).read_bytes() == (again / name).read_bytes()
    stamp = (again / "train/000000.mp4").stat().st_mtime_ns
    make_demo_dataset(again, **SMALL)  # same parameters: nothing rewritten
    assert (again / "train/000000.mp4").stat().st_mtime_ns == stamp
    make_demo_dataset(again, **{**SMALL, "seed": 1})  # new parameters: regenerated
    assert (demo / "train/000000.mp4").read_bytes() != (again / "train/000000.mp4").read_bytes()


def test_video_bytes_do_not_depend_on_buffer_alignment(tmp_path):
    frames = render_clip("growing", np.random.default_rng(0), 32, 4)
    buf = np.zeros(frames.nbytes + 1, dtype=np.uint8)
    odd = np.frombuffer(buf.data, dtype=np.uint8, count=frames.size, offset=1).reshape(frames.shape)
    odd[:] = frames  # same pixels, at an odd address
    write_video(tmp_path / "a.mp4", frames)
    write_video(tmp_path / "b.mp4", odd)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def _shape_mask(frames: np.ndarray) -> np.ndarray:
    """[T, H, W] pixels far from the video's typical (background) colour."""
    background = np.median(frames.reshape(-1, 3), axis=0)
    return np.abs(frames.astype(float) - background).sum(-1) > 90


@pytest.mark.parametrize("label,axis,sign", [("moving left", 1, -1), ("moving right", 1, 1),
                                             ("moving up", 0, -1), ("moving down", 0, 1)])
def test_translation_direction(label, axis, sign):
    for seed in range(5):
        mask = _shape_mask(render_clip(label, np.random.default_rng(seed), 64, 8))
        first, last = (np.argwhere(mask[t]).mean(0)[axis] for t in (0, -1))
        assert sign * (last - first) > 10


@pytest.mark.parametrize("label,sign", [("growing", 1), ("shrinking", -1)])
def test_scale_direction(label, sign):
    for seed in range(5):
        mask = _shape_mask(render_clip(label, np.random.default_rng(seed), 64, 8))
        assert sign * (mask[-1].sum() - mask[0].sum()) > 100


@pytest.mark.parametrize("label,sign", [("rotating clockwise", 1),
                                        ("rotating counterclockwise", -1)])
def test_rotation_direction(label, sign):
    # screen y points down, so a growing angle (x = cos, y = sin) turns clockwise
    t = np.linspace(0, 1, 8)
    for seed in range(5):
        cx, cy, radius, angle = _motion(label, np.random.default_rng(seed), 64, t)
        assert np.all(sign * np.diff(angle) > np.deg2rad(7)) and np.ptp(cx) == 0
