"""Annotation formats -> records (and their errors); the dataset's items, bad videos, collate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlcofit.config.schema import DatasetCard
from vlcofit.experiment import load_card
from vlcofit.data.annotations import FORMATS, VideoRecord, read_records
from vlcofit.data.classification import ClassificationDataset, collate
from vlcofit.data.loading import worker_context
from vlcofit.data.synthetic.clips import write_video
from vlcofit.data.transforms import build_transform
from vlcofit.errors import InputError
from vlcofit.text.prompts import ClassList, read_class_list

CLASSES = ClassList.from_names(["Apply Eye Makeup", "brush hair", "jump rope"], "prompts/x.txt")


def _card(root: Path, fmt: str, **kw) -> DatasetCard:
    kw.setdefault("train", "train.txt")
    return DatasetCard(name="x", format=fmt, root=str(root), prompts="x", **kw)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _pairs(records: list[VideoRecord], root: Path) -> list[tuple[str, int]]:
    return [(str(r.path.relative_to(root)), r.label) for r in records]


# --------------------------------------------------------------------------- formats

def test_csv_by_name_and_index_with_header(tmp_path):
    _write(tmp_path / "train.txt", "path,label\na/1.mp4,brush hair\nb/2.mp4,2\n\n"
                                   '"c,3.mp4",Brush_Hair\n')
    records = read_records(_card(tmp_path, "csv"), "train", CLASSES)
    assert _pairs(records, tmp_path) == [("a/1.mp4", 1), ("b/2.mp4", 2), ("c,3.mp4", 1)]
    assert records[0].source == f"{tmp_path / 'train.txt'}:2"


def test_csv_accepts_plain_class_names(tmp_path):
    _write(tmp_path / "train.txt", "a.mp4,jump rope\n")
    records = read_records(_card(tmp_path, "csv"), "train", ["apply", "jump rope"])
    assert records[0].label == 1


def test_list(tmp_path):
    _write(tmp_path / "train.txt", "x/a.avi 0\nx/b.avi   2\n")
    records = read_records(_card(tmp_path, "list"), "train", CLASSES)
    assert _pairs(records, tmp_path) == [("x/a.avi", 0), ("x/b.avi", 2)]


def test_folder(tmp_path):
    for rel in ("train/brush_hair/a.mp4", "train/brush_hair/b.MKV", "train/JumpRope/c.avi",
                "train/JumpRope/notes.txt"):
        _write(tmp_path / rel, "x")
    records = read_records(_card(tmp_path, "folder", train="train"), "train", CLASSES)
    assert _pairs(records, tmp_path) == [("train/JumpRope/c.avi", 2),
                                         ("train/brush_hair/a.mp4", 1),
                                         ("train/brush_hair/b.MKV", 1)]


def test_folder_unknown_class(tmp_path):
    _write(tmp_path / "train/juggling/a.mp4", "x")
    with pytest.raises(InputError, match="juggling.*prompts/x.txt"):
        read_records(_card(tmp_path, "folder", train="train"), "train", CLASSES)


def test_kinetics_columns_by_name(tmp_path):
    _write(tmp_path / "k.csv", "youtube_id,label,time_start,time_end,split,is_cc\n"
                               "abc,brush hair,5,15,train,0\nxyz,\"jump rope\",0,10,train,0\n")
    card = _card(tmp_path, "kinetics", train="k.csv",
                 filename_pattern="{split}/{label}/{youtube_id}_{time_start:06d}_{time_end:06d}"
                                  ".mp4")
    records = read_records(card, "train", CLASSES)
    assert _pairs(records, tmp_path) == [("train/brush hair/abc_000005_000015.mp4", 1),
                                         ("train/jump rope/xyz_000000_000010.mp4", 2)]
    default = read_records(_card(tmp_path, "kinetics", train="k.csv"), "train", CLASSES)
    assert default[0].path.name == "abc_000005_000015.mp4"


def test_ucf101_class_from_folder(tmp_path):
    _write(tmp_path / "lists/train1.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                          "JumpRope/v_JumpRope_g01_c02.avi 3\n")
    _write(tmp_path / "lists/test1.txt", "JumpRope/v_JumpRope_g02_c01.avi\n")
    (tmp_path / "UCF-101").mkdir()
    card = _card(tmp_path / "UCF-101", "ucf101", train="../lists/train1.txt",
                 val="../lists/test1.txt")
    assert [r.label for r in read_records(card, "train", CLASSES)] == [0, 2]
    (record,) = read_records(card, "val", CLASSES)
    assert record.path == tmp_path / "UCF-101/JumpRope/v_JumpRope_g02_c01.avi"


def test_hmdb51_split_files(tmp_path):
    _write(tmp_path / "splits/brush_hair_test_split1.txt", "a.avi 1\nb.avi 2\nc.avi 0\n")
    _write(tmp_path / "splits/jump_rope_test_split1.txt", "d.avi 2\n")
    _write(tmp_path / "splits/jump_rope_test_split2.txt", "e.avi 1\n")
    card = _card(tmp_path, "hmdb51", train="splits/*_split1.txt", val="splits/*_split1.txt")
    assert _pairs(read_records(card, "train", CLASSES), tmp_path) == [("brush_hair/a.avi", 1)]
    assert _pairs(read_records(card, "val", CLASSES), tmp_path) == [("brush_hair/b.avi", 1),
                                                                    ("jump_rope/d.avi", 2)]


def test_ssv2_json(tmp_path):
    entries = [{"id": "12", "label": "x", "template": "Jump [something]", "placeholders": []}]
    _write(tmp_path / "train.json", json.dumps(entries))
    classes = ClassList.from_names(["Apply something", "Jump something"])
    card = _card(tmp_path, "ssv2", train="train.json", filename_pattern="videos/{id}.webm")
    assert _pairs(read_records(card, "train", classes), tmp_path) == [("videos/12.webm", 1)]


def test_every_format_is_tested():
    assert set(FORMATS) == {"csv", "list", "folder", "kinetics", "ucf101", "hmdb51", "ssv2"}


# --------------------------------------------------------------------------- format errors

BAD = [
    ("csv", "a.mp4,brush hair\nb.mp4\n", 2, "expected 'path,label'"),
    ("csv", "a.mp4,brush hair,3\n", 1, "expected 'path,label'"),
    ("csv", "a.mp4,juggling\n", 1, "label 'juggling' is not in the prompt file prompts/x.txt"),
    ("csv", "a.mp4,brush hiar\n", 1, "close names: 'brush hair'"),
    ("csv", "a.mp4,3\n", 1, "label index 3 is out of range .*prompts/x.txt"),
    ("csv", "a.mp4,-1\n", 1, "label index -1 is out of range"),
    ("list", "a.mp4 120 1\n", 1, "2 columns"),
    ("list", "a.mp4\n", 1, "2 columns"),
    ("list", "a.mp4 7\n", 1, "out of range"),
    ("kinetics", "label,youtube_id,time_start,time_end,split\nbrush hair,a,0,10\n", 2,
     "expected 5 columns"),
    ("kinetics", "label,youtube_id,time_start,time_end,split\nbrush hair,a,zero,10,train\n", 2,
     "must be numbers"),
    ("kinetics", "label,youtube_id,time_start,split\n", 1, "lacks column.*time_end"),
    ("kinetics", "label,youtube_id,time_start,time_end,split\nskiing,a,0,10,train\n", 2,
     "'skiing' is not in"),
    ("ucf101", "NoFolder.avi\n", 1, "Class/video.avi"),
]


@pytest.mark.parametrize("fmt,text,line,message", BAD)
def test_bad_annotations_name_file_and_line(tmp_path, fmt, text, line, message):
    path = _write(tmp_path / "train.txt", text)
    with pytest.raises(InputError, match=message) as info:
        read_records(_card(tmp_path, fmt), "train", CLASSES)
    assert str(info.value).startswith(f"{path}:{line}:")


@pytest.mark.parametrize("fmt", ["csv", "list", "kinetics", "ucf101", "ssv2"])
def test_missing_annotation_file(tmp_path, fmt):
    with pytest.raises(InputError, match=f"{tmp_path / 'train.txt'}: annotation file not found"):
        read_records(_card(tmp_path, fmt), "train", CLASSES)


def test_missing_split_folder_glob_and_unset_split(tmp_path):
    with pytest.raises(InputError, match="split folder not found"):
        read_records(_card(tmp_path, "folder"), "train", CLASSES)
    with pytest.raises(InputError, match="no HMDB51 split files"):
        read_records(_card(tmp_path, "hmdb51", train="s/*_split1.txt"), "train", CLASSES)
    with pytest.raises(InputError, match="sets no `val` split"):
        read_records(_card(tmp_path, "csv"), "val", CLASSES)


@pytest.mark.parametrize("fmt,text", [("csv", "path,label\n"), ("list", "\n\n"),
                                      ("kinetics", "label,youtube_id,time_start,time_end,split\n")])
def test_empty_split(tmp_path, fmt, text):
    _write(tmp_path / "train.txt", text)
    with pytest.raises(InputError, match="has no videos"):
        read_records(_card(tmp_path, fmt), "train", CLASSES)


def test_unknown_format_and_bad_pattern(tmp_path):
    with pytest.raises(InputError, match="unknown format 'tsv'"):
        read_records(_card(tmp_path, "tsv"), "train", CLASSES)
    _write(tmp_path / "train.txt",
           "label,youtube_id,time_start,time_end,split\nbrush hair,a,0,10,t\n")
    with pytest.raises(InputError, match="filename_pattern.*video_id"):
        read_records(_card(tmp_path, "kinetics", filename_pattern="{video_id}.mp4"), "train",
                     CLASSES)


def test_missing_videos_are_not_input_errors(tmp_path):
    _write(tmp_path / "train.txt", "nowhere.mp4,0\n")
    (record,) = read_records(_card(tmp_path, "csv"), "train", CLASSES)
    assert not record.path.exists()


# --------------------------------------------------------------------------- dataset

@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three readable 12-frame videos (frame brightness 20 * label + k) and a corrupt one."""
    root = tmp_path_factory.mktemp("videos")
    for label in range(3):
        frames = np.zeros((12, 24, 32, 3), np.uint8)
        frames[:] = (60 * label + 5 * np.arange(12))[:, None, None, None]
        write_video(root / f"{label}.mp4", frames, fps=6)
    (root / "bad.mp4").write_bytes(b"\x00garbage" * 64)
    return root


def _dataset(root: Path, train: bool, **card_kw) -> ClassificationDataset:
    records = [VideoRecord(root / f"{i}.mp4", i, f"list:{i + 1}") for i in range(3)]
    records.insert(1, VideoRecord(root / "bad.mp4", 2, "list:9"))
    card = DatasetCard(name="x", prompts="x", num_frames=4, **card_kw)
    transform = build_transform(train, 16, crops=card.test_crops)
    return ClassificationDataset(records, card, transform, train=train, seed=1)


def test_train_items_reproducible_per_seed_epoch_index(videos):
    data = _dataset(videos, train=True)
    item = data[0]
    assert item["video"].shape == (4, 3, 16, 16) and item["video"].dtype == torch.uint8
    assert (item["label"], item["index"], item["valid"], item["bad"]) == (0, 0, True, [])
    assert torch.equal(item["video"], data[0]["video"])
    data.set_epoch(1)
    assert not torch.equal(item["video"], data[0]["video"])
    data.set_epoch(0)
    assert torch.equal(item["video"], data[0]["video"])
    # an EpochBatches index past the records: the same record one epoch later
    later = data[len(data)]
    data.set_epoch(1)
    assert later["index"] == 0 and torch.equal(later["video"], data[0]["video"])


def test_train_substitutes_a_bad_video(videos):
    data = _dataset(videos, train=True)
    item = data[1]  # bad.mp4: replaced by record (1 + 7919) % 4 = 0
    assert item["bad"] == [str(videos / "bad.mp4")]
    assert (item["index"], item["label"], item["valid"]) == (0, 0, True)
    assert item["video"].shape == (4, 3, 16, 16)


def test_train_gives_up_when_every_video_is_unreadable(tmp_path):
    records = [VideoRecord(tmp_path / f"{i}.mp4", 0, f"l:{i}") for i in range(3)]
    data = ClassificationDataset(records, DatasetCard(name="x", prompts="x"),
                                 build_transform(True, 16), train=True)
    with pytest.raises(RuntimeError, match="3 unreadable videos"):
        data[0]


def test_eval_views_and_invalid_videos(videos):
    data = _dataset(videos, train=False, test_clips=2, test_crops=3)
    good = data[2]  # record 2 = 1.mp4, label 1
    assert good["video"].shape == (6, 4, 3, 16, 16)
    assert (good["label"], good["index"], good["valid"], good["bad"]) == (1, 2, True, [])
    bad = data[1]
    assert bad["video"].shape == (6, 4, 3, 16, 16) and not bad["video"].any()
    assert (bad["label"], bad["valid"], bad["bad"]) == (2, False, [str(videos / "bad.mp4")])
    # the two temporal clips of a TSN view differ (brightness rises with the frame index)
    assert good["video"][3:].float().mean() > good["video"][:3].float().mean()


def test_eval_frames_are_the_centre_frames(videos):
    data = _dataset(videos, train=False)
    video = data[3]["video"]  # 2.mp4: frame k has grey level 120 + 5k; TSN centres 1, 4, 7, 10
    levels = video[0].float().mean(dim=(1, 2, 3))
    assert levels.tolist() == pytest.approx([125, 140, 155, 170], abs=3)


def test_collate(videos):
    data = _dataset(videos, train=False)
    batch = collate([data[i] for i in range(4)])
    assert batch["video"].shape == (4, 1, 4, 3, 16, 16)
    assert batch["label"].dtype == torch.long and batch["label"].tolist() == [0, 2, 1, 2]
    assert batch["index"].tolist() == [0, 1, 2, 3]
    assert batch["valid"].dtype == torch.bool
    assert batch["valid"].tolist() == [True, False, True, True]
    assert batch["bad"] == [str(videos / "bad.mp4")]


def test_dataloader_with_workers(videos):
    data = _dataset(videos, train=True)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2, collate_fn=collate,
                                         multiprocessing_context=worker_context())
    batches = list(loader)
    assert [b["video"].shape[0] for b in batches] == [2, 2]
    assert torch.equal(batches[0]["video"][0], data[0]["video"])  # same in a worker process


def test_persistent_workers_see_the_new_epoch(videos):
    data = _dataset(videos, train=True)
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=1, collate_fn=collate,
                                         persistent_workers=True,
                                         multiprocessing_context=worker_context())
    seen = []
    for epoch in (0, 1):
        data.set_epoch(epoch)
        seen.append(torch.cat([b["video"] for b in loader]))
        in_main = torch.stack([data[i]["video"] for i in range(len(data))])
        assert torch.equal(seen[-1], in_main)  # the worker drew what epoch `epoch` draws here
    assert not torch.equal(seen[0], seen[1])


def test_uninstalled_decoder_is_an_input_error(videos):
    card = DatasetCard(name="x", prompts="x", decoder="decord")
    try:
        import decord  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="not installed"):
            ClassificationDataset([VideoRecord(videos / "0.mp4", 0, "l:1")], card,
                                  build_transform(False, 16), train=False)


# --------------------------------------------------------------------------- shipped cards

@pytest.mark.parametrize("name", ["demo", "kinetics400", "ucf101", "hmdb51", "ssv2"])
def test_shipped_cards(name):
    card = load_card(name)
    assert card.format in FORMATS
    assert len(read_class_list(card.prompts)) == card.num_classes


def test_shipped_cards_read_official_layouts(tmp_path):
    ucf = tmp_path / "ucf101/UCF-101"
    ucf.mkdir(parents=True)
    _write(tmp_path / "ucf101/ucfTrainTestlist/trainlist01.txt",
           "HandstandPushups/v_HandStandPushups_g08_c01.avi 37\nYoYo/v_YoYo_g01_c01.avi 101\n")
    card = load_card("ucf101", {"root": str(ucf)})
    names = read_class_list(card.prompts).names
    assert [names[r.label] for r in read_records(card, "train", read_class_list(card.prompts))] \
        == ["Hand Stand Pushups", "Yo Yo"]

    _write(tmp_path / "hmdb/testTrainMulti_7030_splits/sword_exercise_test_split1.txt",
           "Blade_Of_Fury_sword_exercise_f_cm_np1_ri_med_3.avi 2\n")
    card = load_card("hmdb51", {"root": str(tmp_path / "hmdb")})
    (record,) = read_records(card, "val", read_class_list(card.prompts))
    assert record.label == 45 and record.path.parent.name == "sword_exercise"

    entries = [{"id": "5", "template": "Pushing [something] from left to right"}]
    _write(tmp_path / "ssv2/labels/something-something-v2-train.json", json.dumps(entries))
    card = load_card("ssv2", {"root": str(tmp_path / "ssv2")})
    (record,) = read_records(card, "train", read_class_list(card.prompts))
    assert record.label == 93
    assert record.path == tmp_path / "ssv2/20bn-something-something-v2/5.webm"

    _write(tmp_path / "k400/annotations/val.csv", "label,youtube_id,time_start,time_end,split\n"
                                                  "air drumming,--abc,12,22,val\n")
    card = load_card("kinetics400", {"root": str(tmp_path / "k400")})
    (record,) = read_records(card, "val", read_class_list(card.prompts))
    assert record.label == 1 and record.path == tmp_path / "k400/val/--abc_000012_000022.mp4"
