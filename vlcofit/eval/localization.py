"""Evaluation of AVA-style localisation: box scores -> official detections CSV -> frame-mAP.

Metrics (keys ``"<name>/..."``), APs in percent like accuracies elsewhere (the official
``get_ava_performance.py`` prints fractions; divide by 100 to compare):

- ``mAP``: official frame-mAP@0.5 IoU (vlcofit.metrics.ava) of the detections file written
  (computed in memory on boxes rounded as the file writes them, so it equals the official tool
  run on that file; the file is only written with ``out_dir``), under the card's
  ``localization.eval_protocol``: ``current`` (default, the latest official evaluator) or
  ``activitynet-2019`` (its revision with an exclusions file). The card's excluded keyframes
  and the unreadable ones are left out under both; with ``current``, which has no exclusions
  file, that equals running it on a ground-truth file without those keyframes;
- ``mAP_head`` / ``mAP_mid`` / ``mAP_tail``: mean AP over the evaluated classes (those with
  ground truth) whose training-instance count is >= thresholds[1] / in [thresholds[0],
  thresholds[1]) / < thresholds[0]; NaN for a group without an evaluated class, and for all
  three without ``train_counts``;
- ``unreadable``: keyframes whose clip could not be read. They are left out of the evaluation
  (like excluded keyframes, so their ground truth does not count as missed), as
  classification evaluation leaves unreadable videos out;
- ``keyframes``: keyframes evaluated.

Detections: per keyframe only the rows the official evaluator can keep are written: all rows
with a score >= the keyframe's 50th best (ties at the cut kept). The official top-50 heap ends
with the same rows whether or not the lower rows are in the file (a lower row is always the
heap's minimum and is evicted before any higher one), so the metric is unchanged while the
file shrinks several times on AVA val (several proposals x 60 classes per keyframe; tested).
One exception: rows of one keyframe with exactly equal scores. The official tool orders them
by its heap's internal layout, which depends on every row pushed, so such ties may be broken
differently than in the uncut file (as any reordering of the file would). Scores are float64
sigmoids, so ties need equal logits (e.g. duplicate boxes). Only label-map classes are
written (the evaluator drops other ids before its cap).
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from ..data.ava_formats import (AvaTable, make_key, read_exclusions, read_groundtruth,
                                write_detections)
from ..metrics import ava
from ..models.prepared import evaluating, inside
from ..text.prompts import ClassList
from ..utils.plotting import pyplot
from .classification import eval_batches

logger = logging.getLogger(__name__)

GROUPS = ("head", "mid", "tail")


def class_groups(counts: np.ndarray, thresholds: tuple[int, int] = (100, 1000)) -> np.ndarray:
    """Counts [C] -> group name per class: "tail" (< thresholds[0]), "mid" (< thresholds[1]),
    "head" (the rest)."""
    counts = np.asarray(counts)
    return np.where(counts < thresholds[0], "tail", np.where(counts < thresholds[1], "mid", "head"))


@torch.no_grad()
def extract_box_scores(accelerator, model, loader, text: torch.Tensor,
                       max_batches: int | None = None, desc: str = "eval") -> tuple[list, bool]:
    """Sigmoid scores of every box, gathered over processes (padding samples dropped).

    Returns (records, truncated): one record per sample, ``(key, valid, orig_boxes [k, 4]
    float64, scores [k, C] float64)``, in loader order; truncated is True if ``max_batches``
    stopped before the end of the loader.
    """
    text = text.to(accelerator.device)
    records: list = []
    truncated = max_batches is not None and len(loader) > max_batches
    with evaluating(model):
        for batch in eval_batches(accelerator, loader, max_batches, desc):
            with accelerator.autocast():
                logits = inside(model, lambda m: _box_logits(m, batch, text, accelerator.device))
            # float64 sigmoid: float32 saturates to 1.0 (ties) from logit ~17, float64 from ~37
            local = _split_samples(batch, logits.float().cpu().double().sigmoid().numpy())
            # one list element per sample, so the duplicated padding at the end can be cut off
            records.extend(accelerator.gather_for_metrics(local, use_gather_object=True))
    return records, truncated


def _box_logits(model, batch: Mapping, text: torch.Tensor, device) -> torch.Tensor:
    """One batch's box logits [K, C] against class embeddings ``text`` [C, E]."""
    emb, token_map = model.encode_video(batch["video"].to(device))
    return model.box_logits(token_map, batch["boxes"].to(device), batch["box_batch"].to(device),
                            text=text, context=emb)


def _split_samples(batch: Mapping, scores: np.ndarray) -> list:
    """A batch's boxes and scores [K, C] -> one record per sample (see extract_box_scores)."""
    owner = batch["box_batch"].cpu().numpy()
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(len(batch["keys"]) + 1))
    orig = batch["orig_boxes"].cpu().numpy().astype(np.float64)
    valid = batch["valid"].cpu().tolist()
    out = []
    for b, key in enumerate(batch["keys"]):
        rows = order[bounds[b]:bounds[b + 1]]
        out.append((make_key(*key), bool(valid[b]), orig[rows], scores[rows]))
    return out


def detections_table(records: list, classes: ClassList, labelmap: Mapping[int, str],
                     cap: int = ava.CAPACITY) -> tuple[AvaTable, set]:
    """Valid records -> (detections of label-map classes, the rows the official evaluator can
    keep: score >= each keyframe's ``cap``-th best; unreadable keys)."""
    cols = np.array([c for c, i in enumerate(classes.ids) if i in labelmap], np.int64)
    ids = np.array(classes.ids, np.int64)[cols]
    keys, key_index, boxes, labels, scores = [], [], [], [], []
    seen, unreadable, duplicates, non_finite = set(), set(), 0, 0
    for key, valid, orig, score in records:
        if key in seen or key in unreadable:
            duplicates += 1
            continue
        if not valid:
            unreadable.add(key)
            continue
        seen.add(key)
        orig = _as_written(orig)
        flat = score[:, cols].reshape(-1).astype(np.float64)
        bad = ~np.isfinite(flat)
        if bad.any():  # before the cut: NaN would break the ranking
            non_finite += int(bad.sum())
            flat[bad] = 0.0
        keep = np.ones(len(flat), bool)
        if len(flat) > cap:
            keep = flat >= np.partition(flat, len(flat) - cap)[len(flat) - cap]
        box_of, col_of = np.divmod(np.flatnonzero(keep), len(cols))
        key_index.append(np.full(len(box_of), len(keys)))
        keys.append(key)
        boxes.append(orig[box_of])
        labels.append(ids[col_of])
        scores.append(flat[keep])
    if duplicates:
        logger.warning("%d repeated keyframes in the evaluation set; kept the first of each", duplicates)
    if non_finite:
        logger.error("%d non-finite box scores (diverged model?); scored as 0", non_finite)
    cat = (lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape))
    table = AvaTable.from_arrays(keys, cat(key_index, (0,)), cat(boxes, (0, 4)),
                                 cat(labels, (0,)), cat(scores, (0,)))
    return table, unreadable


def _as_written(boxes: np.ndarray) -> np.ndarray:
    """Boxes [k, 4] clipped to [0, 1] and rounded as the detections CSV writes them (3
    decimals, Python's correctly rounded formatting), so evaluating the table in memory gives
    the official tool's result on the written file without writing it."""
    flat = np.clip(boxes, 0.0, 1.0).ravel().tolist()
    return np.array([float(f"{v:.3f}") for v in flat], np.float64).reshape(-1, 4)


def evaluate_localization(accelerator, model, loader, name: str, rows: torch.Tensor,
                          classes: ClassList, groundtruth_path: str | Path,
                          labelmap: Mapping[int, str], exclusions_path: str | Path | None = None,
                          out_dir: Path | None = None, train_counts: np.ndarray | None = None,
                          thresholds: tuple[int, int] = (100, 1000), max_batches: int | None = None,
                          class_text: torch.Tensor | None = None,
                          protocol: str = ava.CURRENT) -> dict[str, float]:
    """Evaluate one localisation dataset; every process returns the same metrics (module
    docstring). ``rows`` [C]: the label-space rows of ``classes``; ``class_text`` [C, E] scores
    against other class embeddings instead (zero-shot). ``train_counts`` [C] in class-index
    order (``data.localization.train_instance_counts``). ``protocol``: one of
    ``vlcofit.metrics.ava.PROTOCOLS``. With ``out_dir`` (main process) writes
    ``<name>_detections.csv``, ``<name>_per_class_ap.csv`` and ``<name>_per_class_ap.png``."""
    ava.check_protocol(protocol)  # before the pass over the data
    if class_text is not None:
        text = class_text
    else:  # in eval mode, as classification scoring gets its class matrix
        with evaluating(model):
            text = inside(model, lambda m: m.class_matrix()[rows.to(m.logit_scale.device)])
    if text.shape[0] != len(classes):
        raise ValueError(f"{name}: {text.shape[0]} class embeddings for {len(classes)} classes")
    records, truncated = extract_box_scores(accelerator, model, loader, text, max_batches,
                                            desc=f"eval {name}")
    out: list = [None]
    if accelerator.is_main_process:
        try:
            out[0] = _report(records, truncated, name, classes, groundtruth_path, labelmap,
                             exclusions_path, out_dir, train_counts, thresholds, protocol)
        except Exception as err:  # raised on every process, not left waiting in the broadcast
            out[0] = err
    result = broadcast_object_list(out)[0]
    if isinstance(result, Exception):
        raise result
    return result


def _report(records, truncated, name, classes, groundtruth_path, labelmap, exclusions_path,
            out_dir, train_counts, thresholds, protocol=ava.CURRENT) -> dict[str, float]:
    det, unreadable = detections_table(records, classes, labelmap)
    if unreadable:
        logger.warning("%s: %d unreadable keyframes left out of the evaluation", name, len(unreadable))
    gt = read_groundtruth(groundtruth_path, labelmap)
    evaluated = set(det.keys)
    if truncated:  # a partial pass (eval.max_batches): score only the keyframes it saw
        gt = gt.subset(np.isin(gt.key_index, [k for k, key in enumerate(gt.keys) if key in evaluated]))
    excluded = (read_exclusions(exclusions_path) if exclusions_path else set()) | unreadable
    missing = {gt.keys[k] for k in np.unique(gt.key_index)} - evaluated - excluded
    if missing:
        logger.warning("%s: %d ground-truth keyframes were not in the evaluation set; their "
                       "boxes count as missed", name, len(missing))
    result = ava.evaluate(labelmap, gt, det, excluded, protocol)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_detections(Path(out_dir) / f"{name}_detections.csv", det)
    per_class = _per_class(result, classes, labelmap, train_counts, thresholds)
    metrics = {f"{name}/mAP": 100.0 * result["mAP"]}
    for group in GROUPS:
        aps = [r["ap"] for r in per_class if r["group"] == group and not math.isnan(r["ap"])]
        metrics[f"{name}/mAP_{group}"] = float(np.mean(aps)) if aps else math.nan
    metrics[f"{name}/unreadable"] = float(len(unreadable))
    metrics[f"{name}/keyframes"] = float(len(det.keys))
    if out_dir is not None:
        write_per_class_ap(Path(out_dir) / f"{name}_per_class_ap.csv", per_class)
        plot_per_class_ap(Path(out_dir) / f"{name}_per_class_ap.png", per_class, name, thresholds)
    return metrics


def _per_class(result: dict, classes: ClassList, labelmap: Mapping[int, str],
               train_counts: np.ndarray | None, thresholds: tuple[int, int]) -> list[dict]:
    """One row per label-map class: id, name, train count (-1: unknown), group, AP % (NaN:
    no ground truth)."""
    if train_counts is not None and len(train_counts) != len(classes):
        raise ValueError(f"train_counts has {len(train_counts)} entries for {len(classes)} classes")
    out = []
    for ident in sorted(labelmap):
        index = classes.id_to_index.get(ident)
        count = -1 if train_counts is None or index is None else int(train_counts[index])
        ap = result["per_class"].get(labelmap[ident], math.nan)
        group = str(class_groups(np.array([count]), thresholds)[0]) if count >= 0 else ""
        out.append({"id": ident, "name": labelmap[ident], "count": count, "group": group,
                    "ap": 100.0 * ap})
    return out


def write_per_class_ap(path: Path, per_class: list[dict]) -> None:
    """CSV: class_id, class_name, train_count (blank: unknown), group, ap (%, blank: no ground truth)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_id", "class_name", "train_count", "group", "ap"])
        for r in per_class:
            writer.writerow([r["id"], r["name"], r["count"] if r["count"] >= 0 else "", r["group"],
                             "" if math.isnan(r["ap"]) else f"{r['ap']:.2f}"])


def plot_per_class_ap(path: Path, per_class: list[dict], title: str,
                      thresholds: tuple[int, int]) -> Path | None:
    """Bar plot of per-class AP, classes by descending train count (by AP without counts),
    coloured by head / mid / tail."""
    plt = pyplot()

    rows = [r for r in per_class if not math.isnan(r["ap"])]
    if not rows:
        return None
    by_count = all(r["count"] >= 0 for r in rows)
    rows.sort(key=(lambda r: (-r["count"], -r["ap"])) if by_count else (lambda r: -r["ap"]))
    colours = {"head": "tab:blue", "mid": "tab:orange", "tail": "tab:red", "": "tab:gray"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.2 * len(rows)), 4.5))
    ax.bar(range(len(rows)), [r["ap"] for r in rows], color=[colours[r["group"]] for r in rows])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"] for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("AP (%)")
    ax.set_title(f"{title}: per-class AP" + (" (by training count)" if by_count else ""))
    if by_count:
        labels = {"head": f"head (>= {thresholds[1]})",
                  "mid": f"mid ({thresholds[0]}-{thresholds[1] - 1})",
                  "tail": f"tail (< {thresholds[0]})"}
        ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[g]) for g in GROUPS],
                  labels=[labels[g] for g in GROUPS], fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
