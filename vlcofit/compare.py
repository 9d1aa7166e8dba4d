"""Co-finetuning vs the transfer-learning baseline, from one config: both schedules (same total
steps, same per-dataset step counts), several seeds, mean ± std as a table, JSON and a plot."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .config import load_experiment
from .distributed import process_state
from .stats import STD, mean_std
from .tasks import plotted_metrics
from .train import train

logger = logging.getLogger(__name__)

SCHEDULES = ("cofinetune", "sequential")


def _finished(run: Path) -> dict[str, float] | None:
    """Final metrics of a run that already completed (so an interrupted comparison resumes)."""
    info = run / "run.json"
    if info.is_file():
        data = json.loads(info.read_text())
        if data.get("end_time") and data.get("final_metrics"):
            return data["final_metrics"]
    return None


def compare(config: str, overrides: list[str], seeds: list[int], out: Path) -> dict:
    """Train every (schedule, seed) under ``out`` and summarise the final metrics."""
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {s: [] for s in SCHEDULES}
    for schedule in SCHEDULES:
        for seed in seeds:
            run = out / f"{schedule}_seed{seed}"
            cfg = load_experiment(config, [*overrides, f"train.schedule={schedule}",
                                           f"train.seed={seed}", f"output_dir={run}"])
            metrics = _finished(run)
            if metrics is None:
                if (run / "checkpoints" / "latest").is_file():
                    metrics = train(cfg, resume="latest")
                else:
                    metrics = train(cfg)
            results[schedule].append(metrics)
    counts = ("/count", "/unreadable", "/keyframes")
    keys = [k for k in results[SCHEDULES[0]][0] if not k.endswith(counts)]
    summary = {s: {k: mean_std([m.get(k, float("nan")) for m in results[s]]) for k in keys}
               for s in SCHEDULES}
    report = {"config": str(config), "overrides": overrides, "seeds": seeds, "std": STD,
              "runs": results,
              "summary": {s: {k: {"mean": m, "std": sd} for k, (m, sd) in v.items()}
                          for s, v in summary.items()}}
    if process_state().is_main_process:  # every process trained; one writes the report
        (out / "comparison.json").write_text(json.dumps(report, indent=2))
        (out / "comparison.md").write_text(format_table(summary, keys, len(seeds)))
        plot_comparison(summary, [k for k in plotted_metrics(cfg) if k in keys] or keys,
                        out / "comparison.png")
    return report


def format_table(summary: dict, keys: list[str], n: int) -> str:
    lines = [f"| metric (mean ± {STD} over {n} seeds) | " + " | ".join(SCHEDULES) + " |",
             "| --- | " + " | ".join("---" for _ in SCHEDULES) + " |"]
    for k in keys:
        cells = [f"{summary[s][k][0]:.2f} ± {summary[s][k][1]:.2f}" for s in SCHEDULES]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(summary: dict, shown: list[str], path: Path) -> None:
    """Bars of each schedule's mean ± std for the metrics ``shown``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(shown)), 3.8))
    width = 0.38
    for j, s in enumerate(SCHEDULES):
        xs = [i + (j - 0.5) * width for i in range(len(shown))]
        ax.bar(xs, [summary[s][k][0] for k in shown], width, yerr=[summary[s][k][1] for k in shown],
               capsize=3, label=s)
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels(shown, rotation=20, ha="right")
    ax.set_ylabel("%")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
