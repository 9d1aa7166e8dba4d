"""AVA readers and writers: label maps, box CSVs, exclusions, proposals."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from vlcofit.data import ava_csv
from vlcofit.data.ava_formats import (
    AvaTable, group_boxes, read_detections, read_exclusions, read_groundtruth, read_labelmap,
    read_proposals, validate_proposal_keys, write_detections, write_groundtruth,
    write_labelmap_pbtxt,
)
from vlcofit.errors import InputError

PBTXT = """item {
  name: "bend/bow (at the waist)"
  id: 1
}
item {
  name: "crouch/kneel"
  id: 3
}
"""


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_labelmap_forms_agree(tmp_path) -> None:
    pb = read_labelmap(_write(tmp_path, "a.pbtxt", PBTXT))
    txt = read_labelmap(_write(tmp_path, "a.txt",
                               "1: bend/bow (at the waist)\n\n3: crouch/kneel\n"))
    variant = read_labelmap(_write(tmp_path, "b.pbtxt",
                                   'item { display_name: "bend/bow (at the waist)" label_id: 1 }\n'
                                   "item {\n  label_id: 3\n  display_name: 'crouch/kneel'\n}\n"))
    assert pb == txt == variant == {1: "bend/bow (at the waist)", 3: "crouch/kneel"}
    write_labelmap_pbtxt(tmp_path / "c.pbtxt", pb)
    assert read_labelmap(tmp_path / "c.pbtxt") == pb


@pytest.mark.parametrize("text, line", [("1: a\n2 b\n", 2), ("1: a\nx: b\n", 2),
                                        ("1: a\n1: b\n", 2), ('item {\n  name: "a"\n}\n', 1)])
def test_labelmap_errors(tmp_path, text, line) -> None:
    path = _write(tmp_path, "bad.pbtxt" if "item" in text else "bad.txt", text)
    with pytest.raises(InputError, match=f"{path.name}:{line}"):
        read_labelmap(path)


def test_groundtruth_rows_and_keys(tmp_path) -> None:
    path = _write(tmp_path, "gt.csv",
                  "vidA,0902,0.1,0.2,0.5,0.6,12,0\n"
                  "vidA,902,0.1,0.2,0.5,0.6,80,0\n"      # same keyframe as 0902
                  "vidA,0903\n"                         # keyframe without actions
                  "\n"
                  "vidB,902.0,0.0,0.0,1.0005,1,3,1\r\n"  # 1.0005 is within tolerance: clipped
                  "vidA,0904,0.3,0.3,0.4,0.4,3\n")      # 7 columns: no person id
    gt = read_groundtruth(path)
    assert gt.keys == [("vidA", 902), ("vidA", 903), ("vidB", 902), ("vidA", 904)]
    assert gt.key_index.tolist() == [0, 0, 2, 3]
    assert gt.labels.tolist() == [12, 80, 3, 3]
    assert gt.person_ids.tolist() == [0, 0, 1, -1]
    assert gt.lines.tolist() == [1, 2, 5, 6]
    assert gt.boxes[2].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert gt.boxes.dtype == np.float64 and gt.boxes[0, 2] == 0.5

    only = read_groundtruth(path, {3: "x", 12: "y"})  # 80 is not in the label map: dropped
    assert only.labels.tolist() == [12, 3, 3] and only.keys == gt.keys
    with pytest.raises(InputError, match=r"gt\.csv:2: action id 80 is not in the label map"):
        read_groundtruth(path, {3: "x", 12: "y"}, strict=True)


@pytest.mark.parametrize("row, what", [
    ("v,0902,0.1,0.2,0.3,0.4,1", "columns"),
    ("v,0902,0.1,0.2,0.3,0.4,1,0.5,9", "columns"),
    ("v,0902,0.1,abc,0.3,0.4,1,0.5", "not a number"),
    ("v,0902,0.1,0.2,0.3,0.4,1,", "not a number"),
    ("v,09x2,0.1,0.2,0.3,0.4,1,0.5", "not a number"),
    ("v,0902,0.1,0.2,1.3,0.4,1,0.5", "x2=1.3 is outside"),
    ("v,0902,-0.1,0.2,0.3,0.4,1,0.5", "x1=-0.1 is outside"),
    ("v,0902,0.5,0.2,0.3,0.4,1,0.5", "x2 < x1"),
    ("v,0902,0.1,0.5,0.3,0.4,1,0.5", "y2 < y1"),
    ("v,0902,0.1,0.2,0.3,0.4,1.5,0.5", "action id 1.5 is not an integer"),
    ("v,0902,0.1,0.2,0.3,0.4,1,nan", "score is not a finite"),
    ("v,inf,0.1,0.2,0.3,0.4,1,0.5", "bad timestamp"),
])
def test_bad_detection_rows_name_file_and_line(tmp_path, row, what) -> None:
    good = "v,0902,0.1,0.2,0.3,0.4,1,0.5\n"
    path = _write(tmp_path, "det.csv", good * 3 + row + "\n" + good)
    with pytest.raises(InputError) as err:
        read_detections(path)
    assert "det.csv:4" in str(err.value) and what in str(err.value)


def test_bad_rows_across_parse_blocks(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ava_csv, "_BLOCK", 64)  # many small blocks: line numbers must carry over
    rows = [f"v,{902 + i},0.1,0.2,0.3,0.4,{i % 5 + 1},0.{i:03d}\n" for i in range(200)]
    path = _write(tmp_path, "det.csv", "".join(rows))
    det = read_detections(path)
    assert len(det) == 200 and det.lines.tolist() == list(range(1, 201))
    assert det.scores[137] == 0.137 and det.keys[137] == ("v", 1039)
    rows[150] = "v,1052,0.1,0.2,0.3,0.4,1,oops\n"
    path.write_text("".join(rows))
    with pytest.raises(InputError, match=r"det\.csv:151: 'oops' is not a number"):
        read_detections(path)
    with pytest.raises(InputError, match=r"gt\.csv:3: expected 2 or 7 or 8"):
        read_groundtruth(_write(tmp_path, "gt.csv", "v,1\nv,2\nv,3,4\n"))


def test_numbers_equal_python_float(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random(3000) ** 3
    texts = ([repr(float(v)) for v in x] + ["%.3f" % v for v in x] + ["%.15f" % v for v in x]
             + ["%.6g" % v for v in x] + ["1e-05", "0", "1", "1.", ".5", " 0.25", "+0.5", "0.1e1",
                                         "0.30000000000000004", "0.1234567890123456789"])
    rows = "".join(f"v,0902,0.1,0.2,0.3,0.4,1,{t}\n" for t in texts)
    det = read_detections(_write(tmp_path, "det.csv", rows))
    assert det.scores.tolist() == [float(t) for t in texts]


def test_quoted_csv(tmp_path) -> None:
    path = _write(tmp_path, "det.csv", '"v",0902,0.1,0.2,0.3,0.4,"7",0.5\n')
    det = read_detections(path)
    assert det.keys == [("v", 902)] and det.labels.tolist() == [7]


def test_exclusions(tmp_path) -> None:
    path = _write(tmp_path, "ex.csv", "vidA,0902\nvidB,1798\nvidA,902\n")
    assert read_exclusions(path) == {("vidA", 902), ("vidB", 1798)}
    with pytest.raises(InputError, match=r"ex\.csv:1"):
        read_exclusions(_write(tmp_path, "ex.csv", "vidA,0902,0.1\n"))


def test_writers_round_trip(tmp_path) -> None:
    scores = np.array([0.1, 1 / 3, 1e-7, 0.123456789012345678])
    det = AvaTable.from_arrays([("vidA", 902), ("vidB", 1798.5)], [0, 0, 1, 1],
                               [[0.1, 0.2, 0.3, 0.4]] * 4, [1, 2, 3, 4], scores)
    write_detections(tmp_path / "det.csv", det)
    lines = (tmp_path / "det.csv").read_text().splitlines()
    assert lines[0] == "vidA,0902,0.100,0.200,0.300,0.400,1,0.1"
    assert lines[2].startswith("vidB,1798.5,")
    back = read_detections(tmp_path / "det.csv")
    assert back.keys == det.keys and back.scores.tolist() == scores.tolist()
    assert np.array_equal(back.boxes, det.boxes) and back.labels.tolist() == [1, 2, 3, 4]

    gt = AvaTable.from_arrays([("vidA", 902), ("vidA", 903)], [0, 0], [[0.1, 0.2, 0.3, 0.4]] * 2,
                              [5, 6], person_ids=[3, 3])
    write_groundtruth(tmp_path / "gt.csv", gt)
    assert (tmp_path / "gt.csv").read_text().splitlines()[-1] == "vidA,0903"
    back = read_groundtruth(tmp_path / "gt.csv")
    assert back.keys == gt.keys and back.person_ids.tolist() == [3, 3]


def test_group_boxes_multi_hot(tmp_path) -> None:
    path = _write(tmp_path, "gt.csv",
                  "v,0902,0.1,0.1,0.5,0.5,12,0\n"
                  "v,0902,0.6,0.1,0.9,0.5,3,1\n"
                  "v,0902,0.1,0.1,0.5,0.5,14,0\n"
                  "v,0903\n"
                  "v,0902,0.1,0.1,0.5,0.5,80,0\n")
    groups = group_boxes(read_groundtruth(path), class_ids=[3, 12, 14])
    assert list(groups) == [("v", 902), ("v", 903)]
    g = groups[("v", 902)]
    assert g.person_ids.tolist() == [0, 1]
    assert g.labels.tolist() == [[0, 1, 1], [1, 0, 0]]  # 80 has no column
    assert g.boxes.dtype == np.float32 and np.allclose(g.boxes[1], [0.6, 0.1, 0.9, 0.5])
    assert groups[("v", 903)].boxes.shape == (0, 4) and groups[("v", 903)].labels.shape == (0, 3)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_proposals_pickle_is_loaded_safely(tmp_path) -> None:
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"v,0902": _Evil()}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(InputError, match="refusing to load"):
            read_proposals(evil)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()

    good = tmp_path / "props.pkl"
    boxes = np.array([[0.1, 0.2, 0.3, 0.4, 0.9], [0.0, 0.0, 1.0, 1.0, 0.5]], np.float32)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        good.write_bytes(pickle.dumps({"vidA,0902": boxes, "vidA,903": boxes[:, :4].copy()},
                                      protocol=protocol))
        props = read_proposals(good)
        assert list(props) == [("vidA", 902), ("vidA", 903)]
        assert np.array_equal(props[("vidA", 902)], boxes)
        assert props[("vidA", 903)][:, 4].tolist() == [1.0, 1.0]
    good.write_bytes(pickle.dumps({"vidA,0902": boxes[:, :3]}))
    with pytest.raises(InputError, match="vidA,0902"):
        read_proposals(good)


def test_proposals_csv_and_key_check(tmp_path) -> None:
    path = _write(tmp_path, "props.csv", "vidA,0902,0.1,0.2,0.3,0.4,0.9\n"
                                         "vidB,0902,0.1,0.2,0.3,0.4,0.8\n"
                                         "vidA,902,0.5,0.5,0.6,0.6,0.7\n")
    props = read_proposals(path)
    assert list(props) == [("vidA", 902), ("vidB", 902)]
    assert props[("vidA", 902)][:, 4].tolist() == pytest.approx([0.9, 0.7])
    validate_proposal_keys(props, [("vidA", 902), ("vidB", 902), ("vidC", 902)], path)
    with pytest.raises(InputError, match=r"props\.csv: 1 proposal keyframes .*vidB,0902"):
        validate_proposal_keys(props, [("vidA", 902)], path)
    with pytest.raises(InputError, match=r"props\.csv:1: box coordinates"):
        read_proposals(_write(tmp_path, "props.csv", "vidA,0902,0.1,0.2,1.3,0.4,0.9\n"))
