"""`vlcofit sweep`: grid parsing, every setting x seed, transfer stages, resume, compare."""
import json
from pathlib import Path

import pytest

import vlcofit.cli.transfer as cli_transfer
import vlcofit.protocols.sweep as sweep_mod
from vlcofit.cli.main import main
from vlcofit.errors import InputError
from vlcofit.protocols.sweep import best_versus, folder_name, grid_settings, split_values, sweep


def test_grid_values_and_settings():
    assert split_values("0,1e-3,[image:1,text:1],{a: 1, b: 2}") == [
        "0", "1e-3", "[image:1,text:1]", "{a: 1, b: 2}"]
    settings = grid_settings(["train.l2sp=0,1e-2", "train.freeze=[],[image:1]"])
    assert list(settings) == ["l2sp=0 freeze=[]", "l2sp=0 freeze=[image:1]",
                              "l2sp=1e-2 freeze=[]", "l2sp=1e-2 freeze=[image:1]"]
    assert settings["l2sp=1e-2 freeze=[image:1]"] == ("train.l2sp=1e-2", "train.freeze=[image:1]")
    a, b = folder_name("freeze=[image:1]", ("x",)), folder_name("freeze=[image:1]", ("y",))
    assert a != b and "/" not in a and a.startswith("freeze=_image")
    for bad in ("train.l2sp", "=1,2", "train.l2sp=1,,2"):
        with pytest.raises(InputError, match="--grid"):
            grid_settings([bad])


@pytest.fixture(scope="module")
def demo_data(demo_videos) -> Path:
    return demo_videos(2, 1)


def _overrides(data: Path) -> list[str]:
    return [f"datasets.demo.root={data}", "model.name=tiny", "train.steps=2", "train.batch_size=4",
            "train.num_workers=0", "train.log_every=1", "train.save_every=2",
            "train.warmup_steps=1", "eval.batch_size=8", "eval.max_batches=1"]


def test_sweep_runs_every_setting_then_resumes_without_training(demo_data, tmp_path, monkeypatch):
    extra = [*_overrides(demo_data), "sweep.probe=[demo]",
             "sweep.finetune=[train.steps=1, train.lr=1e-4]", "sweep.zero_shot=['demo:val.csv:demo']"]
    out = tmp_path / "sweep"
    report = sweep("demo", extra, out, grid=["train.lr=1e-3,1e-2"], seeds=[0, 1])
    assert list(report["settings"]) == ["lr=1e-3", "lr=1e-2"]
    for setting, meta in report["settings"].items():
        for seed in (0, 1):
            run = out / meta["folder"] / f"seed{seed}"
            saved = json.loads((run / "run.json").read_text())
            assert saved["seed"] == seed and saved["end_time"]
            assert (run / "finetune" / "start.json").is_file()  # initialised from the run
            start = json.loads((run / "finetune" / "start.json").read_text())
            assert Path(start["checkpoint"]).parent.parent == run.resolve()
        runs = report["runs"][setting]
        assert all({"demo/top1", "probe:demo/top1", "finetune:demo/top1", "zero_shot:demo:val/top1"}
                   <= set(r) for r in runs)
        # the zero-shot stage scores the run's own val split with its own names: its evaluation
        assert all(r["zero_shot:demo:val/top1"] == pytest.approx(r["demo/top1"]) for r in runs)
        summary = report["summary"][setting]["probe:demo/top1"]
        values = [r["probe:demo/top1"] for r in runs]
        assert summary["mean"] == pytest.approx(sum(values) / 2)
    assert report["shown"] == ["demo/top1", "probe:demo/top1", "zero_shot:demo:val/top1",
                               "finetune:demo/top1"]
    table = (out / "sweep.md").read_text()
    assert "| lr=1e-2 |" in table and "sample std" in table
    assert (out / "sweep.png").stat().st_size > 0

    def no_training(*args, **kwargs):
        raise AssertionError("a finished setting was trained again")
    monkeypatch.setattr(sweep_mod, "train", no_training)
    again = sweep("demo", extra, out, grid=["train.lr=1e-3,1e-2"], seeds=[0, 1])
    assert again["runs"] == report["runs"]


def test_sweep_arms_from_the_config_and_bad_input(demo_data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sweep_mod, "train",
                        lambda cfg, resume=None: calls.append(cfg) or {"demo/top1": 50.0})
    arms = "sweep.arms={plain: [], decayed: ['train.layer_decay=0.5']}"
    report = sweep("demo", [*_overrides(demo_data), arms, "sweep.seeds=[3]"], tmp_path / "a")
    assert [c.train.layer_decay for c in calls] == [1.0, 0.5]
    assert {c.train.seed for c in calls} == {3}
    assert report["summary"]["decayed"]["demo/top1"] == {"mean": 50.0, "std": 0.0}
    with pytest.raises(InputError, match="nothing to sweep"):
        sweep("demo", _overrides(demo_data), tmp_path / "b")
    with pytest.raises(InputError, match="sweep.zero_shot: 'demo:val.csv' is not DATASET:FILE"):
        sweep("demo", [*_overrides(demo_data), arms, "sweep.zero_shot=['demo:val.csv']"],
              tmp_path / "d")
    with pytest.raises(InputError, match="sweep.probe: 'nope' is not in datasets"):
        sweep("demo", [*_overrides(demo_data), arms, "sweep.probe=[nope]"], tmp_path / "c")


def test_compare_is_the_sweep_over_schedules(monkeypatch, tmp_path):
    seen = {}

    def fake(config, overrides, out, grid=None, seeds=None, arms=None):
        seen.update(config=config, seeds=seeds, arms=arms)
        return {"shown": [], "seeds": seeds, "summary": {}}
    monkeypatch.setattr(cli_transfer, "sweep", fake)  # where the command calls it
    assert main(["compare", "cofinetune_demo", "--seeds", "0,2", "--out", str(tmp_path)]) == 0
    assert seen["arms"] == {"cofinetune": ("train.schedule=cofinetune",),
                            "sequential": ("train.schedule=sequential",)}
    assert seen["seeds"] == [0, 2]


def test_advise_command_and_fit_measures_at_step_zero(demo_data, tmp_path, capsys):
    """`vlcofit advise` prints the measures and a train command whose --set fragments load;
    `train.fit_measures` logs the same measures at step 0 of a run."""
    from vlcofit.experiment import load_experiment
    from vlcofit.run.records import read_metrics
    sets = [x for o in _overrides(demo_data) for x in ("--set", o)]
    out = tmp_path / "advice"
    assert main(["advise", "demo", *sets, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    advice = json.loads((out / "advice.json").read_text())
    assert "demo/fit/knn10_top1" in printed and "vlcofit train demo" in printed
    load_experiment("demo", [*_overrides(demo_data), *advice["set"]])  # valid fragments
    run = tmp_path / "run"
    assert main(["train", "demo", *sets, "--set", "train.fit_measures=true",
                 "--set", f"output_dir={run}"]) == 0
    first = read_metrics(run / "metrics.jsonl")[0]
    assert first["step"] == 0
    assert first["demo/fit/knn10_top1"] == advice["measures"]["demo/fit/knn10_top1"]
    assert first["demo/fit/logme"] == pytest.approx(advice["measures"]["demo/fit/logme"])


def test_best_versus_overlapping_intervals():
    m = "t/top1"
    report = {"summary": {"a": {m: {"mean": 50.0, "std": 2.0}}, "b": {m: {"mean": 45.0, "std": 3.0}},
                          "c": {m: {"mean": 40.0, "std": 1.0}}}}
    assert best_versus(report, "b", m)["within_one_std"]  # 48 >= 48
    check = best_versus(report, "c", m)
    assert check["best"] == "a" and not check["within_one_std"]
    assert best_versus(report, "a", m)["within_one_std"]


def test_curve_few_shot_and_a_linear_head_without_zero_shot(demo_data, tmp_path):
    """A learning curve from each run's evaluations with the step the seed mean reaches a level;
    few-shot fine-tunes from each run under its own setting (the linear arm's model is linear);
    zero-shot skipped (not an error) for the linear head, which has no rows for new names."""
    extra = [*_overrides(demo_data), "train.steps=4", "train.eval_every=2", "train.save_every=4",
             "sweep.curve=demo/top1", "sweep.reach=0", "sweep.few_shot=demo",
             "sweep.few_shot_k=[1]", "sweep.few_shot_set=[train.steps=1, train.save_every=1]",
             "sweep.zero_shot=['demo:val.csv:demo']"]
    out = tmp_path / "sweep"
    arms = {"text": (), "linear": ("model.head=linear",)}
    report = sweep("demo", extra, out, arms=arms, seeds=[0, 1])
    for setting in arms:
        curve = report["curve"]["settings"][setting]
        assert curve["steps"] == [2, 4] and len(curve["mean"]) == 2
        assert curve["steps_to_reach"] == 2  # top-1 >= 0 at the first evaluation
        folder = out / report["settings"][setting]["folder"]
        at_2 = [next(r["demo/top1"] for r in map(json.loads, (folder / f"seed{s}" / "metrics.jsonl")
                                                .read_text().splitlines())
                     if r["step"] == 2 and "demo/top1" in r) for s in (0, 1)]
        assert curve["mean"][0] == pytest.approx(sum(at_2) / 2)
        for seed in (0, 1):
            fs = folder / f"seed{seed}" / "few_shot"
            assert (fs / f"k1_seed{seed}" / "start.json").is_file()  # initialised from the run
            cfg = (fs / f"k1_seed{seed}" / "config.yaml").read_text()
            assert ("head: linear" in cfg) == (setting == "linear")
        assert all("few_shot:demo:k1/top1" in r for r in report["runs"][setting])
    assert all("zero_shot:demo:val/top1" in r for r in report["runs"]["text"])
    assert not any("zero_shot:demo:val/top1" in r for r in report["runs"]["linear"])
    table = (out / "sweep.md").read_text()
    assert "steps to demo/top1 >= 0" in table and "| linear |" in table
    assert all((out / f).is_file() for f in ("sweep_curve.png", "sweep_fewshot.png"))
    with pytest.raises(InputError, match="sweep.few_shot: 'nope' is not in datasets"):
        sweep("demo", [*extra, "sweep.few_shot=nope"], tmp_path / "bad", arms=arms)
    for unread, needs in (("sweep.reach=0", "curve"), ("sweep.few_shot_set=[train.steps=1]",
                                                       "few_shot")):
        with pytest.raises(InputError, match=f"is set but sweep.{needs} is not"):
            sweep("demo", [*_overrides(demo_data), unread], tmp_path / "bad", arms=arms)
