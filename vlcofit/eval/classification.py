"""Evaluation: video embeddings -> class scores (views averaged) -> "dataset/metric" floats.

Embeddings are extracted once per dataset and scored against any class matrix, so supervised
evaluation and zero-shot with another prompt file share one path.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.loading import watch
from ..metrics.classification import accuracy_metrics, write_per_class_csv
from ..models.prepared import evaluating, inside
from ..models.video import VideoCLIP
from ..text.prompts import ClassList

logger = logging.getLogger(__name__)


def eval_batches(accelerator, loader, max_batches: int | None, desc: str):
    """The loader's batches, at most ``max_batches``, under a progress bar (main process)."""
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    # Into a file (stderr not a terminal), a bar nested under training's would redraw by moving
    # the cursor up (\x1b[A), which the file keeps: there it writes on line 0 like the rest.
    flat = not sys.stderr.isatty()
    bar = tqdm(watch(loader, "evaluation"), total=total, desc=desc, unit="batch", leave=False,
               disable=not accelerator.is_main_process, position=0 if flat else None)
    for i, batch in enumerate(bar):
        if max_batches is not None and i >= max_batches:
            break
        yield batch


@torch.no_grad()
def extract_embeddings(accelerator, model: VideoCLIP, loader, max_batches: int | None = None,
                       desc: str = "eval") -> dict[str, torch.Tensor]:
    """Video embeddings of every view, gathered over processes (padding dropped).

    Returns ``emb`` [N, V, E] (float32), ``label`` [N], ``valid`` [N] (False: unreadable video).
    """
    embs, labels, valid = [], [], []
    with evaluating(model):
        for batch in eval_batches(accelerator, loader, max_batches, desc):
            video = batch["video"]
            if video.ndim == 5:  # [B, T, 3, H, W] -> one view
                video = video[:, None]
            b, v = video.shape[:2]
            with accelerator.autocast():
                emb = inside(model, lambda m: m.encode_video(video.flatten(0, 1))[0])
            emb = emb.float().reshape(b, v, -1)
            emb, label, ok = accelerator.gather_for_metrics((emb, batch["label"], batch["valid"]))
            embs.append(emb.cpu())
            labels.append(label.cpu())
            valid.append(ok.cpu())
    if not embs:
        return {"emb": torch.empty(0, 1, 0), "label": torch.empty(0, dtype=torch.long),
                "valid": torch.empty(0, dtype=torch.bool)}
    return {"emb": torch.cat(embs), "label": torch.cat(labels), "valid": torch.cat(valid)}


@torch.no_grad()
def view_scores(model: VideoCLIP, emb: torch.Tensor, text: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
    """[N, V, E] -> class probabilities [N, C] per view (softmax, or sigmoid for a SigLIP-style
    model: ``VideoCLIP.probabilities``), averaged over views.

    ``text`` [C, E] scores against any class embeddings (zero-shot); otherwise the model's own
    classifier over label-space ``rows``.
    """
    n, v, e = emb.shape
    flat = emb.reshape(n * v, e).to(model.logit_scale.device)
    logits = model.score(flat, text) if text is not None else model.classify(flat, rows)
    return model.probabilities(logits).reshape(n, v, -1).mean(dim=1).cpu()


def classification_report(name: str, scores: torch.Tensor, labels: torch.Tensor,
                          valid: torch.Tensor, classes: ClassList,
                          out_dir: Path | None = None) -> dict[str, float]:
    """Metrics as ``{"<name>/top1": ...}``; with ``out_dir``, also ``<name>_per_class.csv``."""
    scores, labels = scores[valid], labels[valid]
    metrics, per_class = accuracy_metrics(scores, labels)
    bad = int((~valid).sum())
    if bad:
        logger.warning("%s: %d unreadable videos left out of the evaluation", name, bad)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        counts = torch.bincount(labels, minlength=len(classes.names))
        write_per_class_csv(out_dir / f"{name}_per_class.csv", classes.names, per_class, counts)
    out = {f"{name}/{k}": float(v) for k, v in metrics.items()}
    out[f"{name}/unreadable"] = float(bad)
    return out


def evaluate_classification(accelerator, model: VideoCLIP, loader, name: str, rows: torch.Tensor,
                            classes: ClassList, out_dir: Path | None = None,
                            max_batches: int | None = None, coarse=None) -> dict[str, float]:
    """Supervised evaluation of one classification dataset. ``coarse`` (a
    :class:`vlcofit.text.hierarchy.Hierarchy`): also ``<name>/coarse_*``, the fine predictions
    collapsed to coarse groups, on the same videos."""
    feats = extract_embeddings(accelerator, model, loader, max_batches, desc=f"eval {name}")
    with evaluating(model):  # the template ensemble, also when the text tower trains
        scores = inside(model, lambda m: view_scores(m, feats["emb"], rows=rows))
    out_dir = out_dir if accelerator.is_main_process else None
    out = classification_report(name, scores, feats["label"], feats["valid"], classes, out_dir)
    if coarse is not None:
        groups = classification_report(f"{name}_coarse", coarse.collapse(scores),
                                       coarse.coarse_labels(feats["label"]), feats["valid"],
                                       coarse.coarse, out_dir)
        out.update({f"{name}/coarse_{k.split('/', 1)[1]}": v for k, v in groups.items()
                    if not k.endswith("/unreadable")})
    return out
