"""Training-step time with 1, 2 and 4 datasets in the mixture, at equal batch size.

    python bench/mixture.py [--steps 60] [--batch 8] [--frames 8] [--classes 50]

Each dataset has its own classes (the label space grows with the mixture), its own batches and
its own rows of the shared text-embedding matrix; the step is vlcofit's `_optimizer_step`, the
dataset of each step drawn by `vlcofit.data.mixture.plan`. Data loading is left out (in-memory
batches) so the table shows the mixture's own overhead. It also counts text-tower calls: with the
text tower frozen the class embeddings of all datasets are computed once per run.
Target: <= 1.05x the single-dataset step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from vlcofit.config.schema import DatasetCard, ExperimentConfig, ModelConfig, TrainConfig
from vlcofit.data.mixture import plan
from vlcofit.models.video import build_model
from vlcofit.train.optim import build_optimizer
from vlcofit.tasks import TASKS
from vlcofit.train.loop import _optimizer_step
from vlcofit.train.accelerator import make_accelerator


def run(k: int, args) -> tuple[float, int]:
    """Median seconds per step and text-tower calls for a mixture of ``k`` datasets."""
    torch.manual_seed(0)
    names = [f"d{i}" for i in range(k)]
    classes = [f"action {d} {c}" for d in range(k) for c in range(args.classes)]
    model = build_model(ModelConfig(name="tiny"), classes, [("a video of a person {}.",)] * len(classes))
    calls = {"n": 0}
    encode_text = model.backbone.encode_text

    def counted(tokens):
        calls["n"] += 1
        return encode_text(tokens)

    model.backbone.encode_text = counted
    cards = {n: DatasetCard(name=n, prompts="demo", num_frames=args.frames) for n in names}
    tcfg = TrainConfig(datasets=tuple(names), steps=args.steps + 5, batch_size=args.batch,
                       sampling="uniform", warmup_steps=0)
    cfg = ExperimentConfig(datasets=cards, train=tcfg)
    schedule = plan(cfg, {n: 1000 for n in names}).schedule
    accelerator = make_accelerator(cfg, None)
    opt = build_optimizer(model, model.new_parameter_names(), tcfg)
    model, opt = accelerator.prepare(model, opt)
    model.train()
    size = accelerator.unwrap_model(model).backbone.image_size
    batches = {}
    for i, n in enumerate(names):
        batch = {"video": torch.randn(args.batch, args.frames, 3, size, size),
                 "label": torch.randint(0, args.classes, (args.batch,)), "bad": []}
        batches[n] = iter(lambda b=batch: b, None)
    rows = {n: torch.arange(i * args.classes, (i + 1) * args.classes) for i, n in enumerate(names)}
    task = TASKS["classification"]
    times = []
    for step in range(args.steps + 5):
        n = names[int(schedule[step])]
        start = time.perf_counter()
        _optimizer_step(accelerator, model, opt, batches[n], rows[n], task, tcfg, lambda p: None)
        if step >= 5:
            times.append(time.perf_counter() - start)
    return statistics.median(times), calls["n"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--classes", type=int, default=50, help="classes per dataset")
    args = p.parse_args()
    results = {k: run(k, args) for k in (1, 2, 4)}
    base = results[1][0]
    print(f"tiny open_clip model, batch {args.batch} x {args.frames} frames, {args.classes} classes per "
          f"dataset, cpu, {torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'datasets':>8} {'classes':>8} {'ms/step':>9} {'ratio':>7} {'text-tower calls':>17}")
    for k, (sec, calls) in results.items():
        print(f"{k:>8} {k * args.classes:>8} {1000 * sec:9.1f} {sec / base:7.3f} {calls:>17}")


if __name__ == "__main__":
    main()
