"""The transfer baseline's own phases, loss weights that act, and resumes that refuse a changed
run and lose nothing."""
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vlcofit.train.loop as train_mod
from vlcofit.cli.main import main
from vlcofit.experiment import load_experiment
from vlcofit.train.loop import train


@pytest.fixture(scope="module")
def data(demo_videos) -> Path:
    return demo_videos(2, 1)


def _config(tmp_path: Path, data: Path, out: str, *overrides: str):
    """Two classification datasets over the same videos, upstream ``up``, downstream ``down``."""
    path = tmp_path / "two.yaml"
    path.write_text(textwrap.dedent(f"""\
        model: {{name: tiny, train_text: false}}
        datasets:
          up: {{card: demo, root: {data}}}
          down: {{card: demo, root: {data}}}
        train: {{datasets: [up, down], sampling: uniform, schedule: sequential,
                downstream: [down], steps: 8, batch_size: 4, num_workers: 0, log_every: 1,
                save_every: 2, eval_every: 0, warmup_steps: 3, lr: 1.0e-3, lr_new: 1.0e-3}}
        eval: {{batch_size: 8, max_batches: 1, datasets: [down]}}
        output_dir: {tmp_path / out}
        """))
    return load_experiment(path, list(overrides))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _killed_after(monkeypatch, n: int):
    """Make the n+1-th optimizer step die, as a killed process would."""
    calls = {"n": 0}
    real = train_mod._optimizer_step

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(train_mod, "_optimizer_step", step)
    return lambda: monkeypatch.setattr(train_mod, "_optimizer_step", real)


def test_sequential_downstream_has_its_own_warmup_cosine_and_optimizer(tmp_path, data):
    train(_config(tmp_path, data, "seq"))
    run = tmp_path / "seq"
    phases = json.loads((run / "mixture.json").read_text())["phases"]
    (_, boundary), (start, end) = phases
    assert start == boundary and end == 8 and 0 < boundary < 8
    lr = {r["step"]: r["train/lr/pretrained"] for r in _rows(run) if "train/loss" in r}
    # the learning rate logged after a step is the next step's: the upstream cosine decays
    # to its end; downstream warms up again from 1/3 of the peak (warmup_steps=3)
    assert lr[1] == pytest.approx(1e-3 * 2 / 3)  # upstream warms up the same way
    assert lr[boundary] == pytest.approx(1e-3 / 3)
    assert lr[boundary + 1] == pytest.approx(1e-3 * 2 / 3)
    assert max(lr[s] for s in range(boundary, 9)) == pytest.approx(1e-3)
    assert lr[8] == pytest.approx(0.0, abs=1e-12)
    # a fresh optimizer: Adam's step count in the last checkpoint counts downstream steps only
    opt = torch.load(run / "checkpoints" / "step_000008" / "optimizer.bin", weights_only=True)
    assert {int(s["step"]) for s in opt["state"].values()} == {8 - boundary}


@pytest.mark.parametrize("killed_at", ["boundary", "after"])
def test_resume_across_the_phase_boundary_is_bitwise(tmp_path, data, monkeypatch, killed_at):
    full = _config(tmp_path, data, "full", "train.save_every=1")
    train(full)
    boundary = json.loads((tmp_path / "full" / "mixture.json").read_text())["phases"][0][1]
    stop = boundary if killed_at == "boundary" else boundary + 1
    restore = _killed_after(monkeypatch, stop)
    part = _config(tmp_path, data, "part", "train.save_every=1")
    with pytest.raises(KeyboardInterrupt):
        train(part)
    restore()
    train(part, resume="latest")
    a = [(r["step"], r["train/loss"]) for r in _rows(tmp_path / "full") if "train/loss" in r]
    b = [(r["step"], r["train/loss"]) for r in _rows(tmp_path / "part") if "train/loss" in r]
    assert a == b  # exactly
    wa = load_file(tmp_path / "full" / "checkpoints" / "step_000008" / "model.safetensors")
    wb = load_file(tmp_path / "part" / "checkpoints" / "step_000008" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _update(tmp_path, data, name: str, *extra: str) -> dict[str, torch.Tensor]:
    """Weights after one step minus the initial weights (same seed, same batch)."""
    cfg = _config(tmp_path, data, name, "train.schedule=cofinetune", "train.steps=1",
                  "train.save_every=1", "train.warmup_steps=0", "train.sampling=weights",
                  "train.weights={up: 0, down: 1}", *extra)
    init = _config(tmp_path, data, name + "_init", "train.schedule=cofinetune", "train.steps=1",
                   "train.save_every=1", "train.lr=0", "train.lr_new=0", "train.warmup_steps=0",
                   "train.sampling=weights", "train.weights={up: 0, down: 1}", *extra)
    train(cfg)
    train(init)
    after = load_file(tmp_path / name / "checkpoints" / "step_000001" / "model.safetensors")
    before = load_file(tmp_path / (name + "_init") / "checkpoints" / "step_000001" /
                       "model.safetensors")
    return {k: after[k] - before[k] for k in after}


def test_loss_weights_act_with_clipping(tmp_path, data):
    """A tiny clip_grad makes every step clipped: a weight on the loss would cancel exactly;
    the weight on the step's update does not."""
    one = _update(tmp_path, data, "w1", "train.clip_grad=1.0e-6")
    half = _update(tmp_path, data, "w05", "train.clip_grad=1.0e-6", "train.loss_weights={down: 0.5}")
    key = "temporal.out.weight"
    assert one[key].abs().sum() > 0
    torch.testing.assert_close(half[key], 0.5 * one[key], rtol=1e-4, atol=1e-9)


def test_resume_refuses_a_changed_run_and_rewrites_nothing(tmp_path, data):
    cfg = _config(tmp_path, data, "run", "train.schedule=cofinetune")
    train(cfg)
    run = tmp_path / "run"
    before = {f: (run / f).read_text() for f in ("run.json", "config.yaml", "metrics.jsonl")}
    assert json.loads(before["run.json"])["final_metrics"]
    base = ["train", str(tmp_path / "two.yaml"), "--set", "train.schedule=cofinetune"]
    for change, key in [("train.lr=0.002", "train.lr"), ("train.steps=9", "train.steps"),
                        ("train.batch_size=2", "train.batch_size"), ("train.seed=1", "train.seed"),
                        ("model.temporal=mean", "model.temporal")]:
        assert main(base + ["--set", change, "--resume"]) == 2
        for f, text in before.items():
            assert (run / f).read_text() == text, (change, f)
    # logging and evaluation frequency may change
    assert main(base + ["--set", "train.log_every=4", "--set", "eval.batch_size=4",
                        "--resume"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["final_metrics"] and info["resumed_at"]


def test_resume_error_names_the_keys(tmp_path, data, capsys):
    train(_config(tmp_path, data, "run", "train.schedule=cofinetune"))
    code = main(["train", str(tmp_path / "two.yaml"), "--set", "train.schedule=cofinetune",
                 "--set", "train.lr=0.002", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "train.lr: 0.001 in the run, 0.002 now" in err
    assert "Traceback" not in err


def test_bad_videos_survive_a_resume(tmp_path, data, monkeypatch):
    own = tmp_path / "data"
    shutil.copytree(data, own)
    victim = (own / "train.csv").read_text().splitlines()[1].split(",")[0]
    (own / victim).write_bytes(b"not a video")
    cfg = _config(tmp_path, own, "run", "train.schedule=cofinetune", "train.max_bad_fraction=0.5",
                  "train.save_every=1", "train.steps=16")
    restore = _killed_after(monkeypatch, 14)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    restore()
    listed = (tmp_path / "run" / "bad_videos.txt").read_text().split()
    assert len(listed) == 1 and listed[0].endswith(victim)
    train(cfg, resume="latest")
    assert (tmp_path / "run" / "bad_videos.txt").read_text().split() == listed
    last = [r for r in _rows(tmp_path / "run") if "train/loss" in r][-1]
    assert last["train/bad_videos"] == 1


def test_many_corrupt_videos_fail_with_the_fraction_message(tmp_path, data, capsys):
    own = tmp_path / "data"
    shutil.copytree(data, own)
    rows = (own / "train.csv").read_text().splitlines()[1:]
    for row in rows[: int(0.6 * len(rows))]:
        (own / row.split(",")[0]).write_bytes(b"corrupt")
    _config(tmp_path, own, "run", "train.schedule=cofinetune")
    code = main(["train", str(tmp_path / "two.yaml"), "--set", "train.schedule=cofinetune",
                 "--set", "train.max_bad_fraction=0.2"])
    err = capsys.readouterr().err
    assert code == 2 and "train.max_bad_fraction=0.2" in err and "Traceback" not in err
    listed = (tmp_path / "run" / "bad_videos.txt").read_text().split()
    assert len(listed) > 0.2 * len(rows)


def test_both_phases_share_one_prepared_optimizer(tmp_path, data, monkeypatch):
    """Accelerate keeps every prepared optimizer and unscales fp16 gradients once per
    optimizer: the downstream phase must reuse the one optimizer, its state dropped."""
    seen, made = [], []
    real_schedule, real_accelerator = train_mod._phase_schedule, train_mod.make_accelerator

    def schedule(optimizer, cfg, mix, phase):
        out = real_schedule(optimizer, cfg, mix, phase)
        seen.append((optimizer, phase, len(optimizer.optimizer.state)))
        return out

    def accelerator(*args, **kwargs):
        made.append(real_accelerator(*args, **kwargs))
        return made[-1]
    monkeypatch.setattr(train_mod, "_phase_schedule", schedule)
    monkeypatch.setattr(train_mod, "make_accelerator", accelerator)
    train(_config(tmp_path, data, "one"))
    assert [p for _, p, _ in seen] == [0, 1] and seen[0][0] is seen[1][0]
    assert seen[1][2] == 0  # Adam's moments dropped at the boundary
    assert len(made[0]._optimizers) == 1
