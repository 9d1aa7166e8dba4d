"""What fork-safe loader workers cost at start-up: the time to a loader's first batch and to a
full pass, workers started by ``fork`` (the old default) vs vlcofit's fork server.

    python bench/worker_start.py [--workers 2] [--repeats 5]

Each arm builds a fresh loader over the built-in demo videos (the evaluation dataset of the
demo config: 80 clips, 8 frames) in a fresh Python process, so every fork-server arm pays its
server's start as a new run does. The fork arm runs with a parent that has NOT decoded (with
PyAV 18 a fork after decoding deadlocks: that is why vlcofit no longer forks). The arms are
interleaved; printed: per repeat, seconds to the first batch and to the whole pass, and the
median of the per-repeat ratios (fork server / fork); and a second loader's first batch in the
same process (the fork server is running by then, as for a run's evaluation loaders).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ARM = r"""
import json, sys, time
if __name__ == "__main__":
    start = time.perf_counter()
    import torch
    from vlcofit.experiment import load_experiment
    from vlcofit.experiment import build_dataset, build_labels
    from vlcofit.data.loading import build_loader
    from vlcofit.models.backbones.factory import build_backbone
    data, method, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cfg = load_experiment("demo", [f"datasets.demo.root={data}"])
    labels = build_labels(cfg)
    backbone = build_backbone(cfg.model)
    ds = build_dataset(cfg.datasets["demo"], "val", labels.classes["demo"], backbone, False, 0)
    out = {}
    for name in ("", "second_"):  # a second loader in the same process (an evaluation's)
        loader = build_loader(ds, 8, False, workers)
        if method == "fork":
            loader.multiprocessing_context = "fork"
        ready = time.perf_counter()
        first = None
        for batch in loader:
            first = first or time.perf_counter()
        out.update({name + "first": first - ready, name + "pass": time.perf_counter() - ready})
        del loader
    print(json.dumps(out))
"""


def run_arm(script: Path, data: Path, method: str, workers: int) -> dict:
    out = subprocess.run([sys.executable, str(script), str(data), method, str(workers)],
                         capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    from vlcofit.data.synthetic.demo import make_demo_dataset

    root = Path(tempfile.mkdtemp(prefix="vlcofit_workers_"))
    data = make_demo_dataset(root / "data", per_class_train=1, per_class_val=10)
    script = root / "arm.py"
    script.write_text(ARM)
    print(f"| repeat | fork: first batch s | fork: pass s | fork server: first batch s | "
          f"fork server: pass s | ratio first | ratio pass | 2nd loader, first batch s: fork / "
          f"fork server |\n|---|---|---|---|---|---|---|---|")
    ratios_first, ratios_pass = [], []
    for r in range(args.repeats):
        order = ("fork", "forkserver") if r % 2 == 0 else ("forkserver", "fork")
        res = {m: run_arm(script, data, m, args.workers) for m in order}
        rf = res["forkserver"]["first"] / res["fork"]["first"]
        rp = res["forkserver"]["pass"] / res["fork"]["pass"]
        ratios_first.append(rf)
        ratios_pass.append(rp)
        print(f"| {r} | {res['fork']['first']:.2f} | {res['fork']['pass']:.2f} | "
              f"{res['forkserver']['first']:.2f} | {res['forkserver']['pass']:.2f} | "
              f"{rf:.2f} | {rp:.2f} | {res['fork']['second_first']:.2f} / "
              f"{res['forkserver']['second_first']:.2f} |")
    print(f"\nmedian ratio (fork server / fork), {args.workers} workers: first batch "
          f"{statistics.median(ratios_first):.2f} (range {min(ratios_first):.2f}-"
          f"{max(ratios_first):.2f}), whole pass {statistics.median(ratios_pass):.2f} "
          f"(range {min(ratios_pass):.2f}-{max(ratios_pass):.2f})")


if __name__ == "__main__":
    main()
