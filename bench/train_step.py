"""vlcofit's training step vs a bare PyTorch loop doing the same work on the same model and tensors.

    python bench/train_step.py [--steps 30] [--batch 8] [--frames 8] [--model tiny]

Both loops: forward, cross-entropy, backward, gradient clipping, AdamW step. vlcofit's adds what
it does on every step: Accelerate (autocast context, backward, clipping), the task dispatch,
the bad-video bookkeeping and the gradient-accumulation plumbing. Target: ratio <= 1.10.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F

from vlcofit.config import ExperimentConfig, ModelConfig, TrainConfig
from vlcofit.models.video import build_model
from vlcofit.optim import build_optimizer
from vlcofit.tasks import TASKS
from vlcofit.train import _optimizer_step, make_accelerator


def _time(step, n: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        step()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--model", default="tiny")
    p.add_argument("--backbone", default="open_clip")
    args = p.parse_args()
    torch.manual_seed(0)
    names = [f"class {i}" for i in range(8)]
    mcfg = ModelConfig(backbone=args.backbone, name=args.model)
    tcfg = TrainConfig(steps=1000, batch_size=args.batch, warmup_steps=0, clip_grad=1.0)
    base_model = build_model(mcfg, names, [("a video of a person {}.",)] * len(names))
    size = base_model.backbone.image_size
    video = torch.randn(args.batch, args.frames, 3, size, size)
    label = torch.randint(0, len(names), (args.batch,))
    rows = torch.arange(len(names))

    # bare PyTorch
    bare = copy.deepcopy(base_model).train()
    bare_opt = build_optimizer(bare, bare.new_parameter_names(), tcfg)

    def bare_step() -> None:
        loss = F.cross_entropy(bare(video, rows).float(), label)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    # vlcofit
    ours = copy.deepcopy(base_model)
    accelerator = make_accelerator(ExperimentConfig(train=tcfg), None)
    opt = build_optimizer(ours, ours.new_parameter_names(), tcfg)
    ours, opt = accelerator.prepare(ours, opt)
    ours.train()
    batch = {"video": video, "label": label, "bad": []}
    batches = iter(lambda: batch, None)
    task = TASKS["classification"]

    def our_step() -> None:
        _optimizer_step(accelerator, ours, opt, batches, rows, task, tcfg, lambda paths: None)

    # interleave rounds so drift in machine load hits both equally
    bare_t, our_t = [], []
    for _ in range(3):
        bare_t += _time(bare_step, args.steps // 3)
        our_t += _time(our_step, args.steps // 3)
    b, o = statistics.median(bare_t), statistics.median(our_t)
    clips = args.batch
    print(f"model {args.backbone}:{args.model}, batch {args.batch} x {args.frames} frames x {size}px, "
          f"{torch.get_num_threads()} threads, device cpu, {len(bare_t)} timed steps each (median)")
    print(f"{'loop':<14} {'ms/step':>9} {'clips/s':>9} {'ratio':>7}")
    print(f"{'bare PyTorch':<14} {1000 * b:9.1f} {clips / b:9.1f} {1.0:7.3f}")
    print(f"{'vlcofit':<14} {1000 * o:9.1f} {clips / o:9.1f} {o / b:7.3f}")


if __name__ == "__main__":
    main()
