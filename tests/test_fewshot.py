"""Few-shot: deterministic K-shot splits (identical across two real processes), fine-tuning per
(K, seed) with mean ± std, the linear probe, and bad input."""
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import vlcofit.protocols.fewshot as fewshot_mod
from vlcofit.cli.main import main
from vlcofit.config.schema import DatasetCard
from vlcofit.experiment import load_experiment
from vlcofit.data.annotations import read_records
from vlcofit.data.synthetic.clips import DEMO_CLASSES
from vlcofit.errors import InputError
from vlcofit.eval.probe import PROBE_WEIGHT_DECAYS
from vlcofit.protocols.fewshot import few_shot, kshot_indices, split_text
from vlcofit.eval.probe import choose_weight_decay, fit_linear_probe
from vlcofit.text.prompts import ClassList, read_class_list

@pytest.fixture(scope="module")
def demo_data(demo_videos) -> Path:
    return demo_videos(4, 2)


def small_config(data: Path, out: Path, *extra: str):
    return load_experiment("demo", [
        f"datasets.demo.root={data}", f"output_dir={out}", "train.steps=2", "train.batch_size=4",
        "train.num_workers=0", "train.log_every=1", "train.save_every=2", "train.warmup_steps=1",
        "train.eval_every=0", "eval.batch_size=16", *extra])


def test_kshot_indices_are_deterministic_and_balanced():
    classes = ClassList.from_names(["a", "b", "c"])
    labels = [0, 1, 2] * 5
    chosen = kshot_indices(labels, classes, 2, seed=0)
    assert chosen == kshot_indices(labels, classes, 2, seed=0) == sorted(chosen)
    assert chosen == [0, 2, 4, 9, 11, 13]  # default_rng([0, 2]): pinned
    assert sorted(labels[i] for i in chosen) == [0, 0, 1, 1, 2, 2]
    assert kshot_indices(labels, classes, 2, seed=1) != chosen
    assert kshot_indices(labels, classes, 5, seed=3) == list(range(15))
    with pytest.raises(InputError, match=r"the training split: class 'c' has 1 videos, fewer than K=2"):
        kshot_indices([0, 0, 1, 1, 2], classes, 2, seed=0)
    with pytest.raises(InputError, match=r"class 'a' has 5 videos, fewer than K=6 \(2 other classes too\)"):
        kshot_indices(labels, classes, 6, seed=0)


def test_split_files_identical_across_two_processes(tmp_path, launch_two):
    root = tmp_path / "data"
    root.mkdir()  # read_records does not open videos: names are enough
    rows = ["path,label"] + [f"v{i:03d}.mp4,{DEMO_CLASSES[i % 8]}" for i in range(8 * 6)]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    script = tmp_path / "splits.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from pathlib import Path
        from vlcofit.config.schema import DatasetCard
        from vlcofit.data.annotations import read_records
        from vlcofit.utils.distributed import end_processes, process_state
        from vlcofit.protocols.fewshot import prepare_split
        from vlcofit.text.prompts import read_class_list
        state = process_state()
        out = Path({str(tmp_path / 'out')!r})
        classes = read_class_list("demo")
        card = DatasetCard(name="demo", root={str(root)!r}, train="train.csv", prompts="demo")
        records = read_records(card, "train", classes)
        for k in (1, 2, 4):
            for seed in (0, 1, 2):
                path, chosen = prepare_split(out, records, classes, k, seed)
                mine = out / f"rank{{state.process_index}}_k{{k}}_seed{{seed}}.csv"
                mine.write_text(",".join(map(str, chosen)) + "\\n" + path.read_text())
        (out / f"world{{state.process_index}}").write_text(str(state.num_processes))
        end_processes()
        os._exit(0)  # see launch_two in conftest.py
    """))
    launch_two([script], env={"PYTHONHASHSEED": "random"})
    out = tmp_path / "out"
    assert (out / "world0").read_text() == (out / "world1").read_text() == "2"
    card = DatasetCard(name="demo", root=str(root), train="train.csv", prompts="demo")
    card_records = read_records(card, "train", read_class_list("demo"))
    for k in (1, 2, 4):
        for seed in (0, 1, 2):
            a = (out / f"rank0_k{k}_seed{seed}.csv").read_text()
            b = (out / f"rank1_k{k}_seed{seed}.csv").read_text()
            written = (out / "splits" / f"k{k}_seed{seed}.csv").read_text()
            assert a == b and a.split("\n", 1)[1] == written
            chosen = kshot_indices([r.label for r in card_records], read_class_list("demo"), k, seed)
            assert written == split_text([card_records[i] for i in chosen], read_class_list("demo"))
            assert written.count("\n") == 1 + 8 * k


def test_few_shot_finetune_and_probe(demo_data, tmp_path, monkeypatch):
    cfg = small_config(demo_data, tmp_path / "unused")
    out = tmp_path / "fs"
    result = few_shot(cfg, [2], [0, 1], out, probe=True)
    classes = read_class_list("demo")
    records = read_records(cfg.datasets["demo"], "train", classes)
    for run in result["runs"]:
        chosen = kshot_indices([r.label for r in records], classes, 2, run["seed"])
        split = Path(run["split"])
        assert split == out / "splits" / f"k2_seed{run['seed']}.csv"
        assert split.read_text() == split_text([records[i] for i in chosen], classes)
        saved = load_experiment(Path(run["run_dir"]) / "config.yaml")
        assert saved.train.datasets == ("demo_kshot",) and saved.eval.datasets == ("demo",)
        assert Path(saved.datasets["demo_kshot"].root) / saved.datasets["demo_kshot"].train == split
        assert saved.train.seed == cfg.train.seed and saved.model == cfg.model  # same start
        assert (Path(run["run_dir"]) / "checkpoints" / "latest").is_file()
        assert run["metrics"]["demo/count"] == 16 and 0 <= run["finetune"] <= 100
        assert run["probe_detail"]["train_videos"] == 16 and run["probe_detail"]["count"] == 16
        assert run["probe_detail"]["weight_decay"] in PROBE_WEIGHT_DECAYS
    values = [r["finetune"] for r in result["runs"]]
    assert result["summary"]["finetune"]["2"] == pytest.approx(
        {"mean": np.mean(values), "std": np.std(values), "n": 2})
    assert json.loads((out / "fewshot.json").read_text())["summary"] == result["summary"]
    assert (out / "fewshot.png").stat().st_size > 1000

    # a second call reuses the finished runs (no training) and gives the same summary
    monkeypatch.setattr(fewshot_mod, "train", lambda *a, **k: pytest.fail("trained again"))
    assert few_shot(cfg, [2], [0, 1], out, probe=True)["summary"] == result["summary"]


def test_cli_probe_only_and_bad_input(demo_data, tmp_path, capsys):
    base = ["few-shot", "demo", "--set", f"datasets.demo.root={demo_data}", "--set",
            "train.num_workers=0", "--set", "eval.batch_size=16", "--out", str(tmp_path / "p")]
    assert main(base + ["--shots", "1,2", "--seeds", "2", "--probe-only"]) == 0
    table = capsys.readouterr().out
    assert "few-shot: demo (demo/top1, 2 seeds, ± = sample std (ddof=1))" in table and "probe" in table and "±" in table
    assert not list((tmp_path / "p").glob("k*_seed*"))  # no fine-tuning runs
    assert main(base + ["--shots", "5"]) == 2
    err = capsys.readouterr().err
    assert "class 'moving left' has 4 videos, fewer than K=5 (7 other classes too)" in err

    given = tmp_path / "given"
    given.mkdir()
    (given / "k1_seed0.csv").write_text(f"path,label\n{demo_data}/train/000000.mp4,moving left\n"
                                        "train/nope.mp4,moving right\n")
    assert main(base + ["--shots", "1", "--seeds", "1", "--splits", str(given), "--splits-only"]) == 2
    assert f"{given / 'k1_seed0.csv'}:3: video 'train/nope.mp4' is not in the dataset's training" \
        in capsys.readouterr().err


def test_linear_probe_fits_separable_features():
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    y = torch.arange(4).repeat(4)
    x = torch.nn.functional.normalize(centres[y] + 0.05 * torch.randn(16, 16), dim=-1)
    w, b = fit_linear_probe(x, y, 4, weight_decay=1e-3)
    assert ((x @ w.t() + b).argmax(1) == y).all()
    assert choose_weight_decay(x, y, 4, seed=0) in PROBE_WEIGHT_DECAYS
