"""User journeys through the CLI, chained as a user runs them, on generated data, on CPU:
train -> eval -> zero-shot on new names -> few-shot from the run -> predict; co-finetuning on
two real processes -> eval -> ava-eval on the detections that eval wrote."""
import json
from pathlib import Path

import pytest
import yaml

from vlcofit.cli.main import main
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.data.synthetic.ava import make_demo_ava

QUICK = ["train.steps=4", "train.batch_size=4", "train.num_workers=0", "train.log_every=1",
         "train.warmup_steps=1", "train.eval_every=0", "train.save_every=4", "eval.batch_size=8"]

# new names for the demo's 8 classes, in its order: never seen in training
NEW_NAMES = ["a shape drifting leftwards", "a shape drifting rightwards", "a shape rising",
             "a shape sinking", "a shape turning clockwise", "a shape turning anticlockwise",
             "a shape getting bigger", "a shape getting smaller"]


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def _json_out(capsys) -> dict | list:
    """The JSON document the last command printed (indented: its first line is "{" or "[")."""
    lines = capsys.readouterr().out.splitlines()
    start = max(i for i, line in enumerate(lines) if line in ("{", "["))
    return json.loads("\n".join(lines[start:]))


def test_train_eval_zero_shot_few_shot_predict(tmp_path, capsys):
    data = make_demo_dataset(tmp_path / "data", per_class_train=2, per_class_val=1)
    run = tmp_path / "run"
    # the default demo config: text head, temporal transformer, trained text tower
    assert main(["train", "demo", *_sets([f"datasets.demo.root={data}", f"output_dir={run}",
                                          *QUICK])]) == 0
    trained = json.loads((run / "run.json").read_text())["final_metrics"]

    # eval from the run folder alone: the run's config.yaml, the same numbers
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "metrics_val.json").read_text())
    assert again == pytest.approx(trained)

    # zero-shot on names the run never saw (manifest labels: indices into the new file)
    names = tmp_path / "new_names.txt"
    names.write_text("\n".join(NEW_NAMES) + "\n")
    old = (data / "val.csv").read_text().splitlines()
    order = (Path(__file__).parents[1] / "prompts" / "demo.txt").read_text().split("\n")
    manifest = tmp_path / "val_new.csv"
    manifest.write_text("path,label\n" + "".join(
        f"{data / row.split(',')[0]},{order.index(row.split(',')[1])}\n" for row in old[1:]))
    capsys.readouterr()
    assert main(["zero-shot", "--weights", str(run), "--data", str(manifest), "--prompts",
                 str(names), "--json", "--workers", "0"]) == 0
    zs = _json_out(capsys)
    assert zs["metrics"]["val_new/count"] == 8 and 0 <= zs["metrics"]["val_new/top1"] <= 100
    # --model naming another architecture than the run's is an error naming both
    assert main(["zero-shot", "--weights", str(run), "--model", "ViT-B-16", "--data",
                 str(manifest), "--prompts", str(names)]) == 2
    assert "ViT-B-16" in capsys.readouterr().err

    # few-shot from the run: its architecture and weights, fine-tuned and probed
    fs = tmp_path / "fewshot"
    assert main(["few-shot", "demo", "--from", str(run), "--shots", "1", "--seeds", "2",
                 "--probe", "--out", str(fs), *_sets([f"datasets.demo.root={data}", *QUICK])]) == 0
    result = json.loads((fs / "fewshot.json").read_text())
    assert {r["k"] for r in result["runs"]} == {1} and len(result["runs"]) == 2
    assert all(r["finetune"] is not None and r["probe"] is not None for r in result["runs"])
    model = yaml.safe_load((fs / "k1_seed0" / "config.yaml").read_text())["model"]
    assert model["temporal"] == "transformer" and model["init_from"].startswith(str(run))
    assert "ddof=1" in result["std"]

    # predict with the run's classes and with the new names
    video = data / old[1].split(",")[0]
    assert main(["predict", str(video), "--checkpoint", str(run), "--json", "--top-k", "3"]) == 0
    pred = _json_out(capsys)
    assert len(pred[0]["top"]) == 3 and pred[0]["top"][0]["label"] in order
    assert main(["predict", str(video), "--checkpoint", str(run), "--labels", str(names),
                 "--json"]) == 0
    assert _json_out(capsys)[0]["top"][0]["label"] in NEW_NAMES


def test_cofinetune_two_processes_then_eval_and_ava_eval(tmp_path, launch_two, capsys):
    demo = make_demo_dataset(tmp_path / "demo", per_class_train=2, per_class_val=1)
    ava = make_demo_ava(tmp_path / "ava", num_train_videos=4, num_val_videos=2, seconds=4)
    run = tmp_path / "co"
    sets = [f"datasets.demo.root={demo}", f"datasets.demo_ava.root={ava}", f"output_dir={run}",
            *QUICK, "train.batch_size=2", "eval.batch_size=4"]
    launch_two(["-m", "vlcofit", "train", "cofinetune_demo", *_sets(sets)],
               timeout=600)
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2
    # the co-finetuned run (box head, temporal transformers) scores zero-shot and probes
    assert main(["zero-shot", "--weights", str(run), "--data", str(demo / "val.csv"),
                 "--prompts", "demo", "--workers", "0"]) == 0
    probe = tmp_path / "probe"
    assert main(["few-shot", "demo", "--probe-only", "--probe-checkpoint", str(run), "--shots",
                 "1", "--seeds", "1", "--out", str(probe),
                 *_sets([f"datasets.demo.root={demo}", *QUICK])]) == 0
    assert json.loads((probe / "fewshot.json").read_text())["runs"][0]["probe"] is not None
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "ev0")]) == 0
    metrics = json.loads((tmp_path / "ev0" / "metrics_val.json").read_text())
    assert metrics["demo_ava/mAP"] == pytest.approx(info["final_metrics"]["demo_ava/mAP"])
    # ava-eval on the detections eval wrote, with the card's exclusions: eval's mAP, in percent
    detections = tmp_path / "ev0" / "demo_ava_detections.csv"
    assert detections.is_file()
    capsys.readouterr()
    assert main(["ava-eval", "--labelmap", str(ava / "labelmap.pbtxt"), "--groundtruth",
                 str(ava / "val.csv"), "--detections", str(detections), "--exclusions",
                 str(ava / "val_excluded_timestamps.csv")]) == 0
    official = _json_out(capsys)
    assert official["protocol"] == "current" and official["unit"] == "percent"
    assert official["mAP"] == pytest.approx(metrics["demo_ava/mAP"], abs=1e-6)
