"""The input pipeline across epoch boundaries: does training stall while the loader refills?

    python bench/epoch_boundary.py [--epochs 3] [--workers 2] [--batch 4] [--repeats 2]

Trains ``vlcofit train`` on the built-in demo videos (generated mp4s, decoded by the run's
workers) for ``--epochs`` epochs with a step logged every step, and reads each step's wall time
from ``metrics.jsonl``. Printed per repeat: the median step time, the slowest 10-step window's
rate relative to the median window's (target >= 0.9: no stall at an epoch boundary), and where
that window lies relative to the epoch boundaries. The first epoch's first 10 steps (worker
start-up, allocator warm-up) are left out.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WINDOW = 10


def step_times(run: Path, batch: int) -> list[float]:
    """Seconds per step (one process), from each step's logged rate: the wall time since the
    previous log, data waits included."""
    from vlcofit.run.records import read_metrics
    rows = read_metrics(run / "metrics.jsonl")
    return [batch / r["train/clips_per_s"] for r in rows if "train/clips_per_s" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    from vlcofit.experiment import load_experiment
    from vlcofit.data.synthetic.demo import make_demo_dataset
    from vlcofit.train.loop import train

    root = Path(tempfile.mkdtemp(prefix="vlcofit_epochs_"))
    data = make_demo_dataset(root / "data", per_class_train=8, per_class_val=1)  # 64 clips
    per_epoch = 64 // args.batch
    print(f"| repeat | steps/epoch | median step ms | worst {WINDOW}-step window / median | "
          f"worst window at steps | epoch boundaries |\n| --- | --- | --- | --- | --- | --- |")
    for r in range(args.repeats):
        run = root / f"run{r}"
        cfg = load_experiment("demo", [
            f"datasets.demo.root={data}", f"output_dir={run}", f"train.batch_size={args.batch}",
            f"train.steps={per_epoch * args.epochs}", f"train.num_workers={args.workers}",
            "train.log_every=1", "train.eval_every=0", f"train.save_every={10**6}",
            "train.warmup_steps=1"])
        train(cfg)
        times = step_times(run, args.batch)[WINDOW:]  # start-up left out
        windows = [sum(times[i:i + WINDOW]) for i in range(len(times) - WINDOW + 1)]
        med = statistics.median(windows)
        worst = max(range(len(windows)), key=windows.__getitem__)
        first = worst + WINDOW + 1  # 1-based step numbers
        bounds = ", ".join(str(per_epoch * e) for e in range(1, args.epochs))
        print(f"| {r} | {per_epoch} | {1000 * statistics.median(times):.1f} | "
              f"**{med / windows[worst]:.2f}** | {first}-{first + WINDOW - 1} | {bounds} |",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
