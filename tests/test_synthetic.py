"""The demo dataset: decodable videos, labels that match the motion, deterministic, idempotent."""
from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from vlcofit.experiment import load_card, load_experiment
from vlcofit.data.captions import read_caption_records
from vlcofit.data.annotations import read_records
from vlcofit.data.synthetic.clips import DEMO_CLASSES, trajectory, draw_clip, render_clip, write_video
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.data.synthetic.target import TARGET_CLASSES, make_demo_target
from vlcofit.data.video import open_video
from vlcofit.experiment import build_labels
from vlcofit.text.hierarchy import read_hierarchy
from vlcofit.text.prompts import read_class_list

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
        cx, cy, radius, angle = trajectory(label, np.random.default_rng(seed), 64, t)
        assert np.all(sign * np.diff(angle) > np.deg2rad(7)) and np.ptp(cx) == 0


# sha256 prefixes of the frames of the demo's train clips 0-7 (seed 0) and of one small clip,
# computed with the renderer before render_clip was split into draw_clip + paint: the README's
# figures were measured on these videos, so any change to a draw or to the painting shows here
FRAME_HASHES = {
    "moving left": "51ad19b852432589", "moving right": "e4e0edefd16c20cc",
    "moving up": "5b69b3a27f7de2d8", "moving down": "cbf35ac544b407e2",
    "rotating clockwise": "a4f69d494a5f71a7", "rotating counterclockwise": "e59c90b4ea9a1cce",
    "growing": "efd4ed04e6d6b076", "shrinking": "f832f72e2566e7bd",
}


def _hash(frames: np.ndarray) -> str:
    return hashlib.sha256(frames.tobytes()).hexdigest()[:16]


def test_frames_are_those_of_the_measured_demo():
    for i, label in enumerate(DEMO_CLASSES):
        assert _hash(render_clip(label, np.random.default_rng([0, 0, i]), 64, 16)) \
            == FRAME_HASHES[label], label
    assert _hash(render_clip("growing", np.random.default_rng(7), 32, 8)) == "ae27ee0bf9c727c2"
    frames, params = draw_clip("moving up", np.random.default_rng([0, 0, 2]), 64, 16)
    assert _hash(frames) == FRAME_HASHES["moving up"] and params.label == "moving up"


def test_captions_files(demo):
    for split in ("train", "val"):
        with open(demo / f"{split}.csv") as f:
            videos = [r[0] for r in csv.reader(f)][1:]
        with open(demo / f"{split}_captions.csv") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["path", "caption"]
        assert [p for p, _ in rows[1:]] == [v for v in videos for _ in range(2)]
        pairs = [(rows[k][1], rows[k + 1][1]) for k in range(1, len(rows), 2)]
        assert all(a != b for a, b in pairs)
    card = load_card("demo_captions", {"root": str(demo)})
    records = read_caption_records(card, "val")
    assert len(records) == 8 and all(len(r.captions) == 2 for r in records)
    assert card.hflip is False


def test_captions_came_later_and_leave_the_videos_alone(demo, tmp_path):
    # a folder made before captions existed (no "captions" in meta.json) is remade once
    again = make_demo_dataset(tmp_path / "old", **SMALL)
    meta = (again / "meta.json").read_text()
    (again / "meta.json").write_text(meta.replace(',\n "captions": 1', ""))
    (again / "train_captions.csv").unlink()
    make_demo_dataset(again, **SMALL)
    assert (again / "meta.json").read_text() == meta
    assert (again / "train_captions.csv").read_bytes() == (demo / "train_captions.csv").read_bytes()
    assert (again / "train/000003.mp4").read_bytes() == (demo / "train/000003.mp4").read_bytes()


def test_coarse_granularity_of_the_shipped_demo_card():
    # demo.yaml has no `coarse` (a fine demo run stays as measured): the coarse arm names the map
    cfg = load_experiment("demo", ["datasets.demo.coarse=demo", "datasets.demo.granularity=coarse"])
    assert build_labels(cfg).classes["demo"].names == (
        "moving sideways", "moving vertically", "rotating", "changing size")


# --------------------------------------------------------------------------- the target task

TARGET_SMALL = dict(per_class_train=2, per_class_val=1, size=32, num_frames=8)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return make_demo_target(tmp_path_factory.mktemp("target") / "data", **TARGET_SMALL)


def test_target_classes_are_new_names_from_the_same_vocabulary():
    assert read_class_list("demo_target").names == tuple(TARGET_CLASSES)
    assert len(TARGET_CLASSES) == 6
    coarse = read_hierarchy(load_card("demo", {"coarse": "demo"})).coarse.names
    assert not set(TARGET_CLASSES) & (set(DEMO_CLASSES) | set(coarse))
    assert all(motion in DEMO_CLASSES for _, motion in TARGET_CLASSES.values())


def test_target_splits_and_card(target):
    card = load_card("demo_target", {"root": str(target)})
    classes = read_class_list(card.prompts)
    for split, per_class in (("train", 2), ("val", 1)):
        records = read_records(card, split, classes)
        assert sorted(r.label for r in records) == sorted(list(range(6)) * per_class)
        with open_video(records[0].path) as reader:
            assert reader.read(list(range(8))).shape == (8, 3, 32, 32)
        assert (target / f"{split}_captions.csv").is_file()
    assert card.hflip is False and card.num_classes == 6


def test_target_is_deterministic_and_not_the_demo(target, demo, tmp_path):
    again = make_demo_target(tmp_path / "again", **TARGET_SMALL)
    for name in ("train.csv", "val_captions.csv", "train/000004.mp4", "val/000005.mp4"):
        assert (target / name).read_bytes() == (again / name).read_bytes()
    assert (target / "train/000000.mp4").read_bytes() != (demo / "train/000000.mp4").read_bytes()


@pytest.mark.parametrize("name", list(TARGET_CLASSES))
def test_target_clips_show_their_shape_and_direction(name):
    from vlcofit.data.synthetic.target import _target_clips
    shape, motion = TARGET_CLASSES[name]
    index = list(TARGET_CLASSES).index(name)
    clips = list(_target_clips(2, [0, 0, 7], 64, 8))
    for label, frames, params in clips[index::6]:
        assert label == name and params.shape == shape and params.label == motion
        mask = _shape_mask(frames)
        first, last = (np.argwhere(mask[t]).mean(0)[1] for t in (0, -1))
        assert (last - first) * (1 if motion == "moving right" else -1) > 10


def test_demo_generators_know_the_new_cards(monkeypatch, tmp_path):
    import vlcofit.cli.demos as demos
    from vlcofit.cli.demos import demo_generators
    monkeypatch.setattr(demos, "make_demo_dataset", lambda root: root)
    generators = demo_generators()
    assert generators["demo_target"] is make_demo_target
    # the caption card reads the demo's own folder: one copy of the videos for both cards
    assert generators["demo_captions"](tmp_path / "data" / "demo_captions") == \
        tmp_path / "data" / "demo"
    assert load_card("demo_captions").root == load_card("demo").root
