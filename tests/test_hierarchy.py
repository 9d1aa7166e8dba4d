"""Coarse <-> fine hierarchies: the map's reader and its errors, collapse, training at either
granularity, and a fine model's coarse accuracy."""
import json
from pathlib import Path

import pytest
import torch

from vlcofit.config.schema import DatasetCard
from vlcofit.experiment import load_experiment
from vlcofit.errors import InputError
from vlcofit.experiment import build_labels
from vlcofit.data.annotations import granular_records
from vlcofit.text.hierarchy import read_hierarchy
from vlcofit.train.loop import train


def _card(tmp_path: Path, mapping: str, names: str = "a, b\nc\nd\n", **extra) -> DatasetCard:
    (tmp_path / "fine.txt").write_text(names)
    (tmp_path / "map.tsv").write_text(mapping)
    return DatasetCard(name="x", prompts=str(tmp_path / "fine.txt"),
                       coarse=str(tmp_path / "map.tsv"), **extra)


def test_shipped_demo_map():
    h = read_hierarchy(DatasetCard(name="demo", prompts="demo", coarse="demo"))
    assert h.coarse.names == ("moving sideways", "moving vertically", "rotating", "changing size")
    assert h.fine_to_coarse == (0, 0, 1, 1, 2, 2, 3, 3)


def test_csv_form_with_header_and_commas_in_fine_names(tmp_path):
    h = read_hierarchy(_card(tmp_path, "fine,coarse\na, b,G1\nc,G2\nd,G1\n"))
    assert h.coarse.names == ("G1", "G2") and h.fine_to_coarse == (0, 1, 0)


def test_coarse_prompts_fix_the_group_order(tmp_path):
    (tmp_path / "groups.txt").write_text("G2\nG1\n")
    h = read_hierarchy(_card(tmp_path, "a, b\tG1\nc\tG2\nd\tG1\n",
                             coarse_prompts=str(tmp_path / "groups.txt")))
    assert h.coarse.names == ("G2", "G1") and h.fine_to_coarse == (1, 0, 1)


@pytest.mark.parametrize("mapping, message", [
    ("a, b\tG1\nflying\tG2\n", r"map.tsv:2: 'flying' is not a class of .*fine.txt"),
    ("a, b\tG1\nc\tG2\na, b\tG2\nd\tG1\n", r"map.tsv:3: 'a, b' is already mapped to 'G1'"),
    ("a, b\tG1\nc\tG2\n", r"map.tsv: maps no coarse group for 1 fine class\(es\) .* 'd'"),
    ("a, b\tG1\njust a name\n", r"map.tsv:2: expected 'fine name<TAB>coarse name'"),
])
def test_bad_maps_name_file_and_line(tmp_path, mapping, message):
    with pytest.raises(InputError, match=message):
        read_hierarchy(_card(tmp_path, mapping))


def test_unknown_coarse_group(tmp_path):
    (tmp_path / "groups.txt").write_text("G1\n")
    card = _card(tmp_path, "a, b\tG1\nc\tG9\nd\tG1\n", coarse_prompts=str(tmp_path / "groups.txt"))
    with pytest.raises(InputError, match=r"map.tsv:2: 'G9' is not a coarse group"):
        read_hierarchy(card)


def test_collapse_takes_each_groups_best_class():
    h = read_hierarchy(DatasetCard(name="demo", prompts="demo", coarse="demo"))
    # the top fine class (0.28, group 0) beats two middling classes of group 3 (0.25 + 0.24)
    scores = torch.tensor([[0.28, 0.0, 0.1, 0.0, 0.03, 0.1, 0.25, 0.24]])
    torch.testing.assert_close(h.collapse(scores), torch.tensor([[0.28, 0.1, 0.1, 0.25]]))
    assert int(h.collapse(scores).argmax()) == h.fine_to_coarse[int(scores.argmax())]
    assert h.coarse_labels(torch.tensor([7, 2, 0])).tolist() == [3, 1, 0]


def test_granularity_needs_a_map():
    with pytest.raises(InputError, match=r"--set datasets.demo.granularity=coarse: .*granularity "
                                         r"is coarse, but the card gives no `coarse` map"):
        load_experiment("demo", ["datasets.demo.granularity=coarse"])


@pytest.fixture(scope="module")
def data(demo_videos):
    return demo_videos(1, 1)


def _cfg(data, out, *extra):
    return load_experiment("demo", [f"datasets.demo.root={data}", f"output_dir={out}",
                                    "datasets.demo.coarse=demo", "train.steps=2",
                                    "train.batch_size=4", "train.num_workers=0",
                                    "train.warmup_steps=0", "train.eval_every=0",
                                    "eval.batch_size=8", *extra])


def test_coarse_granularity_trains_the_same_videos_on_the_groups(data, tmp_path):
    cfg = _cfg(data, tmp_path / "coarse", "datasets.demo.granularity=coarse")
    labels = build_labels(cfg)
    assert labels.classes["demo"].names[0] == "moving sideways" and len(labels.space) == 4
    fine = granular_records(_cfg(data, tmp_path / "f").datasets["demo"], "train",
                            build_labels(_cfg(data, tmp_path / "f")).classes["demo"])
    coarse = granular_records(cfg.datasets["demo"], "train", labels.classes["demo"])
    assert [r.path for r in coarse] == [r.path for r in fine]
    assert [r.label for r in coarse] == [(0, 0, 1, 1, 2, 2, 3, 3)[r.label] for r in fine]
    final = train(cfg)
    assert final["demo/count"] == 8 and "demo/coarse_top1" not in final


def test_a_fine_model_also_reports_coarse_accuracy(data, tmp_path):
    final = train(_cfg(data, tmp_path / "fine"))
    assert 0 <= final["demo/coarse_top1"] <= 100 and "demo/coarse_top5" in final
    per_group = (tmp_path / "fine" / "eval" / "demo_coarse_per_class.csv").read_text()
    assert per_group.count("\n") == 5 and "changing size" in per_group
    rows = json.loads((tmp_path / "fine" / "labels.json").read_text())
    assert len(rows["label_space"]["names"]) == 8


def test_a_map_only_for_single_label_datasets():
    with pytest.raises(InputError, match=r"datasets.demo_ava.coarse maps classes of single-label"):
        load_experiment("demo_ava", ["datasets.demo_ava.coarse=demo"])


def test_a_bad_map_fails_before_training(data, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("moving left\tsideways\nflying\tup\n")
    with pytest.raises(InputError, match=r"bad.tsv:2: 'flying' is not a class"):
        build_labels(_cfg(data, tmp_path / "r", f"datasets.demo.coarse={bad}"))


def test_zero_shot_and_few_shot_of_a_coarse_card(data, tmp_path):
    from vlcofit.protocols.fewshot import few_shot
    from vlcofit.protocols.zeroshot import resolve_card
    cfg = _cfg(data, tmp_path / "c", "datasets.demo.granularity=coarse")
    with pytest.raises(InputError, match="granularity: coarse; K-shot splits are drawn per fine"):
        few_shot(cfg, [1], [0], tmp_path / "fs")
    path = tmp_path / "card.yaml"
    path.write_text(f"name: demo\nprompts: demo\nroot: {data}\ntrain: train.csv\nval: val.csv\n"
                    "coarse: demo\ngranularity: coarse\n")
    card = resolve_card(str(path), "demo", None, 8)
    assert card.granularity == "fine" and card.coarse is None  # labels read against --prompts
