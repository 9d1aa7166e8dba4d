"""Bad input gets a clear error, never a traceback: table-driven CLI cases.

Each case runs ``vlcofit.cli.main.main`` in-process and checks exit code 2 (InputError, or argparse's
usage error), that stderr names the file / field / ``--set`` item and what is wrong, and that no
traceback is printed. Almost all cases fail while the config or the arguments are read; the
checkpoint and data cases share one tiny trained run (one step on 16 generated videos).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlcofit.cli.main import main


class Evil:
    """A class a pickle may name: ``weights_only`` loading must refuse it."""


def run_cli(argv: list[str], capsys) -> str:
    """Run the CLI; assert exit code 2 and no traceback; return stderr."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err[-2000:])
    assert "Traceback" not in captured.err + captured.out, captured.err
    assert "weights_only=False" not in captured.err
    return captured.err


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# --------------------------------------------------------------------------- config values

# (--set item, expected message): the value out of range (or the wrong type) names the item
SET_CASES = [
    ("train.save_every=0", "train.save_every must be >= 1, got 0"),
    ("train.log_every=0", "train.log_every must be >= 1, got 0"),
    ("eval.max_batches=0", "eval.max_batches must be >= 1, got 0"),
    ("train.num_workers=-1", "train.num_workers must be >= 0, got -1"),
    ("train.lr=-1", "train.lr must be >= 0, got -1.0"),
    ("train.lr_new=-0.1", "train.lr_new must be >= 0, got -0.1"),
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
    ("train.grad_accum=0", "train.grad_accum must be >= 1, got 0"),
    ("train.weight_decay=-1", "train.weight_decay must be >= 0"),
    ("train.warmup_steps=-5", "train.warmup_steps must be >= 0, got -5"),
    ("train.clip_grad=-1", "train.clip_grad must be >= 0"),
    ("train.label_smoothing=1", "train.label_smoothing must be in [0, 1), got 1.0"),
    ("train.max_bad_fraction=1.5", "train.max_bad_fraction must be in [0, 1], got 1.5"),
    ("train.eval_every=-1", "train.eval_every must be >= 0"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints must be >= 0"),
    ("train.seed=-1", "train.seed must be >= 0"),
    ("train.temperature=0", "train.temperature must be > 0"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1"),
    ("model.temporal_layers=-1", "model.temporal_layers must be >= 0"),
    ("datasets.demo.num_frames=0", "datasets.demo.num_frames must be >= 1, got 0"),
    ("datasets.demo.num_frames=65", "datasets.demo.num_frames is 65; model.temporal=transformer "
                                    "takes at most 64 frames"),
    ("datasets.demo.test_clips=0", "datasets.demo.test_clips must be >= 1"),
    ("datasets.demo.test_crops=2", "datasets.demo.test_crops must be one of 1, 3; got 2"),
    ("datasets.demo.frame_stride=0", "datasets.demo.frame_stride must be >= 1"),
    ("datasets.demo.min_crop_scale=0", "datasets.demo.min_crop_scale must be in (0, 1]"),
    ("datasets.demo.num_classes=0", "datasets.demo.num_classes must be >= 1"),
    ("datasets.demo.localization.fps=0", "datasets.demo.localization.fps must be > 0"),
    ("datasets.demo.localization.person_score_threshold=2",
     "datasets.demo.localization.person_score_threshold must be in [0, 1]"),
    ("datasets.demo.localization.keyframe_range=[9, 3]",
     "datasets.demo.localization.keyframe_range must be [first, last]"),
    ("model.temporal=lstm", "model.temporal must be one of mean, transformer; got 'lstm'"),
    ("train.mixed_precision=fp8", "train.mixed_precision must be one of no, bf16, fp16"),
    ("eval.split=dev", "eval.split must be one of train, val, test"),
    ("train.steps=lots", "train.steps: expected int, got 'lots'"),
    ("train.stepz=3", "train: unknown key 'stepz'"),
    ("train.datasets=[nope]", "train.datasets names 'nope', which is not under `datasets`"),
    ("datasets.demo.card=nope", "datasets.demo.card: nope: no such file"),
]


@pytest.mark.parametrize("item,message", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_bad_set_values_name_the_set_item(item, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = run_cli(["train", "demo", *_sets(f"output_dir={tmp_path / 'run'}", item)], capsys)
    assert err.startswith(f"vlcofit: error: --set {item}: {message}"), err
    assert "demo.yaml" not in err  # the file is not to blame
    assert not (tmp_path / "run").exists()


# (YAML under train/eval, expected message after "<file>: ")
FILE_CASES = [
    ("train: {datasets: [demo], save_every: 0}", "train.save_every must be >= 1, got 0"),
    ("train: {datasets: [demo], log_every: 0}", "train.log_every must be >= 1, got 0"),
    ("train: {datasets: [demo], lr: -1}", "train.lr must be >= 0, got -1.0"),
    ("train: {datasets: [demo], num_workers: -1}", "train.num_workers must be >= 0, got -1"),
    ("train: {datasets: [demo]}\neval: {max_batches: 0}", "eval.max_batches must be >= 1, got 0"),
]


@pytest.mark.parametrize("text,message", FILE_CASES, ids=[c[1].split()[0] for c in FILE_CASES])
def test_bad_file_values_name_the_file(text, message, capsys, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"datasets:\n  demo: {{card: demo}}\n{text}\noutput_dir: {tmp_path / 'run'}\n")
    err = run_cli(["train", exp], capsys)
    assert err.strip() == f"vlcofit: error: {exp}: {message}"
    # the same value is fine once a --set overrides it, and an override's error names the item
    key = message.split()[0]
    err = run_cli(["train", exp, *_sets(f"{key}=1", "train.steps=-1")], capsys)
    assert err.startswith("vlcofit: error: --set train.steps=-1: train.steps must be >= 1")


def test_card_file_values_name_the_card(capsys, tmp_path):
    card = tmp_path / "card.yaml"
    card.write_text("format: csv\nroot: .\ntrain: t.csv\nprompts: demo\nnum_frames: 0\n")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"datasets:\n  c: {{card: {card}}}\ntrain: {{datasets: [c]}}\n")
    err = run_cli(["train", exp], capsys)
    assert err.strip() == f"vlcofit: error: {card}: num_frames must be >= 1, got 0"
    # a per-run override in the experiment names the experiment file
    exp.write_text(f"datasets:\n  c: {{card: {card}, num_frames: 4, test_clips: 0}}\n"
                   "train: {datasets: [c]}\n")
    err = run_cli(["train", exp], capsys)
    assert err.strip() == f"vlcofit: error: {exp}: datasets.c.test_clips must be >= 1, got 0"


# --------------------------------------------------------------------------- arguments

ARG_CASES = [
    (["predict", "--top-k", "-1", "v.mp4"], "argument --top-k: must be >= 1, got -1"),
    (["predict", "--top-k", "0", "v.mp4"], "argument --top-k: must be >= 1, got 0"),
    (["predict", "--batch-size", "0", "v.mp4"], "argument --batch-size: must be >= 1, got 0"),
    (["predict", "--workers", "-1", "v.mp4"], "argument --workers: must be >= 0, got -1"),
    (["predict", "--frames", "0", "v.mp4"], "argument --frames: must be >= 1, got 0"),
    (["predict", "--clips", "0", "v.mp4"], "argument --clips: must be >= 1, got 0"),
    (["predict", "--stride", "0", "v.mp4"], "argument --stride: must be >= 1, got 0"),
    (["predict", "--top-k", "many", "v.mp4"], "argument --top-k: expected an integer, got 'many'"),
    (["zero-shot", "--model", "tiny", "--data", "d.csv", "--prompts", "demo", "--batch-size", "0"],
     "argument --batch-size: must be >= 1, got 0"),
    (["zero-shot", "--model", "tiny", "--data", "d.csv", "--prompts", "demo", "--workers", "-2"],
     "argument --workers: must be >= 0, got -2"),
    (["zero-shot", "--model", "tiny", "--data", "d.csv", "--prompts", "demo", "--frames", "0"],
     "argument --frames: must be >= 1, got 0"),
    (["zero-shot", "--model", "tiny", "--data", "d.csv", "--prompts", "demo", "--half-draws", "0"],
     "argument --half-draws: must be >= 1, got 0"),
    (["few-shot", "demo", "--seeds", "0"], "argument --seeds: must be >= 1, got 0"),
    (["few-shot", "demo", "--shots", "2,x"], "argument --shots: expected comma-separated integers"),
    (["compare", "demo", "--seeds", "0,one"], "argument --seeds: expected comma-separated integers"),
]


@pytest.mark.parametrize("argv,message", ARG_CASES, ids=[" ".join(c[0][:3]) for c in ARG_CASES])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    err = run_cli(argv, capsys)
    assert f"vlcofit {argv[0]}: error: {message}" in err


def test_no_traceback_from_the_installed_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vlcofit", "train", "demo", "--set", "train.lr=-1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        "vlcofit: error: --set train.lr=-1: train.lr must be >= 0, got -1.0"
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- data and checkpoints

@pytest.fixture(scope="module")
def data(demo_videos) -> Path:
    return demo_videos(2, 1)


QUICK = ("train.steps=1", "train.batch_size=2", "train.num_workers=0", "train.eval_every=0",
         "train.warmup_steps=0", "train.log_every=1", "train.save_every=1", "eval.batch_size=2",
         "eval.max_batches=1")


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    """A finished one-step run (one checkpoint)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "demo", *_sets(f"datasets.demo.root={data}", f"output_dir={out}",
                                         *QUICK)]) == 0
    return out


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("path,label\n" + "".join(f"{r},moving left\n" for r in rows))
    return path


def test_wrong_root_with_absolute_annotation_file(data, tmp_path, capsys):
    # the card's train/val files are absolute paths (found), its root is not where the videos are
    err = run_cli(["train", "demo", *_sets(
        "datasets.demo.root=/no/such/root", f"datasets.demo.train={data / 'train.csv'}",
        f"datasets.demo.val={data / 'val.csv'}", f"output_dir={tmp_path / 'run'}", *QUICK)], capsys)
    assert "dataset demo: none of 16 of its 16 videos checked exists, e.g. " \
           "/no/such/root/train/000000.mp4" in err
    assert "is root '/no/such/root' right (it does not exist)?" in err
    assert "--set datasets.demo.root=" in err


def test_absolute_video_paths_that_do_not_exist(data, tmp_path, capsys):
    rows = [f"/moved/away/{i:06d}.mp4" for i in range(12)]
    train = _csv(tmp_path / "abs.csv", rows)
    err = run_cli(["train", "demo", *_sets(
        f"datasets.demo.root={data}", f"datasets.demo.train={train}",
        f"output_dir={tmp_path / 'run'}", *QUICK)], capsys)
    assert "e.g. /moved/away/000000.mp4" in err and f"{train}:2" in err
    assert "the annotation file lists absolute paths" in err


@pytest.mark.parametrize("workers", [0, 1])
def test_tiny_split_of_missing_videos_fails_at_the_first_batch(data, tmp_path, capsys, workers):
    # too few videos for the up-front check: found by the first batch, in a loader worker or not
    train = _csv(tmp_path / "few.csv", ["gone/a.mp4", "gone/b.mp4", "gone/c.mp4"])
    err = run_cli(["train", "demo", *_sets(
        f"datasets.demo.root={data}", f"datasets.demo.train={train}",
        f"output_dir={tmp_path / 'run'}", *QUICK, f"train.num_workers={workers}")], capsys)
    assert "vlcofit: error: dataset demo: 3 unreadable videos in a row from record " in err
    assert "worker" not in err
    assert f"{data / 'gone'}" in err and "no such files; is root" in err


def _copy_run(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, copy / "checkpoints" / "step_000001"


def _resume(copy: Path) -> list[str]:
    return ["train", copy / "config.yaml", "--resume", *_sets(f"output_dir={copy}")]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CHECKPOINT_CASES = [
    # (file in the checkpoint, how it is spoiled, command, expected message)
    ("optimizer.bin", _truncate, "resume", "optimizer.bin: corrupt or truncated"),
    ("optimizer.bin", lambda p: p.write_bytes(b"this is not a pickle"), "resume",
     "optimizer.bin: corrupt or truncated, or not a tensor file"),
    ("scheduler.pt", lambda p: torch.save({"x": Evil()}, p), "resume",
     "scheduler.pt: refused: the file holds objects other than tensors and plain containers "
     f"({__name__}.Evil)"),
    ("random_states_0.pkl", lambda p: torch.save({"x": Evil()}, p), "resume",
     "random_states_0.pkl: refused: the file holds objects other than tensors"),
    ("random_states_0.pkl", lambda p: p.write_bytes(b""), "resume",
     "random_states_0.pkl: corrupt or truncated"),
    ("optimizer.bin", lambda p: torch.save({"state": 3}, p), "resume",
     "step_000001: its optimizer or scaler state does not fit this run's"),
    ("optimizer.bin", lambda p: p.unlink(), "resume", "step_000001: incomplete checkpoint"),
    ("optimizer.bin", lambda p: p.rename(p.with_name("optimizer.pt")), "resume",
     "written by an earlier vlcofit (optimizer.pt, rng_*.pt)"),
    ("model.safetensors", lambda p: save_file({"x": torch.zeros(2)}, p), "resume",
     "model.safetensors: weights do not fit this model (missing"),
    ("state.json", lambda p: p.write_text('{"step": '), "resume",
     "state.json: corrupt checkpoint state"),
    ("model.safetensors", lambda p: p.write_bytes(b"garbage" * 100), "resume",
     "model.safetensors: not a readable safetensors file, corrupt or truncated"),
    ("model.safetensors", _truncate, "eval", "model.safetensors: not a readable safetensors file"),
    ("model.safetensors", _truncate, "predict", "model.safetensors: not a readable safetensors file"),
    ("model.safetensors", _truncate, "init_from", "model.safetensors: not a readable safetensors"),
    ("../latest", lambda p: p.write_text("step_999999"), "resume",
     "latest: names 'step_999999', which is not a checkpoint folder"),
]


@pytest.mark.parametrize("name,spoil,command,message", CHECKPOINT_CASES,
                         ids=[f"{c[2]}-{c[0]}-{i}" for i, c in enumerate(CHECKPOINT_CASES)])
def test_spoiled_checkpoints_name_the_file(run, data, tmp_path, capsys, name, spoil, command,
                                           message):
    copy, ckpt = _copy_run(run, tmp_path)
    spoil(ckpt / name)
    argv = {"resume": _resume(copy),
            "eval": ["eval", "--checkpoint", copy, "--out", tmp_path / "ev"],
            "predict": ["predict", "--checkpoint", copy, data / "val" / "000000.mp4"],
            "init_from": ["train", "demo", *_sets(f"datasets.demo.root={data}",
                                                  f"output_dir={tmp_path / 'new'}",
                                                  f"model.init_from={copy}", *QUICK)]}[command]
    err = run_cli(argv, capsys)
    assert message in err, err
    assert str(tmp_path) in err  # the message names the file by its path


# --------------------------------------------------------------------------- round 2: commands

def _boxes_run(tmp_path: Path) -> Path:
    """A localisation run folder (one untrained checkpoint) and a 2-second video beside it."""
    import numpy as np
    from test_predict import fake_run

    from vlcofit.data.synthetic.clips import render_clip, write_video
    run = tmp_path / "ava_run"
    fake_run(run, "demo_ava")
    frames = render_clip("growing", np.random.default_rng(0), size=64, num_frames=16)
    write_video(tmp_path / "clip.mp4", frames, fps=8)
    return run


@pytest.mark.parametrize("time, message", [
    ("inf", "time_sec must be a finite number of seconds, got inf"),
    ("nan", "time_sec must be a finite number of seconds, got nan"),
    ("999", "time_sec 999 is past the end of"),
])
def test_box_times_outside_the_video(tmp_path, capsys, time, message):
    run = _boxes_run(tmp_path)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"clip.mp4,1.0,0.1,0.2,0.6,0.9\nclip.mp4,{time},0.1,0.2,0.6,0.9\n")
    err = run_cli(["predict", "--checkpoint", run, "--boxes", boxes], capsys)
    assert f"{boxes}:2: {message}" in err
    if time == "999":
        assert "(2.00 s long)" in err


def test_zero_shot_protocols_are_checked_before_decoding(data, tmp_path, capsys, monkeypatch):
    import vlcofit.protocols.zeroshot as zs

    def no_decoding(*args, **kwargs):
        raise AssertionError("videos decoded before the arguments were checked")
    monkeypatch.setattr(zs, "cached_features", no_decoding)
    args = ["zero-shot", "--model", "tiny", "--data", data / "val.csv", "--workers", "0",
            "--no-feature-cache"]
    err = run_cli(args + ["--prompts", "demo", "--protocol", "nonsense"], capsys)
    assert ("--protocol 'nonsense': not full, half, k600-novel or base2novel, nor a split "
            "file") in err
    one = tmp_path / "one.txt"
    one.write_text("moving left\n")
    err = run_cli(args + ["--prompts", one], capsys)
    assert f"--protocol full: the prompt file {one} leaves 1 class to rank among" in err
    split = tmp_path / "split.txt"
    split.write_text("growing\n")
    err = run_cli(args + ["--prompts", "demo", "--protocol", f"full,{split}"], capsys)
    assert f"--protocol split: the split file {split} leaves 1 class" in err
    two = tmp_path / "two.txt"
    two.write_text("moving left\ngrowing\n")
    err = run_cli(args + ["--prompts", two, "--protocol", "half"], capsys)
    assert f"--protocol half: each half-class draw of {two} leaves 1 class" in err


def test_advise_on_captions_only_names_the_datasets(tmp_path, capsys):
    caps = f"{{task: captions, format: csv, root: {tmp_path}, train: c.csv, val: c.csv}}"
    err = run_cli(["advise", "demo", *_sets(f"datasets.caps={caps}", "train.datasets=[caps]"),
                   "--out", tmp_path / "advice"], capsys)
    assert "advise: no dataset to measure the fit on: caps (task: captions); fit measures need " \
           "a single-label classification dataset" in err
    assert not (tmp_path / "advice").exists()


def test_non_utf8_caption_file_names_line_and_byte(tmp_path, capsys):
    (tmp_path / "c.csv").write_bytes(b"path,caption\nv.mp4,a person walks\nv.mp4,caf\xe9 time\n")
    caps = f"{{task: captions, format: csv, root: {tmp_path}, train: c.csv, val: c.csv}}"
    err = run_cli(["train", "demo", *_sets(f"datasets.caps={caps}", "train.datasets=[caps]",
                                           f"output_dir={tmp_path / 'run'}", *QUICK)], capsys)
    assert f"{tmp_path / 'c.csv'}:3: the annotation file is not UTF-8 text (byte 0xe9 at " \
           f"byte 10 of the line, offset 43 of the file" in err


def test_resume_refusal_shows_whole_maps(run, data, capsys):
    err = run_cli(["train", "demo", *_sets(f"datasets.demo.root={data}", f"output_dir={run}",
                                           *QUICK, "train.lr_mults={visual: 0.5}"),
                   "--resume"], capsys)
    assert "train.lr_mults: {} in the run, {'visual': 0.5} now" in err
    assert "None" not in err
