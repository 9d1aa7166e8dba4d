"""A sweep's learning curves, few-shot stage and plots (:mod:`vlcofit.protocols.sweep`).

Learning curve (``sweep.curve``: an evaluation metric such as ``compositional/top1``): the
metric at every evaluation a run logged (``train.eval_every``, and the final one) in its
``metrics.jsonl``; per setting the mean ± sample std over seeds at each step, and (with
``sweep.reach``) the first step at which the seed-mean curve reaches that value — how fast a
setting learns, Text4Vis's "trains faster" made measurable. Plotted as ``sweep_curve.png``.

Few-shot (``sweep.few_shot``: a dataset): after each run, :func:`vlcofit.protocols.fewshot.few_shot`
fine-tunes the run (``model.init_from``, under the setting's own overrides, so the model is
the setting's, then ``sweep.few_shot_set``) on K videos per class of that dataset, for every
K of ``sweep.few_shot_k``, with the run's seed as the split seed (so settings are compared on
the same videos). Keys ``few_shot:<dataset>:k<K>/top1``; plotted as ``sweep_fewshot.png``.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..experiment import load_experiment
from ..run.records import read_metrics
from ..utils.plotting import pyplot, shots_axis
from ..utils.stats import mean_std
from .fewshot import few_shot


def eval_curve(run: Path, metric: str) -> dict[int, float]:
    """``metric`` at each evaluation step of run folder ``run`` (its metrics.jsonl)."""
    path = run / "metrics.jsonl"
    rows = read_metrics(path) if path.is_file() else []
    return {int(r["step"]): float(r[metric]) for r in rows if metric in r}


def steps_to(steps: list[int], values: list[float], level: float) -> int | None:
    """The first step whose value reaches ``level``; None: never within the run."""
    return next((s for s, v in zip(steps, values) if v >= level), None)


def curve_summary(runs: list[Path], metric: str, reach: float | None) -> dict:
    """Mean ± std over ``runs`` at the steps every run evaluated; steps to ``reach``."""
    curves = [eval_curve(r, metric) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves and all(curves) else []
    stats = [mean_std([c[s] for c in curves]) for s in steps]
    out = {"steps": steps, "mean": [m for m, _ in stats], "std": [s for _, s in stats]}
    if reach is not None:
        out["steps_to_reach"] = steps_to(steps, out["mean"], reach)
    return out


def _figure():
    plt = pyplot()
    return plt.subplots(figsize=(6, 4))


def _save(fig, ax, path: Path) -> Path:
    plt = pyplot()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(curves: dict[str, dict], metric: str, reach: float | None, path: Path) -> Path:
    """One line per setting: the metric against training steps, ± std bands; ``reach`` dashed."""
    fig, ax = _figure()
    for i, (setting, c) in enumerate(curves.items()):
        if not c["steps"]:
            continue
        lo = [m - s for m, s in zip(c["mean"], c["std"])]
        hi = [m + s for m, s in zip(c["mean"], c["std"])]
        ax.plot(c["steps"], c["mean"], marker="o", ms=3, color=f"C{i % 10}", label=setting)
        ax.fill_between(c["steps"], lo, hi, color=f"C{i % 10}", alpha=0.15)
    if reach is not None:
        ax.axhline(reach, color="grey", ls="--", lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    return _save(fig, ax, path)


def few_shot_transfer(config: str, overrides: list[str], arm: tuple[str, ...], spec,
                      run: Path, seed: int) -> dict[str, float]:
    """The few-shot stage of one run (module docstring)."""

    name = spec.few_shot
    cfg = load_experiment(config, [*overrides, *arm, *spec.few_shot_set,
                                   f"train.datasets=[{name}]", f"eval.datasets=[{name}]",
                                   f"model.init_from={run.resolve()}", f"train.seed={seed}"])
    result = few_shot(cfg, spec.few_shot_k, [seed], run / "few_shot")
    return {f"few_shot:{name}:k{r['k']}/top1": r["finetune"] for r in result["runs"]}


def few_shot_keys(report: dict) -> list[tuple[int, str]]:
    """(K, key) of the few-shot metrics in a sweep report, by K."""
    keys = {k for per in report["summary"].values() for k in per if k.startswith("few_shot:")}
    return sorted((int(k.rsplit(":k", 1)[1].split("/")[0]), k) for k in keys)


def plot_few_shot(report: dict, path: Path) -> Path:
    """Accuracy against K (log scale), one line per setting, ± std bars; a dashed line at a
    setting's zero-shot accuracy (its first ``sweep.zero_shot`` top-1), where it has one."""
    keys = few_shot_keys(report)
    fig, ax = _figure()
    for i, (setting, per) in enumerate(report["summary"].items()):
        pts = [(k, per[key]) for k, key in keys if key in per and not math.isnan(per[key]["mean"])]
        if pts:
            ax.errorbar([k for k, _ in pts], [p["mean"] for _, p in pts],
                        yerr=[p["std"] for _, p in pts], marker="o", capsize=3,
                        color=f"C{i % 10}", label=setting)
        zero = next((per[k] for k in per if k.startswith("zero_shot:") and k.endswith("/top1")
                     and not math.isnan(per[k]["mean"])), None)
        if zero is not None:  # where K = 0 stands: the run's zero-shot (sweep.zero_shot)
            ax.axhline(zero["mean"], color=f"C{i % 10}", ls="--", lw=1, alpha=0.7)
    shots_axis(ax, [k for k, _ in keys])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title((keys[0][1].split(":")[1] + ": " if keys else "") + "few-shot (dashed: zero-shot)")
    return _save(fig, ax, path)


def plot_sweep(report: dict, path: Path) -> Path:
    """One panel per shown metric: each setting's mean ± std (matplotlib, Agg)."""
    plt = pyplot()

    shown, settings = report["shown"], list(report["summary"])
    fig, axes = plt.subplots(1, len(shown), figsize=(max(4.0, 0.6 * len(settings) + 1.5)
                                                     * len(shown), 3.8), squeeze=False)
    for ax, key in zip(axes[0], shown):
        per = [report["summary"][s].get(key, {"mean": float("nan"), "std": 0.0}) for s in settings]
        ax.bar(range(len(settings)), [p["mean"] for p in per], yerr=[p["std"] for p in per],
               capsize=3, color=[f"C{i % 10}" for i in range(len(settings))])
        ax.set_xticks(range(len(settings)))
        ax.set_xticklabels(settings, rotation=30, ha="right", fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
