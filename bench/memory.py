"""Peak memory and step time of a training step with and without activation checkpointing
(``model.grad_checkpointing``), per backbone family.

    python bench/memory.py [--repeats 3] [--frames 8] [--batch 4]
    python bench/memory.py --models open_clip:ViT-B-16,open_clip:ViT-L-14 --frames 8,16 --batch 8

Each measurement runs in a fresh process, arms interleaved over ``--repeats`` rounds.
``saved_mib`` (any device, exact): the activations kept for the backward pass of one step, the
storages that autograd's saved-tensor hooks see (parameters excluded) — what checkpointing
trades for recomputation. ``peak_mib`` (GPU only): ``torch.cuda.max_memory_allocated`` over one
step minus the memory held before it (weights, gradients, optimizer state). ``step_s``: the
median of ``--steps`` timed steps after two warm-up steps. Printed: per model and frame count,
the median of each arm and the checkpointed / plain ratio (median of the per-round ratios,
with their min-max spread).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# backbone, model name: default CPU families (a ViT big enough that activations dominate)
DEFAULT_MODELS = "open_clip:bench_vit.json,hf:tiny_hf.json,open_clip:tiny_timm_vit"
BENCH_VIT = {"embed_dim": 128, "vision_cfg": {"image_size": 112, "layers": 6, "width": 256,
                                              "head_width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                          "layers": 1}}


def child(args) -> None:
    """One measurement; prints a JSON line."""
    import torch
    import torch.nn.functional as F

    from vlcofit.config.schema import ModelConfig
    from vlcofit.models.video import build_model

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone, name = args.model.split(":", 1)
    cfg = ModelConfig(backbone=backbone, name=name, grad_checkpointing=args.checkpointing)
    model = build_model(cfg, [f"class {i}" for i in range(10)], [("{}",)] * 10).to(device)
    size = model.backbone.image_size  # each tower at its own resolution
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    video = torch.rand(args.batch, args.frames, 3, size, size, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def step(saved: dict | None = None):
        def pack(t):  # a tensor kept for the backward pass: count its storage once
            ptr = t.untyped_storage().data_ptr()
            if saved is not None and ptr not in params:
                saved[ptr] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(video), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # optimizer state allocated: what stays between steps is in the baseline
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    saved: dict = {}
    step(saved)
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else float("nan")
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"saved_mib": sum(saved.values()) / 2**20, "peak_mib": peak / 2**20,
                      "step_s": statistics.median(times),
                      "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "size": size}))


def measure(args, model: str, frames: int, checkpointing: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--model", model, "--frames", str(frames),
           "--batch", str(args.batch), "--steps", str(args.steps)]
    if checkpointing:
        cmd.append("--checkpointing")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="backbone:name,...")
    p.add_argument("--frames", default="8", help="comma-separated frame counts")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.frames = int(args.frames)
        return child(args)
    models = args.models.split(",")
    if any(m.endswith(":bench_vit.json") for m in models):
        path = os.path.join(tempfile.mkdtemp(prefix="vlcofit_bench_"), "bench_vit.json")
        with open(path, "w") as f:
            json.dump(BENCH_VIT, f)
        models = [m.replace("bench_vit.json", path) for m in models]
    keys = ("saved_mib", "peak_mib", "step_s")
    print("| model | frames | batch | size | device | " + " | ".join(
        f"plain {k} | ckpt {k} | ratio (min-max)" for k in keys) + " |\n" + "| --- " * 14 + "|")
    for model in models:
        for frames in map(int, args.frames.split(",")):
            rounds = [(measure(args, model, frames, False), measure(args, model, frames, True))
                      for _ in range(args.repeats)]  # interleaved arms
            row = [model.rsplit("/", 1)[-1], frames, args.batch, rounds[0][0]["size"],
                   rounds[0][0]["device"]]
            for key in keys:
                plain = statistics.median(r[0][key] for r in rounds)
                ckpt = statistics.median(r[1][key] for r in rounds)
                ratios = [r[1][key] / r[0][key] for r in rounds if r[0][key] > 0]
                spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
                med = statistics.median(ratios) if ratios else float("nan")
                digits = 3 if key == "step_s" else 1
                row += [f"{plain:.{digits}f}", f"{ckpt:.{digits}f}", f"{med:.2f} ({spread})"]
            print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
