"""End to end on generated mp4s: train -> checkpoint -> eval -> zero-shot, resume, bad videos."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from safetensors.torch import load_file

import vlcofit.train.loop as train_mod
from vlcofit.cli.main import main
from vlcofit.experiment import load_experiment
from vlcofit.config.schema import ModelConfig
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.errors import InputError
from vlcofit.protocols.evaluate import evaluate_checkpoint
from vlcofit.protocols.zeroshot import zero_shot
from vlcofit.train.loop import train

MODELS = {"open_clip": "tiny", "hf": "tiny_hf.json"}


@pytest.fixture(scope="session")
def demo_data(demo_videos) -> Path:
    # 8 classes x (4 train + 2 val) tiny clips
    return demo_videos(4, 2)


def small_config(data: Path, out: Path, backbone: str = "open_clip", *extra: str):
    return load_experiment("demo", [
        f"datasets.demo.root={data}", f"output_dir={out}", f"model.backbone={backbone}",
        f"model.name={MODELS[backbone]}", "train.steps=4", "train.batch_size=4", "train.num_workers=0",
        "train.log_every=1", "train.save_every=2", "train.warmup_steps=1", "train.eval_every=2",
        "eval.batch_size=8", *extra])


@pytest.mark.parametrize("backbone", ["open_clip", "hf"])
def test_train_checkpoint_eval_zero_shot(demo_data, tmp_path, backbone):
    cfg = small_config(demo_data, tmp_path / "run", backbone)
    final = train(cfg)
    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 1 and info["end_time"] and info["versions"]["torch"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "demo/top1" in r] == [2, 4]
    assert (run / "checkpoints" / "latest").read_text() == "step_000004"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000002", "step_000004"]
    weights = load_file(run / "checkpoints" / "step_000004" / "model.safetensors")
    assert "logit_scale" in weights and any(k.startswith("temporal.") for k in weights)
    assert (run / "eval" / "demo_per_class.csv").read_text().count("\n") == 9
    assert (run / "learning_curve.png").stat().st_size > 1000
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert load_experiment(run / "config.yaml") == cfg
    assert final["demo/count"] == 16 and 0 <= final["demo/top1"] <= 100

    # evaluating the saved checkpoint reproduces the end-of-training evaluation
    again = evaluate_checkpoint(load_experiment(run / "config.yaml"), str(run), tmp_path / "ev")
    assert again == pytest.approx(final)

    # zero-shot with the fine-tuned weights, from a card and from a bare manifest
    model = ModelConfig(backbone=backbone, name=MODELS[backbone])
    out = tmp_path / "zs.json"
    card_file = tmp_path / "card.yaml"
    card_file.write_text(f"format: csv\nroot: {demo_data}\nval: val.csv\nprompts: demo\n")
    zs = zero_shot(model, str(card_file), "demo", "clip_kinetics", weights=str(run), out=out)
    assert zs["card/count"] == 16
    saved = json.loads(out.read_text())
    assert saved["metrics"] == zs and len(saved["templates"]) == 28
    manifest = zero_shot(model, str(demo_data / "val.csv"), "demo", weights=str(run))
    assert manifest["val/count"] == 16


def test_grad_accum_equals_one_batch_of_the_same_clips(demo_data, tmp_path):
    """2 micro-batches of 2 clips (synchronised by Accelerate on the last) make the step one
    batch of those 4 clips makes: the seeded sampler orders them alike.

    Compared: the (clipped) gradients the optimizer steps with, not the weights after the
    step. Adam's first step moves each weight by lr * g / (|g| + eps), so a gradient near eps
    turns float rounding of the sum (1e-12 here) into a weight difference of any size up to
    2 lr. The two sums differ only in the order of float32 additions: bounded by a few ulps of
    the largest term, so relative to each tensor's largest gradient."""
    grads, weights = {}, []

    def keep_grads(optimizer, args, kwargs):
        grads[name] = [p.grad.clone() for g in optimizer.param_groups for p in g["params"]
                       if p.grad is not None]

    hook = register_optimizer_step_pre_hook(keep_grads)
    try:
        for name, batch, accum, lr in (("big", 4, 1, 1e-2), ("accum", 2, 2, 1e-2),
                                       ("still", 4, 1, 0)):
            cfg = small_config(demo_data, tmp_path / name, "open_clip", "train.steps=1",
                               f"train.batch_size={batch}", f"train.grad_accum={accum}",
                               "train.warmup_steps=0", "train.eval_every=0",
                               "train.save_every=1", f"train.lr={lr}", f"train.lr_new={lr}")
            train(cfg)
            weights.append(load_file(tmp_path / name / "checkpoints" / "step_000001" /
                                     "model.safetensors"))
    finally:
        hook.remove()
    assert len(grads["big"]) == len(grads["accum"]) > 10
    for big, acc in zip(grads["big"], grads["accum"]):
        scale = float(big.abs().max())
        torch.testing.assert_close(acc, big, rtol=1e-4, atol=1e-5 * scale + 1e-12)
    rows = [json.loads((tmp_path / n / "metrics.jsonl").read_text().splitlines()[0])
            for n in ("big", "accum")]
    assert rows[1]["train/loss"] == pytest.approx(rows[0]["train/loss"], rel=1e-5)
    moved = "backbone.clip.visual.transformer.resblocks.0.mlp.c_fc.weight"
    assert not torch.allclose(weights[0][moved], weights[2][moved])  # not a no-op step


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_equals_uninterrupted(demo_data, tmp_path, monkeypatch, accum):
    full = small_config(demo_data, tmp_path / "full", "open_clip", "train.eval_every=0",
                        f"train.grad_accum={accum}", f"train.batch_size={4 // accum}")
    train(full)

    calls = {"n": 0}
    real_step = train_mod._optimizer_step

    def killed_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process dies during step 3; step 2 was checkpointed
        return real_step(*args, **kwargs)

    part = small_config(demo_data, tmp_path / "part", "open_clip", "train.eval_every=0",
                        f"train.grad_accum={accum}", f"train.batch_size={4 // accum}")
    monkeypatch.setattr(train_mod, "_optimizer_step", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(part)
    monkeypatch.setattr(train_mod, "_optimizer_step", real_step)
    with pytest.raises(InputError, match="pass --resume"):
        train(part)
    train(part, resume="latest")

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]

    resumed, uninterrupted = losses(tmp_path / "part"), losses(tmp_path / "full")
    assert [s for s, _ in resumed] == [s for s, _ in uninterrupted] == [1, 2, 3, 4]
    assert [v for _, v in resumed] == pytest.approx([v for _, v in uninterrupted], rel=1e-6)
    a = load_file(tmp_path / "full" / "checkpoints" / "step_000004" / "model.safetensors")
    b = load_file(tmp_path / "part" / "checkpoints" / "step_000004" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_bad_videos_are_skipped_counted_and_fatal_past_fraction(demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    rows = (data / "train.csv").read_text().splitlines()
    victims = [rows[1].split(",")[0], rows[2].split(",")[0]]
    (data / victims[0]).write_bytes(b"not a video at all")  # corrupt
    (data / victims[1]).unlink()  # missing
    cfg = small_config(data, tmp_path / "ok", "open_clip", "train.steps=8", "train.eval_every=0",
                       "train.max_bad_fraction=0.1")
    train(cfg)
    listed = (tmp_path / "ok" / "bad_videos.txt").read_text().split()
    assert sorted(Path(p).name for p in listed) == sorted(Path(v).name for v in victims)
    strict = small_config(data, tmp_path / "strict", "open_clip", "train.steps=8", "train.eval_every=0",
                          "train.max_bad_fraction=0.01")
    with pytest.raises(InputError, match=r"[12] of 32 training videos of demo are unreadable, "
                                         r"more than train.max_bad_fraction=0.01"):
        train(strict)


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "exp.yaml"
    bad.write_text("train:\n  steps: lots\n")
    assert main(["train", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"vlcofit: error: {bad}.train.steps: expected int, got 'lots'"
    assert "Traceback" not in err


def test_init_from_a_checkpoint(demo_data, tmp_path):
    first = small_config(demo_data, tmp_path / "first", "open_clip", "train.eval_every=0")
    train(first)
    # lr 0: the one step changes nothing, so the saved weights are the loaded ones
    second = small_config(demo_data, tmp_path / "second", "open_clip", "train.eval_every=0",
                          "train.steps=1", "train.lr=0", "train.lr_new=0",
                          f"model.init_from={tmp_path / 'first'}")
    train(second)
    a = load_file(tmp_path / "first" / "checkpoints" / "step_000004" / "model.safetensors")
    b = load_file(tmp_path / "second" / "checkpoints" / "step_000001" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    bad = small_config(demo_data, tmp_path / "bad", "hf", f"model.init_from={tmp_path / 'first'}")
    with pytest.raises(InputError, match="no backbone weights fit this model"):
        train(bad)


@pytest.fixture
def fresh_accelerate_state():
    # Accelerate keeps one mixed-precision setting per process; earlier tests trained in fp32.
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_bf16_mixed_precision_on_cpu(demo_data, tmp_path, fresh_accelerate_state):
    cfg = small_config(demo_data, tmp_path / "bf16", "open_clip", "train.mixed_precision=bf16",
                       "train.steps=2", "train.eval_every=0", "eval.max_batches=1")
    final = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 2 and all(0 < v < 10 for v in losses)
    assert json.loads((tmp_path / "bf16" / "run.json").read_text())["mixed_precision"] == "bf16"
    assert final["demo/count"] == 8


def test_demos_keep_their_own_run_folders_and_resume(tmp_path, monkeypatch, capsys):
    import vlcofit.cli.demos as runs
    from vlcofit.data.synthetic.ava import make_demo_ava
    small = {"demo": lambda root: make_demo_dataset(root, per_class_train=2, per_class_val=1),
             "demo_ava": lambda root: make_demo_ava(root, num_train_videos=3, num_val_videos=2,
                                                     seconds=4)}
    monkeypatch.setattr(runs, "demo_generators", lambda: small)
    quick = ["--set", "train.eval_every=0", "--set", "train.num_workers=0", "--set",
             "train.warmup_steps=1", "--set", "eval.max_batches=1"]
    quick += ["--set", "train.steps=3", "--set", "train.save_every=2", "--set", "train.log_every=1"]
    assert main(["demo", "--out", str(tmp_path), *quick]) == 0
    cls = tmp_path / "classification"
    # as if killed after step 2's checkpoint
    shutil.rmtree(cls / "checkpoints" / "step_000003")
    (cls / "checkpoints" / "latest").write_text("step_000002")
    # --keep resumes the demo's own run: the first run's log rows stay, training goes on
    assert main(["demo", "--out", str(tmp_path), "--keep", *quick]) == 0
    steps = [json.loads(r)["step"] for r in (cls / "metrics.jsonl").read_text().splitlines()]
    assert 2 in steps and 3 in steps
    assert (cls / "checkpoints" / "latest").read_text().strip().endswith("step_000003")
    assert len(json.loads((cls / "run.json").read_text())["resumed_at"]) == 1
    # another demo gets another folder and leaves this one alone
    assert main(["demo", "localization", "--out", str(tmp_path), "--set", "train.steps=1", *quick]) == 0
    assert (tmp_path / "localization" / "run.json").is_file()
    assert (cls / "checkpoints" / "latest").read_text().strip().endswith("step_000003")
    out = capsys.readouterr().out
    assert "frame-mAP" in out and f"run folder: {tmp_path / 'localization'}" in out
