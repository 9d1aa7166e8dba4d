"""Zero-shot protocols: deterministic half-class draws, subset scoring, template modes, the CLI."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vlcofit.cli.main import main
from vlcofit.config.schema import ModelConfig
from vlcofit.errors import InputError
from vlcofit.text.prompts import read_templates
from vlcofit.protocols.zeroshot import (
    K600_NOVEL, draw_class_subsets, parse_protocols, run_zero_shot, subset_metrics,
)

TINY = ModelConfig(name="tiny", temporal="mean")


@pytest.fixture(scope="module")
def demo_data(demo_videos) -> Path:
    return demo_videos(1, 2)


def test_half_class_draws_are_deterministic_for_a_seed():
    a, b = draw_class_subsets(101, 10, seed=0), draw_class_subsets(101, 10, seed=0)
    assert a == b
    assert len(a) == 10 and all(len(s) == 50 and s == sorted(set(s)) for s in a)
    assert len({tuple(s) for s in a}) == 10  # the draws differ from each other
    assert a[0][:8] == [0, 1, 2, 4, 7, 10, 11, 14]  # numpy default_rng(0): pinned
    assert draw_class_subsets(101, 10, seed=1) != a
    with pytest.raises(InputError, match="cannot draw"):
        draw_class_subsets(1, 10, seed=0, fraction=0.4)


def test_parse_protocols(tmp_path):
    protos = parse_protocols(["full,half", "k600-novel"], "kinetics600")
    assert [p.name for p in protos] == ["full", "half", *K600_NOVEL]
    assert {p.group for p in protos[2:]} == {"k600_novel"}
    b2n = parse_protocols(["base2novel"], "ucf101")
    assert [p.path for p in b2n] == ["ucf101_base", "ucf101_novel"]
    with pytest.raises(InputError, match="no shipped split 'demo_base'"):
        parse_protocols(["base2novel"], "demo")
    mine = tmp_path / "my_split.txt"
    mine.write_text("growing\n")
    assert parse_protocols([f"split:{mine}"], "demo")[0].path == str(mine)
    with pytest.raises(InputError, match="--protocol 'split:/x/none.txt': not full, half, "
                                         "k600-novel or base2novel, nor a split file"):
        parse_protocols(["split:/x/none.txt"], "demo")


class _Scorer(nn.Module):
    """view_scores needs only ``logit_scale`` (for the device), ``score``, ``probabilities``."""
    def __init__(self):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.zeros(()))

    def score(self, emb, text):
        return 10 * emb @ text.t()

    def probabilities(self, logits):
        return logits.softmax(dim=-1)


def test_subset_scoring_ranks_among_the_subset_only():
    text = torch.eye(3)
    # video 0 (class 0) looks most like class 2, then class 0; video 1 (class 1) like class 1
    emb = torch.tensor([[[0.6, 0.0, 0.8]], [[0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0]]])
    labels, valid = torch.tensor([0, 1, 2]), torch.ones(3, dtype=torch.bool)
    full = subset_metrics(_Scorer(), emb, labels, valid, text, [0, 1, 2])
    sub = subset_metrics(_Scorer(), emb, labels, valid, text, [0, 1])
    assert full["top1"] == pytest.approx(200 / 3) and full["count"] == 3
    assert sub["top1"] == 100.0 and sub["count"] == 2  # class-2 video left out, class 2 not ranked
    valid[1] = False
    assert subset_metrics(_Scorer(), emb, labels, valid, text, [0, 1])["count"] == 1


def test_protocols_end_to_end(demo_data, tmp_path):
    split = tmp_path / "motions.txt"
    split.write_text("moving left\nmoving right\ngrowing\n")
    out = tmp_path / "zs" / "result.json"
    result = run_zero_shot(TINY, str(demo_data / "val.csv"), "demo", "clip_kinetics",
                           num_workers=0, batch_size=16, out=out,
                           protocols=["full,half", str(split)], template_modes=("ensemble", "single"),
                           half_draws=3, half_seed=5, cache=tmp_path / "cache")
    saved = json.loads(out.read_text())
    assert saved["metrics"] == result.metrics and len(saved["templates"]) == 28
    rows = {(r["protocol"], r["templates"]): r for r in saved["rows"]}
    assert set(rows) == {(p, m) for p in ("full", "half", "motions") for m in ("ensemble", "single")}
    half = rows["half", "ensemble"]
    assert half["subsets"] == draw_class_subsets(8, 3, seed=5) and half["classes"] == 4
    assert half["videos"] == 8  # 4 classes x 2 validation videos per draw
    assert rows["motions", "single"]["subset"] == [0, 1, 6] and rows["motions", "single"]["videos"] == 6
    m = result.metrics
    assert m["val/count"] == 16 and m["val/single/count"] == 16
    assert m["val/half/top1_std"] >= 0 and "val/motions/single/top1" in m
    assert (tmp_path / "zs" / "val_per_class.csv").is_file()

    # "single" = the first template alone: the same as an ensemble over a one-line template file
    first = tmp_path / "first.txt"
    first.write_text(read_templates("clip_kinetics")[0] + "\n")
    alone = run_zero_shot(TINY, str(demo_data / "val.csv"), "demo", str(first), num_workers=0,
                          batch_size=16, protocols=["full"], cache=tmp_path / "cache")
    assert alone.info["feature_cache"]["hit"]
    for key in ("top1", "top5", "mean_class_acc"):
        assert alone.metrics[f"val/{key}"] == pytest.approx(m[f"val/single/{key}"])


def test_cli_table_json_and_errors(demo_data, tmp_path, capsys):
    args = ["zero-shot", "--model", "tiny", "--data", str(demo_data / "val.csv"), "--prompts", "demo",
            "--feature-cache", str(tmp_path / "cache"), "--workers", "0"]
    assert main(args + ["--protocol", "full,half", "--half-draws", "2"]) == 0
    table = capsys.readouterr().out
    assert "half (2 draws)" in table and "±" in table and "top1 (%)" in table
    assert main(args + ["--json", "--template-mode", "single"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"][0]["templates"] == "single" and printed["feature_cache"]["hit"]

    bad = tmp_path / "bad_split.txt"
    bad.write_text("moving left\nflying\n")
    assert main(args + ["--protocol", str(bad)]) == 2
    assert f"{bad}:2: class 'flying' is not in" in capsys.readouterr().err
    assert main(args + ["--template-index", "3"]) == 2
    assert "--template-index 3" in capsys.readouterr().err
