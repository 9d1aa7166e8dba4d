"""Prompt / template / split files: the shipped ones, the parser's errors, the label-space union."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vlcofit.text import make_prompts
from vlcofit.errors import InputError
from vlcofit.text.prompts import (
    ClassList, LabelSpace, canonical_name, read_class_list, read_class_subset, read_templates,
)
from vlcofit.utils.resources import list_resources, resource_dir

EXPECTED_CLASSES = {"kinetics400": 400, "kinetics600": 600, "kinetics700": 700, "ucf101": 101,
                    "hmdb51": 51, "ssv2": 174, "ava_all80": 80, "ava_eval60": 60}
EXPECTED_TEMPLATES = {"clip_kinetics": 28, "clip_ucf101": 48, "text4vis": 1, "simple": 1,
                      "bare": 1}
SPLIT_DATASETS = {"kinetics400": (200, 200), "hmdb51": (26, 25), "ucf101": (51, 50),
                  "ssv2": (87, 87)}
LABELS_DIR = Path(__file__).resolve().parents[2] / "shared" / "labels"


def write(tmp_path: Path, text: str, name: str = "f.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- shipped files -------------------------------------------------------------------------

@pytest.mark.parametrize("name,count", sorted(EXPECTED_CLASSES.items()))
def test_shipped_prompt_file_counts(name: str, count: int) -> None:
    classes = read_class_list(name)
    assert len(classes) == count == len(classes.ids) == len(set(classes.ids))


def test_every_listed_prompt_file_loads() -> None:
    names = list_resources("prompts")
    assert set(EXPECTED_CLASSES) <= set(names)
    for name in names:
        assert len(read_class_list(name)) > 0


@pytest.mark.parametrize("name,count", sorted(EXPECTED_TEMPLATES.items()))
def test_shipped_templates(name: str, count: int) -> None:
    templates = read_templates(name)
    assert len(templates) == count
    assert all(t.count("{}") == 1 and t.format("zz") == t.replace("{}", "zz") for t in templates)


def test_template_set() -> None:
    assert set(list_resources("templates")) == set(EXPECTED_TEMPLATES)


def test_shipped_template_contents() -> None:
    assert read_templates("text4vis") == ("a video of a person {}.",)
    assert read_templates("clip_kinetics")[:2] == ("a photo of {}.", "a photo of a person {}.")
    assert read_templates("clip_ucf101")[-1] == "a demonstration of the person practicing {}."


def test_shipped_names_cleaned_and_ordered() -> None:
    ucf = read_class_list("ucf101")
    assert ucf.names[:2] == ("Apply Eye Makeup", "Apply Lipstick")
    # official classInd order: Hammering (36) before HammerThrow (37), unlike CLIP's list
    assert ucf.names[34:38] == ("Hammering", "Hammer Throw", "Hand Stand Pushups",
                                "Handstand Walking")
    assert ucf.names[-1] == "Yo Yo"
    hmdb = read_class_list("hmdb51")
    assert hmdb.names[:2] == ("brush hair", "cartwheel") and "flic flac" in hmdb.names
    assert read_class_list("ssv2").names[0] == "Approaching something with your camera"
    assert read_class_list("kinetics400").names[-1] == "zumba"


def test_ava_ids_kept() -> None:
    eval60, all80 = read_class_list("ava_eval60"), read_class_list("ava_all80")
    assert eval60.ids[:4] == (1, 3, 4, 5) and eval60.ids[-1] == 80
    assert all80.ids == tuple(range(1, 81))
    assert eval60.names[1] == "crouch/kneel" and eval60.id_to_index[3] == 1
    assert all(all80.names[all80.id_to_index[i]] == n for i, n in zip(eval60.ids, eval60.names))
    assert eval60.index_of(80) == 59 and eval60.index_of("3") == 1
    with pytest.raises(InputError):
        eval60.index_of(2)  # crawl: an AVA id outside the evaluated 60


@pytest.mark.parametrize("dataset", sorted(SPLIT_DATASETS))
def test_base_novel_splits_partition_dataset(dataset: str) -> None:
    classes = read_class_list(dataset)
    base = read_class_subset(f"{dataset}_base", classes)
    novel = read_class_subset(f"{dataset}_novel", classes)
    assert (len(base), len(novel)) == SPLIT_DATASETS[dataset]
    assert sorted(base + novel) == list(range(len(classes)))


@pytest.mark.parametrize("split", [1, 2, 3])
def test_k600_novel_splits(split: int) -> None:
    k600, k400 = read_class_list("kinetics600"), read_class_list("kinetics400")
    indices = read_class_subset(f"k600_novel_split{split}", k600)
    assert len(indices) == len(set(indices)) == 160
    k400_names = {canonical_name(n) for n in k400.names}
    assert not [k600.names[i] for i in indices if canonical_name(k600.names[i]) in k400_names]


def test_every_listed_split_resolves() -> None:
    names = list_resources("splits")
    assert len(names) == 11
    for name in names:
        dataset = "kinetics600" if name.startswith("k600") else name.rsplit("_", 1)[0]
        assert read_class_subset(name, read_class_list(dataset))


@pytest.mark.skipif(not LABELS_DIR.is_dir(), reason="published label lists not available")
def test_make_prompts_reproduces_shipped_files(tmp_path: Path) -> None:
    assert make_prompts.main([str(LABELS_DIR), str(tmp_path)]) == 0
    generated = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.txt"))
    shipped_dir = resource_dir("prompts")
    shipped = sorted(p.relative_to(shipped_dir).as_posix() for p in shipped_dir.rglob("*.txt")
                     if p.name not in ("demo.txt", "demo_ava.txt", "demo_target.txt",
                                       "compositional_seen.txt", "compositional_unseen.txt",
                                       "compositional_all.txt",
                                       "compositional_unseen_synonyms.txt"))
    assert generated == shipped and len(generated) == 24
    for rel in generated:
        assert (tmp_path / rel).read_bytes() == (shipped_dir / rel).read_bytes(), rel


def test_make_prompts_reports_missing_source(tmp_path: Path, capsys) -> None:
    assert make_prompts.main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "clip_prompts.md" in capsys.readouterr().err


def test_split_camel_case() -> None:
    assert make_prompts.split_camel_case("YoYo") == "Yo Yo"
    assert make_prompts.split_camel_case("PlayingDaf") == "Playing Daf"
    assert make_prompts.split_camel_case("ABCTest") == "ABC Test"


# ---- parsing errors ------------------------------------------------------------------------

def test_missing_file() -> None:
    with pytest.raises(InputError, match="no such file"):
        read_class_list("/nonexistent/classes.txt")


@pytest.mark.parametrize("text", ["", "\n\n", "  \n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(InputError, match="f.txt: file is empty"):
        read_class_list(write(tmp_path, text))


def test_trailing_blank_lines_and_whitespace_ok(tmp_path: Path) -> None:
    classes = read_class_list(write(tmp_path, "  a b \nc #1\n\n \n"))
    assert classes.names == ("a b", "c #1") and classes.ids == (0, 1)


def test_blank_line_in_middle(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"f.txt:2: empty line"):
        read_class_list(write(tmp_path, "a\n\nb\n"))


def test_duplicate_names_name_both_lines(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"f.txt:3: duplicate class name 'Brush_Hair'.*line 1"):
        read_class_list(write(tmp_path, "brush hair\ncatch\nBrush_Hair\n"))


def test_duplicate_ids(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"f.txt:2: duplicate class id 4.*line 1"):
        read_class_list(write(tmp_path, "4: a\n4: b\n"))


@pytest.mark.parametrize("text,line", [("1: a\nb\n", 2), ("a\n2: b\n", 2)])
def test_mixed_forms(tmp_path: Path, text: str, line: int) -> None:
    with pytest.raises(InputError, match=rf"f.txt:{line}: mixed forms"):
        read_class_list(write(tmp_path, text))


@pytest.mark.parametrize("bad,what", [("a video", "0 '{}' fields"),
                                      ("{} and {}", "2 '{}' fields"),
                                      ("a {0}", "bare"), ("a {name}", "bare"), ("a {:>3}", "bare"),
                                      ("a {", "malformed braces")])
def test_bad_template(tmp_path: Path, bad: str, what: str) -> None:
    path = write(tmp_path, f"a photo of {{}}.\n{bad}\n")
    with pytest.raises(InputError, match=r"f.txt:2: .*" + re.escape(what)):
        read_templates(path)


def test_template_edge_cases(tmp_path: Path) -> None:
    assert read_templates(write(tmp_path, "{{x}} {}\n")) == ("{{x}} {}",)
    with pytest.raises(InputError, match="file is empty"):
        read_templates(write(tmp_path, "\n", "e.txt"))
    with pytest.raises(InputError, match=r"d.txt:2: duplicate template"):
        read_templates(write(tmp_path, "a {}\na {}\n", "d.txt"))


def test_class_subset_forms_and_errors(tmp_path: Path) -> None:
    classes = ClassList.from_names(["Jump Rope", "brush hair", "Pour, then stir"])
    plain = write(tmp_path, "brush_hair\nJumpRope\n", "plain.txt")
    assert read_class_subset(plain, classes) == [1, 0]
    csv_form = write(tmp_path, 'id,name\r\n0,"Pour, then stir"\r\n1,JumpRope\r\n', "c.csv")
    assert read_class_subset(csv_form, classes) == [2, 0]
    with pytest.raises(InputError, match=r"bad.txt:2: class 'jump rop' is not in.*'Jump Rope'"):
        read_class_subset(write(tmp_path, "brush hair\njump rop\n", "bad.txt"), classes)
    with pytest.raises(InputError, match=r"rep.txt:2: .*repeated \(line 1\)"):
        read_class_subset(write(tmp_path, "pour, then stir\nPour,  then stir\n", "rep.txt"),
                          classes)


# ---- names, lookup, union ------------------------------------------------------------------

def test_canonical_name() -> None:
    assert canonical_name("  Brush_Hair  ") == "brush hair"
    assert canonical_name("Apply\tEye   Makeup") == "apply eye makeup"
    assert canonical_name("bend/bow (at the waist)") == "bend/bow (at the waist)"
    assert canonical_name("Jump_Rope") == canonical_name("jump rope")


def test_index_of() -> None:
    classes = ClassList.from_names(["Brush Hair", "catch", "Hand Stand Pushups"])
    assert classes.index_of("brush_hair") == 0
    assert classes.index_of("HandstandPushups") == 2  # spaces ignored when unambiguous
    assert classes.index_of(1) == 1 and classes.index_of("2") == 2
    with pytest.raises(InputError, match=r"unknown class 'brush hairs'.*'Brush Hair'"):
        classes.index_of("brush hairs")
    with pytest.raises(InputError, match="unknown class 3"):
        classes.index_of(3)


def test_index_of_ambiguous_without_spaces() -> None:
    classes = ClassList.from_names(["hand stand", "handstand"])
    assert classes.index_of("Hand_Stand") == 0 and classes.index_of("handstand") == 1
    with pytest.raises(InputError, match="unknown class 'han dstand'"):
        classes.index_of("han dstand")  # without spaces it would match both


def test_label_space_union() -> None:
    a = ClassList.from_names(["Archery", "brush hair", "Fencing"], "a")
    b = ClassList.from_names(["fencing", "kiss", "Brush_Hair", "archery ", "dive"], "b")
    space = LabelSpace.union({"a": a, "b": b})
    assert space.names == ("Archery", "brush hair", "Fencing", "kiss", "dive")
    assert space.index == {"a": (0, 1, 2), "b": (2, 3, 1, 0, 4)}
    assert len(space) == 5 and space.rows("b")[3] == 0
    restored = LabelSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert restored == space
    with pytest.raises(InputError, match="not in the label space"):
        space.rows("c")


def test_label_space_shipped_datasets() -> None:
    lists = {name: read_class_list(name) for name in ("kinetics400", "kinetics600", "ucf101")}
    space = LabelSpace.union(lists)
    k400, k600 = space.index["kinetics400"], space.index["kinetics600"]
    assert k400 == tuple(range(400))
    assert len(set(k600) & set(k400)) > 350  # most K400 classes reappear in K600
    archery = lists["ucf101"].index_of("archery")
    assert space.index["ucf101"][archery] == lists["kinetics400"].index_of("archery")
