"""DDP safe by construction: every head and task trains on two real CPU processes, and what
each task declares it trains is exactly what gets gradients."""
import json
from pathlib import Path

import pytest
import torch

from vlcofit.experiment import load_experiment
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.data.synthetic.ava import make_demo_ava
from vlcofit.experiment import build_dataset, build_labels, build_video_model
from vlcofit.tasks import task_of
from vlcofit.train.loop import freeze_unused


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp_data")
    return {"demo": make_demo_dataset(root / "demo", per_class_train=2, per_class_val=1),
            "demo_ava": make_demo_ava(root / "demo_ava", num_train_videos=4, num_val_videos=2,
                                      seconds=4)}


QUICK = ["train.steps=3", "train.batch_size=2", "train.num_workers=0", "train.log_every=1",
         "train.warmup_steps=1", "train.eval_every=0", "train.save_every=3", "eval.batch_size=4",
         "eval.max_batches=1"]

# (config, extra --set items): the five set-ups the issue lists
CASES = {
    "text_head": ("demo", ["model.train_text=false"]),
    "linear_head": ("demo", ["model.head=linear", "model.train_text=false"]),
    "train_text": ("demo", ["model.train_text=true"]),
    "cls_loc_mixture": ("cofinetune_demo", []),
    "loc_eval_only": ("cofinetune_demo", ["train.datasets=[demo]", "train.downstream=[]",
                                          "eval.datasets=[demo, demo_ava]"]),
}


def _sets(data, name: str, out: Path) -> list[str]:
    config, extra = CASES[name]
    roots = [f"datasets.{n}.root={p}" for n, p in data.items()
             if config != "demo" or n == "demo"]
    return roots + QUICK + extra + [f"output_dir={out}"]


@pytest.mark.parametrize("name", list(CASES))
def test_declared_parameters_are_the_ones_with_gradients(data, tmp_path, name):
    """One process, one backward per training task: the parameters that receive a gradient
    are exactly those the task declares (what DDP's find_unused_parameters is derived from)."""
    cfg = load_experiment(CASES[name][0], _sets(data, name, tmp_path))
    labels = build_labels(cfg)
    model = build_video_model(cfg, labels).train()
    tasks = {n: task_of(cfg.datasets[n]) for n in cfg.train.datasets}
    freeze_unused(model, list(tasks.values()))
    for n, task in tasks.items():
        ds = build_dataset(cfg.datasets[n], "train", labels.classes[n], model.backbone,
                           train=True, seed=0)
        batch = ds.collate([ds[0], ds[1]])
        model.zero_grad(set_to_none=True)
        task.loss(model, batch, labels.rows(n), cfg.train).backward()
        got = {p for p, t in model.named_parameters() if t.grad is not None}
        trainable = {p for p, t in model.named_parameters() if t.requires_grad}
        assert got == task.used_parameters(model) & trainable, n


def test_untrained_parts_are_frozen(data, tmp_path):
    cfg = load_experiment("cofinetune_demo", _sets(data, "loc_eval_only", tmp_path))
    model = build_video_model(cfg, build_labels(cfg))
    assert model.box_head is not None  # built for the evaluation
    assert not freeze_unused(model, [task_of(cfg.datasets["demo"])])  # one task: no unused
    assert not any(p.requires_grad for p in model.box_head.parameters())
    linear = load_experiment("demo", _sets(data, "linear_head", tmp_path))
    model = build_video_model(linear, build_labels(linear))
    assert not freeze_unused(model, [task_of(linear.datasets["demo"])])
    assert not model.logit_scale.requires_grad and model.linear.weight.requires_grad
    mixed = load_experiment("cofinetune_demo", _sets(data, "cls_loc_mixture", tmp_path))
    model = build_video_model(mixed, build_labels(mixed))
    assert freeze_unused(model, [task_of(mixed.datasets[n]) for n in mixed.train.datasets])


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_train_every_head(data, tmp_path, launch_two, name):
    out = tmp_path / "run"
    args = ["-m", "vlcofit", "train", CASES[name][0]]
    args += [a for s in _sets(data, name, out) for a in ("--set", s)]
    launch_two(args, timeout=600)
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["end_time"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
