"""The whole input pipeline vs synthetic tensors: do decoding workers keep the device fed?

    python bench/pipeline.py [--model tiny] [--batch 8] [--size 64] [--clips 128]
        [--decoders pyav] [--workers 2] [--steps 40] [--mixed-precision no] [--repeats 2]

Arms, interleaved per repeat: the synthetic-tensor step of the same model, batch and precision
(``bench/train_step.py``'s vlcofit loop: uint8 clips already on the device, text tower frozen)
and, per decoder x worker count, ``vlcofit train`` on generated h264 mp4s (the demo's classes,
``--size`` px, 16 frames of which the card samples 8; ``--clips`` training clips, several
epochs when ``--steps`` asks for more). The pipeline's rate is the median clips/s of its
5-step log windows after the first 10 steps (worker start-up); printed: each arm's median
over repeats and its ratio to the synthetic rate of the same repeat (median of ratios,
min-max). Target on a GPU machine:
>= 0.9 for ViT-B/16 x 8 frames, with the decoder and worker count that reach it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
SKIP = 10  # steps left out: worker start-up, allocator warm-up
LOG = 5  # steps per logged rate: a log reads the loss back (a host sync) once per LOG steps


def _run(cmd: list[str]) -> str:
    """stdout of ``cmd``; a failure exits with the tail of its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def synthetic_rate(args) -> float:
    """clips/s of bench/train_step.py's vlcofit loop (its 'vlcofit' table row)."""
    out = _run([sys.executable, str(HERE / "train_step.py"), "--model", args.model, "--batch",
                str(args.batch), "--frames", "8", "--mixed-precision", args.mixed_precision,
                "--steps", str(args.steps), "--text-classes", "0", "--no-l2sp"])
    row = next(line for line in out.splitlines() if line.startswith("vlcofit "))
    return float(row.split()[2])


def pipeline_rate(args, data: Path, run: Path, decoder: str, workers: int) -> float:
    """Median clips/s of the 5-step log windows of `vlcofit train` reading the mp4s, after
    the first SKIP steps."""
    from vlcofit.run.records import read_metrics
    sets = [f"datasets.demo.root={data}", f"datasets.demo.decoder={decoder}",
            f"output_dir={run}", f"model.name={args.model}", "model.train_text=false",
            f"train.batch_size={args.batch}", f"train.steps={args.steps + SKIP}",
            f"train.num_workers={workers}", f"train.mixed_precision={args.mixed_precision}",
            f"train.log_every={LOG}", "train.eval_every=0", f"train.save_every={10**6}",
            "train.warmup_steps=1"]
    shutil.rmtree(run, ignore_errors=True)  # a kept --data folder holds earlier runs
    cmd = [sys.executable, "-m", "vlcofit", "train", "demo"] + [a for s in sets for a in ("--set", s)]
    _run(cmd)
    rates = [r["train/clips_per_s"] for r in read_metrics(run / "metrics.jsonl")
             if "train/clips_per_s" in r]
    return statistics.median(rates[SKIP // LOG:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64, help="generated video side (px)")
    p.add_argument("--clips", type=int, default=128, help="generated training clips")
    p.add_argument("--decoders", default="pyav")
    p.add_argument("--workers", default="2")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--data", help="where to generate the videos (kept; default: a temp folder)")
    args = p.parse_args()
    from vlcofit.data.synthetic.clips import DEMO_CLASSES
    from vlcofit.data.synthetic.demo import make_demo_dataset

    root = Path(args.data or tempfile.mkdtemp(prefix="vlcofit_pipeline_"))
    per_class = max(1, args.clips // len(DEMO_CLASSES))
    data = make_demo_dataset(root / "data", per_class_train=per_class, per_class_val=1,
                             size=args.size)
    arms = [(d, int(w)) for d in args.decoders.split(",") for w in args.workers.split(",")]
    rates: dict = {"synthetic": []}
    ratios: dict = {arm: [] for arm in arms}
    for r in range(args.repeats):
        base = synthetic_rate(args)
        rates["synthetic"].append(base)
        for decoder, workers in arms:
            got = pipeline_rate(args, data, root / f"run_{decoder}_{workers}_{r}", decoder, workers)
            rates.setdefault((decoder, workers), []).append(got)
            ratios[decoder, workers].append(got / base)
        print(f"repeat {r + 1}/{args.repeats}: synthetic {base:.1f} clips/s", flush=True)
    print(f"\nmodel {args.model}, batch {args.batch} x 8 frames, videos {args.size} px "
          f"({per_class * len(DEMO_CLASSES)} clips), precision {args.mixed_precision}, "
          f"{args.steps} steps per arm, {args.repeats} interleaved repeats (median)")
    print("| arm | clips/s | ratio to synthetic (min-max) |\n| --- | --- | --- |")
    print(f"| synthetic tensors | {statistics.median(rates['synthetic']):.1f} | 1.000 |")
    for decoder, workers in arms:
        rs = ratios[decoder, workers]
        print(f"| {decoder}, {workers} workers | {statistics.median(rates[decoder, workers]):.1f} | "
              f"**{statistics.median(rs):.3f}** ({min(rs):.3f}-{max(rs):.3f}) |")


if __name__ == "__main__":
    sys.exit(main())
