"""Few-shot protocols: K videos per class, fine-tuning or a frozen-encoder linear probe.

K-shot split: for every class (in prompt-file order) K of its training videos, drawn with one
``numpy.random.default_rng([seed, K])`` generator (``choice`` without replacement per class),
the chosen videos sorted in training-file order. It is written as a ``path,label`` CSV
(absolute paths, class names) to ``<out>/splits/k{K}_seed{S}.csv``. Every process computes the
split from the same records; the main process writes the file, the others wait and check that
the file holds what they computed, so all processes of a distributed run train on one split.

Fine-tuning: each (K, seed) trains :func:`vlcofit.train.loop.train` on the config with the training
dataset replaced by the K-shot file (an extra card ``<name>_kshot``) and evaluated on the
config's evaluation datasets, in ``<out>/k{K}_seed{S}``, from the same starting weights (same
model config and ``train.seed``). A finished run with the same config is reused, an interrupted
one resumed.

Linear probe (``probe=True``): the frozen encoder's embeddings (evaluation view, averaged over
views, L2-normalised) of the training and evaluation videos are extracted once (feature cache in
``<out>/features``); per (K, seed) a multinomial logistic regression is fitted with L-BFGS on
the K-shot rows and scored top-1 on the evaluation split. Its L2 weight decay is chosen from
``PROBE_WEIGHT_DECAYS`` by 2-fold cross-validation on the K-shot set (folds split within each
class) when K >= 2, else fixed to ``PROBE_DEFAULT_DECAY``.

Summary: mean ± sample std (ddof=1, :mod:`vlcofit.utils.stats`) over seeds per K, as JSON (``fewshot.json``) and a
plot (``fewshot.png``).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config.schema import ExperimentConfig
from ..data.annotations import VideoRecord, granular_records
from ..errors import InputError, at
from ..eval.cache import FeatureCache, cached_features, model_fingerprint
from ..eval.probe import linear_probe
from ..experiment import (build_dataset, build_labels, build_video_model, load_experiment,
                          read_card_classes)
from ..models.prepared import for_inference
from ..run import checkpoint
from ..run.model import load_run_config, load_run_model
from ..run.resume import training_changes
from ..tasks import task_of
from ..text.prompts import ClassList
from ..train.accelerator import make_accelerator
from ..train.loop import train
from ..utils.distributed import process_state
from ..utils.files import read_json, read_text
from ..utils.plotting import pyplot, shots_axis
from ..utils.progress import RunProgress
from ..utils.stats import STD, mean_std

logger = logging.getLogger(__name__)

_METHOD_NAMES = {"finetune": "fine-tuning", "probe": "linear probe (frozen encoder)"}


# --------------------------------------------------------------------------- K-shot splits

def kshot_indices(labels: Sequence[int], classes: ClassList, k: int, seed: int,
                  source: str = "the training split") -> list[int]:
    """Indices (into ``labels``, sorted) of K videos per class, drawn with
    ``default_rng([seed, k])``. A class with fewer than K videos is an InputError naming it."""
    if k < 1:
        raise InputError(f"--shots: K must be >= 1, got {k}")
    by_class: list[list[int]] = [[] for _ in classes.names]
    for i, label in enumerate(labels):
        by_class[int(label)].append(i)
    counts = [len(v) for v in by_class]
    short = [c for c, n in enumerate(counts) if n < k]
    if short:
        smallest = min(short, key=lambda c: counts[c])
        others = f" ({len(short) - 1} other classes too)" if len(short) > 1 else ""
        raise InputError(f"{source}: class {classes.names[smallest]!r} has {counts[smallest]} "
                         f"videos, fewer than K={k}{others}")
    rng = np.random.default_rng([seed, k])
    chosen = [members[j] for members in by_class
              for j in rng.choice(len(members), size=k, replace=False)]
    return sorted(int(i) for i in chosen)


def split_text(records: Sequence[VideoRecord], classes: ClassList) -> str:
    """The K-shot CSV: header ``path,label``, absolute paths, class names."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    for r in records:
        writer.writerow([os.path.abspath(r.path), classes.names[r.label]])
    return buf.getvalue()


def read_split(path: Path, records: Sequence[VideoRecord]) -> list[int]:
    """Indices into ``records`` of the videos a ``path,label`` split file names (paths absolute
    or relative to the file's folder). A video not among ``records`` is an InputError."""
    index = {os.path.abspath(r.path): i for i, r in enumerate(records)}
    lines = read_text(path, "split file").splitlines()
    chosen = []
    for number, row in enumerate(csv.reader(lines), start=1):
        if not row or (number == 1 and [c.strip().lower() for c in row] == ["path", "label"]):
            continue
        video = os.path.abspath(path.parent / row[0].strip())
        if video not in index:
            raise InputError(f"{at(path, number)}: video {row[0].strip()!r} is not in the "
                             f"dataset's training split ({len(records)} videos)")
        chosen.append(index[video])
    if not chosen:
        raise InputError(f"{path}: split file names no videos")
    return sorted(chosen)


def prepare_split(out_dir: Path, records: Sequence[VideoRecord], classes: ClassList, k: int,
                  seed: int, source: str = "the training split",
                  given: Path | None = None) -> tuple[Path, list[int]]:
    """Write ``<out_dir>/splits/k{k}_seed{seed}.csv`` (main process) and check it on the others.

    ``given``: a folder of ready-made split files to use instead of drawing (validated).
    Returns the file and the chosen record indices. Collective under ``accelerate launch``.
    """
    state = process_state()
    name = f"k{k}_seed{seed}.csv"
    if given is not None:
        chosen = read_split(given / name, records)
    else:
        chosen = kshot_indices([r.label for r in records], classes, k, seed, source)
    text = split_text([records[i] for i in chosen], classes)
    path = out_dir / "splits" / name
    if state.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    state.wait_for_everyone()
    if path.read_text() != text:
        raise RuntimeError(f"{path}: process {state.process_index} computed another K-shot split "
                           "than the main process wrote")
    return path, chosen


def kshot_config(cfg: ExperimentConfig, split: Path, run_dir: Path) -> ExperimentConfig:
    """``cfg`` training on the K-shot ``split`` (card ``<name>_kshot``), evaluating as before."""
    name = cfg.train.datasets[0]
    card = dataclasses.replace(cfg.datasets[name], name=f"{name}_kshot", format="csv",
                               root=str(split.parent), train=split.name, val=None, test=None,
                               num_classes=None)
    datasets = {**cfg.datasets, card.name: card}
    return dataclasses.replace(
        cfg, datasets=datasets, output_dir=str(run_dir),
        train=dataclasses.replace(cfg.train, datasets=(card.name,)),
        eval=dataclasses.replace(cfg.eval, datasets=cfg.eval_datasets))


def _train_or_reuse(cfg: ExperimentConfig) -> dict[str, float]:
    """Train ``cfg``; reuse a finished run with the same config (up to what a resume may
    change: logging, evaluation, sweep settings), resume an interrupted one."""

    run = Path(cfg.output_dir)
    saved = run / "config.yaml"
    same = saved.is_file() and not training_changes(load_experiment(saved), cfg)
    if same and (run / "run.json").is_file():
        final = read_json(run / "run.json").get("final_metrics")
        if final:
            logger.info("%s: finished run with the same config; reusing its metrics", run)
            return final
    has_checkpoints = (run / "checkpoints" / "latest").is_file()
    if has_checkpoints and not same:
        raise InputError(f"{run}: holds a run with another config (earlier few-shot settings?); "
                         "remove it or choose another --out")
    return train(cfg, resume="latest" if has_checkpoints else None)


# --------------------------------------------------------------------------- linear probe


def probe_features(cfg: ExperimentConfig, name: str, out: Path, train_rows: list[int],
                   weights: str | None = None
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Frozen-encoder features of dataset ``name``: the training videos ``train_rows`` (record
    indices; only these are decoded) and the evaluation split, each ``{"x": [N, E] normalised,
    "label": [N], "valid": [N]}`` (training: ``"rows"`` [N] too). Cached in ``<out>/features``."""

    accelerator = make_accelerator(cfg, None)
    labels = build_labels(cfg)
    if weights:  # the run's own model, whatever heads it has: only its encoder is used
        model = load_run_model(weights).model
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed)  # the same initial weights as the fine-tuning runs
            model = build_video_model(cfg, labels)
    model = for_inference(accelerator, model)
    base = accelerator.unwrap_model(model)
    model_cfg = load_run_config(checkpoint.resolve(weights)).model if weights else cfg.model
    store, model_id = FeatureCache(out / "features"), model_fingerprint(base, model_cfg)
    card, out_feats = cfg.datasets[name], []
    for split in ("train", cfg.eval.split):
        ds = build_dataset(card, split, labels.classes[name], base.backbone, train=False,
                           seed=cfg.train.seed)
        if split == "train":
            ds.records = [ds.records[i] for i in train_rows]
        feats, _ = cached_features(accelerator, model, ds, cfg.eval.batch_size,
                                   cfg.train.num_workers, store, model_id, desc=f"probe {split}",
                                   stall_timeout=cfg.data.stall_timeout)
        x = F.normalize(feats["emb"].mean(dim=1), dim=-1)
        out_feats.append({"x": x, "label": feats["label"], "valid": feats["valid"]})
    out_feats[0]["rows"] = torch.tensor(train_rows, dtype=torch.long)
    return out_feats[0], out_feats[1]


# --------------------------------------------------------------------------- the protocol

def summarize(runs: list[dict], key: str) -> dict[str, dict[str, float]]:
    """Per K: mean, sample std (ddof=1) and n of ``run[key]`` over seeds (runs lacking it
    skipped)."""
    by_k: dict[int, list[float]] = {}
    for run in runs:
        if run.get(key) is not None:
            by_k.setdefault(run["k"], []).append(float(run[key]))
    return {str(k): dict(zip(("mean", "std"), mean_std(v)), n=len(v))
            for k, v in sorted(by_k.items())}


def plot_fewshot(summary: dict[str, dict[str, dict[str, float]]], path: Path, title: str) -> Path:
    """Accuracy vs K with ±std error bars, one line per method (matplotlib, Agg)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, per_k in summary.items():
        if not per_k:
            continue
        ks = [int(k) for k in per_k]
        ax.errorbar(ks, [per_k[str(k)]["mean"] for k in ks], yerr=[per_k[str(k)]["std"] for k in ks],
                    marker="o", capsize=3, label=_METHOD_NAMES.get(method, method))
    shots_axis(ax, sorted({int(k) for per_k in summary.values() for k in per_k}))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def few_shot(cfg: ExperimentConfig, shots: Sequence[int], seeds: Sequence[int], out: Path,
             finetune: bool = True, probe: bool = False, probe_weights: str | None = None,
             splits_from: Path | None = None, splits_only: bool = False) -> dict:
    """The few-shot protocol (module docstring) for ``cfg``'s training dataset.

    Returns (and writes to ``<out>/fewshot.json``, main process) ``{"runs": [...], "summary":
    {"finetune": {K: {mean, std, n}}, "probe": ...}, ...}``; the metric is the evaluation
    dataset's top-1 (the first evaluation dataset's when there are several).
    """
    if len(cfg.train.datasets) != 1:
        raise InputError("few-shot: train.datasets must name exactly one dataset")
    name = cfg.train.datasets[0]
    card = cfg.datasets[name]
    if card.granularity != "fine":
        raise InputError(f"few-shot: dataset {name} has granularity: {card.granularity}; K-shot "
                         "splits are drawn per fine class (set granularity: fine)")
    if not task_of(card).single_label:
        raise InputError(f"few-shot: dataset {name} is a {card.task} dataset; K-shot splits are "
                         "drawn per class of a single-label (classification) dataset")
    process_state(cfg.train.collective_timeout)  # the process group, with the run's timeout
    classes = read_card_classes(card)
    records = granular_records(card, "train", classes)
    metric = f"{cfg.eval_datasets[0]}/top1"
    out.mkdir(parents=True, exist_ok=True)
    source = f"dataset {name} ({card.split_file('train')})"
    runs, chosen = [], {}
    for k in shots:
        for seed in seeds:
            split, chosen[k, seed] = prepare_split(out, records, classes, k, seed, source,
                                                   splits_from)
            runs.append({"k": k, "seed": seed, "split": str(split), "videos": len(chosen[k, seed])})
    feats = None
    if probe and not splits_only:
        union = sorted({i for rows in chosen.values() for i in rows})
        feats = probe_features(cfg, name, out, union, probe_weights)
    shown = len(runs) if finetune and not splits_only else 0  # "run i of N": fine-tuning runs
    with RunProgress(shown, process_state().is_main_process) as progress:
        for run in runs if not splits_only else []:
            k, seed = run["k"], run["seed"]
            if finetune:
                progress.start(f"K={k}, seed {seed}")
                run_dir = out / f"k{k}_seed{seed}"
                metrics = _train_or_reuse(kshot_config(cfg, Path(run["split"]), run_dir))
                run.update(finetune=metrics.get(metric), metrics=metrics, run_dir=str(run_dir))
            if feats is not None:
                run["probe_detail"] = linear_probe(*feats, chosen[k, seed], len(classes), seed)
                run["probe"] = run["probe_detail"]["top1"]
    result = {"dataset": name, "metric": metric, "probe_metric": f"{name}/top1",
              "shots": list(shots), "seeds": list(seeds), "std": f"{STD} over seeds",
              "runs": runs, "summary": {m: summarize(runs, m) for m in ("finetune", "probe")
                                        if any(m in r for r in runs)}}
    if process_state().is_main_process:
        if result["summary"]:
            result["plot"] = str(plot_fewshot(result["summary"], out / "fewshot.png",
                                              f"{name}: few-shot ({metric})"))
        (out / "fewshot.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict) -> str:
    """Mean ± std per K of each method, as a text table."""
    methods = list(result["summary"])
    lines = [f"few-shot: {result['dataset']} ({result['metric']}, {len(result['seeds'])} seeds, "
             f"± = {STD})",
             "K     " + "  ".join(f"{m:>16}" for m in methods)]
    for k in result["shots"]:
        cells = []
        for m in methods:
            s = result["summary"][m].get(str(k))
            cells.append(f"{s['mean']:7.2f} ± {s['std']:6.2f}" if s else f"{'-':>16}")
        lines.append(f"{k:<6}" + "  ".join(cells))
    return "\n".join(lines)
