"""How well a model's starting weights fit a target dataset, measured on its training split
before any training step (Plested et al. 2021: such measures guide the non-binary transfer
settings, :mod:`vlcofit.protocols.advise`).

Every measure uses the frozen model's video embeddings of the training split (evaluation view:
centre clip and crop as the card says, views averaged, L2-normalised; unreadable videos left
out), through the feature cache (:mod:`vlcofit.eval.cache`), so measuring again costs no decoding.
Per single-label classification dataset ``<ds>`` (decided by the card's task, never its name):

- ``<ds>/fit/zero_shot_top1`` (%): the model's own text head (template-ensemble class
  embeddings of the dataset's label-space rows, softmax per view then averaged, as evaluation
  does). Omitted when the model has a linear head (no text head to score with).
- ``<ds>/fit/knn{k}_top1`` (%): leave-one-out k-NN (:func:`knn_accuracy`).
- ``<ds>/fit/probe_top1`` (%): a linear probe (:func:`vlcofit.protocols.fewshot.fit_linear_probe`, weight
  decay by :func:`vlcofit.protocols.fewshot.choose_weight_decay`) fitted on 80 % of each class and scored
  on the other 20 % (:func:`holdout_split`), and ``<ds>/fit/probe_weight_decay`` it chose;
  omitted when no class has 2 videos.
- ``<ds>/fit/logme`` (:func:`logme`; nats per video, higher is better; not a percentage).
- ``<ds>/fit/chance_top1`` (%): 100 / number of classes; ``<ds>/fit/videos``: videos measured.

No validation split is read: the measures exist before training. Under ``accelerate launch``
the features are gathered on every process, the measures computed on the main process and
broadcast, so every process returns the same dict.
"""
from __future__ import annotations

import logging
import random
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config.schema import ExperimentConfig
from ..errors import InputError
from ..eval.cache import cached_features, model_fingerprint
from ..eval.classification import view_scores
from ..eval.transferability import KNN_K, knn_accuracy, logme, probe_accuracy, subsample
from ..metrics.classification import accuracy_metrics
from ..models.prepared import evaluating, inside
from ..tasks import task_of
from . import build_dataset

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- LogME


# --------------------------------------------------------------------------- k-NN


# --------------------------------------------------------------------------- linear probe


# --------------------------------------------------------------------------- entry point

def fit_datasets(cfg: ExperimentConfig, names: Sequence[str] | None = None) -> list[str]:
    """The datasets to measure: ``names`` (default: the training datasets, else all), keeping
    single-label datasets with classes; the others are skipped with a logged note."""
    chosen = list(names) if names is not None else list(cfg.train.datasets or cfg.datasets)
    unknown = [n for n in chosen if n not in cfg.datasets]
    if unknown:
        raise InputError(f"fit measures: dataset {unknown[0]!r} is not under `datasets` (have: "
                         f"{', '.join(cfg.datasets) or 'none'})")
    kept = []
    for name in chosen:
        task = task_of(cfg.datasets[name])
        if task.has_classes and task.single_label:
            kept.append(name)
        else:
            logger.info("fit measures: %s skipped (a %s dataset: not one class per clip)",
                        name, cfg.datasets[name].task)
    return kept


def measure_fit(cfg: ExperimentConfig, accelerator, model, labels, dataset_names=None,
                cache=None, k: int = KNN_K, max_per_class: int | None = None
                ) -> dict[str, float]:
    """The fit measures (module docstring) of ``model``'s current weights on the training split
    of each dataset of :func:`fit_datasets`; keys ``<ds>/fit/<measure>``. Collective: call on
    every process; every process returns the same dict. ``model``: prepared or not; its train /
    eval mode and the RNG states are restored, so training after this is unchanged.
    ``cache``: a :class:`vlcofit.eval.cache.FeatureCache` or None; ``max_per_class``: measure at most
    that many training videos per class (a seeded draw), all by default."""
    from accelerate.utils import broadcast_object_list

    out: dict[str, float] = {}
    with _rng_preserved(accelerator.device):
        for name in fit_datasets(cfg, dataset_names):
            feats = _train_features(cfg, accelerator, model, labels, name, cache, max_per_class)
            zero = _zero_shot_scores(accelerator, model, feats["emb"], labels.rows(name))
            result = [None]
            if accelerator.is_main_process:
                result[0] = _measures(feats, zero, labels, name, k, cfg.train.seed)
            if accelerator.num_processes > 1:
                broadcast_object_list(result, from_process=0)
            out.update(result[0])
    return out


def _train_features(cfg, accelerator, model, labels, name, cache, max_per_class):
    """``{"emb": [N, V, E], "label": [N]}`` of the readable training videos of ``name``."""

    base = accelerator.unwrap_model(model)
    ds = build_dataset(cfg.datasets[name], "train", labels.classes[name], base.backbone,
                       train=False, seed=cfg.train.seed)
    keep = subsample([r.label for r in ds.records], max_per_class, cfg.train.seed)
    ds.records = [ds.records[i] for i in keep]
    model_id = model_fingerprint(base, cfg.model) if cache is not None else ""
    feats, _ = cached_features(accelerator, model, ds, cfg.eval.batch_size,
                               cfg.train.num_workers, cache, model_id, desc=f"fit {name}",
                               stall_timeout=cfg.data.stall_timeout)
    ok = feats["valid"]
    if not ok.all():
        logger.info("fit measures: %s: %d unreadable training videos left out", name,
                    int((~ok).sum()))
    return {"emb": feats["emb"][ok], "label": feats["label"][ok]}


def _measures(feats, zero_shot, labels, name: str, k: int, seed: int) -> dict[str, float]:
    """The measures of one dataset's features; ``zero_shot``: the text head's probabilities
    (:func:`_zero_shot_scores`), None for a linear head."""
    num_classes = len(labels.classes[name])
    emb, y = feats["emb"], feats["label"]
    x = F.normalize(emb.mean(dim=1), dim=-1)
    out = {"chance_top1": 100.0 / num_classes, "videos": float(len(y))}
    if len(y) == 0:
        logger.warning("fit measures: %s: no readable training video", name)
        return {f"{name}/fit/{key}": v for key, v in out.items()}
    if zero_shot is not None:
        out["zero_shot_top1"] = float(accuracy_metrics(zero_shot, y)[0]["top1"])
    else:
        logger.info("fit measures: %s: no zero-shot accuracy (the model has a linear head, "
                    "no text head)", name)
    out.update(knn_accuracy(x, y, k, num_classes))
    out.update(probe_accuracy(x, y, num_classes, seed))
    out["logme"] = logme(x, y)
    return {f"{name}/fit/{key}": float(v) for key, v in out.items()}


def _zero_shot_scores(accelerator, model, emb: torch.Tensor, rows: torch.Tensor):
    """Probabilities [N, C] of the text head over the dataset's rows, in eval mode (template
    ensemble, not a trained text tower's per-step template draw); None for a linear head.
    On every process, inside the model's forward (a collective under sharding)."""
    if accelerator.unwrap_model(model).linear is not None:
        return None
    with evaluating(model):
        return inside(model, lambda m: view_scores(m, emb, rows=rows.to(m.logit_scale.device)))


class _rng_preserved:
    """Restore torch (CPU and the device), numpy and Python RNG states on exit: the loader of a
    feature pass draws from them, and a run measured at step 0 must train as one that is not."""

    def __init__(self, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []

    def __enter__(self):
        self.fork = torch.random.fork_rng(devices=self.devices)
        self.fork.__enter__()
        self.np_state, self.py_state = np.random.get_state(), random.getstate()

    def __exit__(self, *exc):
        np.random.set_state(self.np_state)
        random.setstate(self.py_state)
        return self.fork.__exit__(*exc)
