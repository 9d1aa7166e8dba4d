"""vlcofit's training step vs a bare PyTorch loop doing the same work on the same model and tensors.

    python bench/train_step.py [--steps 30] [--batch 8] [--frames 8] [--model tiny]
    python bench/train_step.py --model ViT-B-16 --batch 32 --mixed-precision bf16   # on a GPU

Both loops: forward, cross-entropy, backward, gradient clipping, AdamW step, in the same
precision (bf16/fp16 autocast or fp32) on the same device (a GPU when there is one). vlcofit's adds
what it does on every step: Accelerate (autocast context, backward, clipping), the task dispatch,
the bad-video bookkeeping and the gradient-accumulation plumbing. Target: ratio <= 1.10.

Also printed: model FLOPs per step (counted by torch.utils.flop_counter on one forward+backward),
the model FLOPs utilisation (MFU) against the device's dense peak for the precision, and the
peak GPU memory of vlcofit's loop alone.

Then, training the text tower (``model.train_text``), on a label space of ``--text-classes``
classes x CLIP's 28 Kinetics templates: vlcofit's step time with the text tower frozen (cached
class matrix), trained with one template per class of the step's rows (ActionCLIP / ViFi-CLIP,
what vlcofit does), and trained re-encoding the whole label space x every template each step
(what it did before), interleaved, as ratios to the frozen arm.

Then L2-SP (``train.l2sp``): vlcofit's step with decoupled decay towards the starting weights on
every transferred tensor vs without, interleaved. Target: ratio <= 1.05.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import time
from contextlib import nullcontext

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vlcofit.config.schema import ExperimentConfig, ModelConfig, TrainConfig
from vlcofit.models.video import build_model, compile_image_blocks
from vlcofit.train.optim import attach_l2sp, build_optimizer
from vlcofit.text.prompts import read_templates
from vlcofit.tasks import TASKS
from vlcofit.train.loop import _optimizer_step
from vlcofit.train.accelerator import make_accelerator

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, by a substring of the
# device name, most specific first. No MFU for fp32: its peak depends on whether TF32 is enabled.
PEAK_TFLOPS = {"H100 PCIe": 756, "H100": 989, "H200": 989, "A100": 312}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda" or precision not in DTYPES:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def _time(step, n: int, device: torch.device, warmup: int = 5) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    out = []
    for _ in range(n):
        sync()
        start = time.perf_counter()
        step()
        sync()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--model", default="tiny")
    p.add_argument("--backbone", default="open_clip")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU")
    p.add_argument("--compile", action="store_true",
                   help="model.compile: torch.compile each image-tower block, in both arms")
    p.add_argument("--profile", action="store_true",
                   help="also print the 15 most expensive ops of 3 vlcofit steps")
    p.add_argument("--text-classes", type=int, default=100,
                   help="label-space size of the text-tower arms (0: skip them)")
    p.add_argument("--text-steps", type=int, default=6, help="timed steps per text-tower arm")
    p.add_argument("--no-l2sp", action="store_true", help="skip the L2-SP arms")
    args = p.parse_args()
    if args.cpu:
        os.environ["ACCELERATE_USE_CPU"] = "1"
    torch.manual_seed(0)
    names = [f"class {i}" for i in range(8)]
    mcfg = ModelConfig(backbone=args.backbone, name=args.model)
    tcfg = TrainConfig(steps=1000, batch_size=args.batch, warmup_steps=0, clip_grad=1.0,
                       mixed_precision=args.mixed_precision)
    accelerator = make_accelerator(ExperimentConfig(train=tcfg), None)
    device = accelerator.device
    base_model = build_model(mcfg, names, [("a video of a person {}.",)] * len(names))
    size = base_model.backbone.image_size
    # uint8, as the data pipeline delivers clips: both arms normalise on the device
    video = torch.randint(0, 256, (args.batch, args.frames, 3, size, size), dtype=torch.uint8,
                          device=device)
    label = torch.randint(0, len(names), (args.batch,), device=device)
    rows = torch.arange(len(names), device=device)

    # bare PyTorch
    bare = copy.deepcopy(base_model).to(device).train()
    if args.compile:  # model.compile, on each copy (build_model would compile the original)
        compile_image_blocks(bare)
    fused = device.type == "cuda"  # as the trainer
    bare_opt = build_optimizer(bare, bare.new_parameter_names(), tcfg, fused=fused)
    autocast = (lambda: torch.autocast(device.type, dtype=DTYPES[args.mixed_precision])) \
        if args.mixed_precision != "no" else nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=args.mixed_precision == "fp16")

    def bare_forward_backward() -> None:
        with autocast():
            loss = F.cross_entropy(bare(video, rows).float(), label)
        scaler.scale(loss).backward()

    def bare_step() -> None:
        bare_forward_backward()
        scaler.unscale_(bare_opt)
        torch.nn.utils.clip_grad_norm_(bare.parameters(), 1.0)
        scaler.step(bare_opt)
        scaler.update()
        bare_opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        bare_forward_backward()
    flops = counter.get_total_flops()
    bare_opt.zero_grad(set_to_none=True)

    # vlcofit
    ours = copy.deepcopy(base_model)
    if args.compile:
        compile_image_blocks(ours)
    opt = build_optimizer(ours, ours.new_parameter_names(), tcfg, fused=fused)
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
        bare_t += _time(bare_step, args.steps // 3, device)
        our_t += _time(our_step, args.steps // 3, device)
    b, o = statistics.median(bare_t), statistics.median(our_t)

    peak_mem = None
    if device.type == "cuda":  # vlcofit's loop alone: the bare model and its state freed first
        del bare, bare_opt
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        _time(our_step, 3, device, warmup=0)
        peak_mem = torch.cuda.max_memory_allocated(device) / 2**30
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            _time(our_step, 3, device, warmup=0)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=60))

    peak = peak_tflops(device, args.mixed_precision)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} threads"
    compiled = " (compiled)" if args.compile else ""
    print(f"model {args.backbone}:{args.model}{compiled}, batch {args.batch} x {args.frames} "
          f"frames x {size}px, precision {args.mixed_precision}, device {dev_name}, "
          f"{len(bare_t)} timed steps each (median)")
    print(f"model FLOPs per step (forward + backward): {flops / 1e12:.3f} TFLOP"
          + (f"; MFU against a dense peak of {peak} TFLOP/s" if peak else ""))
    print(f"{'loop':<14} {'ms/step':>9} {'clips/s':>9} {'TFLOP/s':>9} {'MFU':>7} {'ratio':>7}")
    for name, sec in (("bare PyTorch", b), ("vlcofit", o)):
        achieved = flops / sec / 1e12
        mfu = f"{100 * achieved / peak:6.1f}%" if peak else f"{'-':>7}"
        print(f"{name:<14} {1000 * sec:9.1f} {args.batch / sec:9.1f} {achieved:9.2f} {mfu} "
              f"{sec / b:7.3f}")
    if peak_mem is not None:
        print(f"peak GPU memory, vlcofit loop alone: {peak_mem:.2f} GiB")
    if not args.no_l2sp:
        l2sp_arms(args, base_model, tcfg, accelerator, video, label)
    if args.text_classes:
        text_tower_arms(args, mcfg, tcfg, accelerator, video, label)


def l2sp_arms(args, base_model, tcfg: TrainConfig, accelerator, video: torch.Tensor,
              label: torch.Tensor) -> None:
    """vlcofit's step with L2-SP off / on (every backbone tensor counted as transferred);
    median step times of interleaved rounds."""
    device = accelerator.device
    rows = torch.arange(len(base_model.class_names), device=device)
    batch = {"video": video, "label": label, "bad": []}
    batches = iter(lambda: batch, None)
    arms = {}
    for arm, alpha in (("L2-SP off", 0.0), ("L2-SP on", 1e-4)):
        model = copy.deepcopy(base_model)
        model.mark_loaded(n for n, _ in model.named_parameters() if n.startswith("backbone."))
        cfg = dataclasses.replace(tcfg, l2sp=alpha)
        opt = build_optimizer(model, model.new_parameter_names(), cfg)
        model, opt = accelerator.prepare(model, opt)
        kept = attach_l2sp(opt)
        model.train()
        arms[arm] = (kept, lambda m=model, o=opt, c=cfg: _optimizer_step(
            accelerator, m, o, batches, rows, TASKS["classification"], c, lambda paths: None))
    times = {arm: [] for arm in arms}
    for _ in range(3):
        for arm, (_, step) in arms.items():
            times[arm] += _time(step, max(1, args.steps // 3), device)
    base = statistics.median(times["L2-SP off"])
    print(f"\nL2-SP, vlcofit loop, {len(times['L2-SP off'])} timed steps each (median)")
    print(f"{'arm':<14} {'w0 tensors':>10} {'ms/step':>9} {'ratio':>7}")
    for arm, (kept, _) in arms.items():
        sec = statistics.median(times[arm])
        print(f"{arm:<14} {kept:10d} {1000 * sec:9.1f} {sec / base:7.3f}")


def text_tower_arms(args, mcfg: ModelConfig, tcfg: TrainConfig, accelerator, video: torch.Tensor,
                    label: torch.Tensor) -> None:
    """vlcofit's step: text tower frozen vs trained (one template per class per step, or the
    old full label space x template ensemble per step); median step times, interleaved."""
    device = accelerator.device
    templates = read_templates("clip_kinetics")
    names = [f"class {i}" for i in range(args.text_classes)]
    rows = torch.arange(len(names), device=device)
    batch = {"video": video, "label": label, "bad": []}
    batches = iter(lambda: batch, None)
    arms = {}
    for arm, train_text in (("frozen text (cached ensemble)", False),
                            ("trained text, 1 template/class", True),
                            ("trained text, full ensemble", True)):
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(mcfg, train_text=train_text), names,
                            [templates] * len(names))
        if arm.endswith("full ensemble"):  # the old path: every row x every template, each step
            model._encode_sampled = lambda r, m=model: m._encode_label_space()[r]
        opt = build_optimizer(model, model.new_parameter_names(), tcfg)
        model, opt = accelerator.prepare(model, opt)
        model.train()
        counted = _count_text_sequences(accelerator.unwrap_model(model))
        arms[arm] = (counted, lambda m=model, o=opt: _optimizer_step(
            accelerator, m, o, batches, rows, TASKS["classification"], tcfg, lambda paths: None))
    times = {arm: [] for arm in arms}
    for _ in range(3):  # interleaved rounds, as above
        for arm, (_, step) in arms.items():
            times[arm] += _time(step, max(1, args.text_steps // 3), device, warmup=1)
    base = statistics.median(times[next(iter(arms))])
    print(f"\ntext tower: {len(names)} classes x {len(templates)} templates, vlcofit loop, "
          f"{len(times[next(iter(arms))])} timed steps each (median)")
    print(f"{'arm':<32} {'seqs/step':>9} {'ms/step':>9} {'ratio':>7}")
    for arm, (counted, step) in arms.items():
        counted.clear()
        step()
        sec = statistics.median(times[arm])
        print(f"{arm:<32} {sum(counted):9d} {1000 * sec:9.1f} {sec / base:7.3f}")


def _count_text_sequences(model) -> list[int]:
    """Wrap the backbone's encode_text to record the batch size of each call."""
    counted, encode = [], model.backbone.encode_text
    model.backbone.encode_text = lambda tokens: counted.append(len(tokens)) or encode(tokens)
    return counted


if __name__ == "__main__":
    main()
