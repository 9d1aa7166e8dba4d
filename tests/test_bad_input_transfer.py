"""Bad input to the transfer knobs gets a clear error before anything trains: coarse <-> fine
maps, sweeps (--seeds, --grid, sweep.arms) and train.freeze. Table-driven CLI cases, run
in-process as in test_bad_input: exit code 2, no traceback, the file / line / field named."""
from __future__ import annotations

from pathlib import Path

import pytest

import vlcofit.protocols.sweep as sweep_mod
from test_bad_input import _sets, run_cli

QUICK = ("train.steps=1", "train.batch_size=2", "train.num_workers=0", "train.eval_every=0",
         "train.warmup_steps=0", "train.log_every=1", "train.save_every=1", "eval.batch_size=2",
         "eval.max_batches=1")


@pytest.fixture(scope="module")
def data(demo_videos) -> Path:
    return demo_videos(1, 1)


def _train(data: Path, run: Path, *items: str) -> list[str]:
    return ["train", "demo", *_sets(f"datasets.demo.root={data}", f"output_dir={run}", *QUICK,
                                    *items)]


# --------------------------------------------------------------------------- coarse <-> fine

DEMO_MAP = [("moving left", "moving sideways"), ("moving right", "moving sideways"),
            ("moving up", "moving vertically"), ("moving down", "moving vertically"),
            ("rotating clockwise", "rotating"), ("rotating counterclockwise", "rotating"),
            ("growing", "changing size"), ("shrinking", "changing size")]
GROUPS = "moving sideways\nmoving vertically\nrotating\nchanging size\n"

TSV = "".join(f"{f}\t{c}\n" for f, c in DEMO_MAP)
CSV = "".join(f"{f},{c}\n" for f, c in DEMO_MAP)

# (map text, coarse_prompts text or None, file blamed ("map" / "groups"), expected after it)
MAP_CASES = [
    # a fine class listed twice, even to the same group: both lines and the class named
    (TSV + "moving left\tmoving sideways\n", None, "map",
     ":9: 'moving left' is already mapped to 'moving sideways' at line 1; map each fine class "
     "once"),
    (TSV.replace("moving up\tmoving vertically", "moving up\tmoving vertically\tfast"), None,
     "map", ":3: 3 tab-separated columns, expected 2 ('fine name<TAB>coarse name'), got "
            "'moving up\\tmoving vertically\\tfast'"),
    (CSV.replace("moving up,moving vertically", "moving up,moving vertically,fast"), None,
     "map", ":3: 3 comma-separated columns, expected 2 (fine,coarse; the fine name 'moving up' "
            "is followed by 'moving vertically')"),
    # a listed group no fine class maps to: the coarse_prompts file, its line and the group
    (TSV, GROUPS + "flying\n", "groups", ":5: coarse group 'flying' has no fine class mapped "
                                         "to it in "),
]


@pytest.mark.parametrize("mapping,groups,blamed,message", MAP_CASES,
                         ids=["twice_same_group", "tab_third_column", "csv_third_column",
                              "unused_group"])
def test_bad_coarse_maps_fail_before_training(mapping, groups, blamed, message, data, tmp_path,
                                              capsys):
    files = {"map": tmp_path / "map.tsv", "groups": tmp_path / "groups.txt"}
    files["map"].write_text(mapping)
    items = [f"datasets.demo.coarse={files['map']}"]
    if groups is not None:
        files["groups"].write_text(groups)
        items.append(f"datasets.demo.coarse_prompts={files['groups']}")
    err = run_cli(_train(data, tmp_path / "run", *items), capsys)
    assert err.startswith(f"vlcofit: error: {files[blamed]}{message}"), err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- train.freeze

# (freeze spec, whether the config file names it, expected message)
FREEZE_CASES = [
    ("text:-1", False, "--set train.freeze=[text:-1]: train.freeze[0] 'text:-1': N must be >= 0"),
    ("image:-2", True, "{exp}: train.freeze[0] 'image:-2': N must be >= 0"),
    ("bogus:2", False, "train.freeze: 'bogus:2': the OpenCLIPBackbone backbone declares no "
                       "'bogus' tower; towers are image and text"),
    ("text:x", False, "train.freeze: 'text:x': N must be an integer >= 0"),
]


@pytest.mark.parametrize("spec,in_file,message", FREEZE_CASES, ids=[c[0] for c in FREEZE_CASES])
def test_bad_freeze_blocks_say_what_is_wrong(spec, in_file, message, data, tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    if in_file:
        exp.write_text(f"datasets:\n  demo: {{card: demo, root: {data}}}\n"
                       f"train: {{datasets: [demo], freeze: ['{spec}']}}\n")
        argv = ["train", exp, *_sets(f"output_dir={tmp_path / 'run'}", *QUICK)]
    else:
        argv = _train(data, tmp_path / "run", f"train.freeze=[{spec}]")
    err = run_cli(argv, capsys)
    assert err.startswith(f"vlcofit: error: {message.format(exp=exp)}"), err
    assert "matches no trainable parameter" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- sweeps

@pytest.fixture
def trained(monkeypatch) -> list:
    """The learning rates of the runs the sweep trained (none may train: each case is bad)."""
    calls = []
    monkeypatch.setattr(sweep_mod, "train",
                        lambda cfg, resume=None: calls.append(cfg.train.lr) or {"demo/top1": 1.0})
    return calls


# (sweep arguments, expected message); the first setting is good wherever there are two
GRID_CASES = [
    (["--seeds", "0,0", "--grid", "train.lr=1e-3,1e-2"],
     "--seeds 0,0: seed 0 is given twice; each seed is one run"),
    (["--seeds", "0", "--grid", "train.lr=1e-3,abc"],
     "--grid train.lr=1e-3,abc (value 'abc'): train.lr: expected float, got 'abc'"),
    (["--seeds", "0", "--grid", "train.lr=1e-3,-1"],
     "--grid train.lr=1e-3,-1 (value '-1'): train.lr must be >= 0, got -1.0"),
    (["--seeds", "0", "--grid", "train.lr=1e-3,1e-2", "--grid", "train.freeze=[],[text:-1]"],
     "--grid train.freeze=[],[text:-1] (value '[text:-1]'): train.freeze[0] 'text:-1': "
     "N must be >= 0"),
    (["--seeds", "0", "--grid", "train.lr=1e-3,1e-3"], "--grid 'train.lr=1e-3,1e-3': value "
                                                       "'1e-3' is given twice"),
]


@pytest.mark.parametrize("args,message", GRID_CASES,
                         ids=["seeds_twice", "grid_type", "grid_range", "grid_freeze",
                              "grid_value_twice"])
def test_bad_sweep_arguments_fail_before_any_arm_trains(args, message, trained, tmp_path,
                                                        capsys):
    out = tmp_path / "sweep"
    err = run_cli(["sweep", "demo", *args, "--out", out], capsys)
    assert err.startswith(f"vlcofit: error: {message}"), err
    assert "--set" not in err  # the user typed none
    assert trained == [] and not out.exists()


# (sweep section of the config file, expected message after "<file>: ")
ARM_CASES = [
    ("arms: {plain: [], decayed: ['train.lr']}",
     "sweep.arms.decayed[0] 'train.lr': expected KEY=VALUE, e.g. train.lr=1e-4"),
    ("arms: {plain: [], decayed: ['train.layer_decay=0.5', 'train.lr=abc']}",
     "sweep.arms.decayed[1] 'train.lr=abc': train.lr: expected float, got 'abc'"),
    ("arms: {plain: [], decayed: ['train.layer_decay=0']}",
     "sweep.arms.decayed[0] 'train.layer_decay=0': train.layer_decay must be in (0, 1], got 0.0"),
    ("arms: {plain: []}\n  finetune: ['train.steps']",
     "sweep.finetune[0] 'train.steps': expected KEY=VALUE"),
    ("arms: {plain: []}\n  seeds: [1, 1]", "sweep.seeds: seed 1 is given twice"),
]


@pytest.mark.parametrize("section,message", ARM_CASES,
                         ids=["arm_no_equals", "arm_type", "arm_range", "finetune", "seeds"])
def test_bad_sweep_arms_name_the_file_and_field(section, message, trained, tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"datasets:\n  demo: {{card: demo}}\ntrain: {{datasets: [demo]}}\n"
                   f"sweep:\n  {section}\n")
    out = tmp_path / "sweep"
    err = run_cli(["sweep", exp, "--out", out], capsys)
    assert err.startswith(f"vlcofit: error: {exp}: {message}"), err
    assert "--set" not in err
    assert trained == [] and not out.exists()


def test_arms_set_on_the_command_line_name_the_set_item(trained, tmp_path, capsys):
    item = "sweep.arms={plain: [], low: [train.lr=-1]}"
    err = run_cli(["sweep", "demo", *_sets(item), "--out", tmp_path / "sweep"], capsys)
    assert err.startswith(f"vlcofit: error: --set {item}: sweep.arms.low[0] 'train.lr=-1': "
                          "train.lr must be >= 0"), err
    assert trained == []
