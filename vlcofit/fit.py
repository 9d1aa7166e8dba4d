"""How well a model's starting weights fit a target dataset, measured on its training split
before any training step (Plested et al. 2021: such measures guide the non-binary transfer
settings, :mod:`vlcofit.advise`).

Every measure uses the frozen model's video embeddings of the training split (evaluation view:
centre clip and crop as the card says, views averaged, L2-normalised; unreadable videos left
out), through the feature cache (:mod:`vlcofit.cache`), so measuring again costs no decoding.
Per single-label classification dataset ``<ds>`` (decided by the card's task, never its name):

- ``<ds>/fit/zero_shot_top1`` (%): the model's own text head (template-ensemble class
  embeddings of the dataset's label-space rows, softmax per view then averaged, as evaluation
  does). Omitted when the model has a linear head (no text head to score with).
- ``<ds>/fit/knn{k}_top1`` (%): leave-one-out k-NN (:func:`knn_accuracy`).
- ``<ds>/fit/probe_top1`` (%): a linear probe (:func:`vlcofit.fewshot.fit_linear_probe`, weight
  decay by :func:`vlcofit.fewshot.choose_weight_decay`) fitted on 80 % of each class and scored
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

from .config import ExperimentConfig
from .errors import InputError
from .evaluate import view_scores
from .metrics.classification import accuracy_metrics
from .strategy import evaluating, inside
from .tasks import task_of

logger = logging.getLogger(__name__)

LOGME_TOL = 1e-8  # relative change of both alpha and beta between iterations
LOGME_EVIDENCE_TOL = 1e-14  # change of log evidence / N (float64 resolution at O(1) values)
LOGME_MAX_ITER = 1000  # interior fixed points converge in tens of iterations
KNN_K = 10
HOLDOUT_FRACTION = 0.2
_CLAMP = (1e-10, 1e10)  # alpha, beta kept finite when a class is fitted (almost) exactly


# --------------------------------------------------------------------------- LogME

def logme(features: torch.Tensor, labels: torch.Tensor) -> float:
    """LogME (You et al., ICML 2021, arXiv 2102.11005): the maximised log evidence of a Bayesian
    linear model ``y_c = F w + noise`` per class c (one-hot target, prior w ~ N(0, 1/alpha I),
    noise precision beta), divided by N and averaged over the classes present in ``labels``.

    ``features`` [N, D], ``labels`` [N] int. Float64; any N, D (the thin SVD F = U S V^T has
    r = min(N, D) singular values; the other D - r eigenvalues of F^T F are 0). Evidence is
    maximised by the fixed point gamma = sum(beta s_i / (alpha + beta s_i)) (s_i: eigenvalues
    of F^T F), alpha = gamma / m^T m, beta = (N - gamma) / ||F m - y||^2 from alpha = beta = 1,
    for all classes at once, until both change by less than ``LOGME_TOL`` (relative) or the
    evidence by less than ``LOGME_EVIDENCE_TOL``, at most ``LOGME_MAX_ITER`` iterations (then
    a warning). With few videos (N <= D) the evidence of a class can rise towards a finite
    limit at alpha -> inf (features explain nothing: m = 0) or beta -> inf (an exact fit);
    alpha and beta are kept in [1e-10, 1e10], which returns that limit within about 1e-9.
    No bias term, as in the paper."""
    evidence, _, _ = logme_fit(features, labels)
    return float(evidence.mean())


def logme_fit(features: torch.Tensor, labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class present (ascending class index): (log evidence / N, alpha, beta), each [C']."""
    f = features.detach().cpu().double()
    n, d = f.shape
    classes = torch.unique(labels.cpu())
    y = (labels.cpu()[:, None] == classes[None, :]).double()  # [N, C'] one-hot targets
    u, s, _ = torch.linalg.svd(f, full_matrices=False)
    sigma = (s * s)[:, None]  # [r, 1]
    z = u.t() @ y  # targets in the singular basis [r, C']
    outside = ((y * y).sum(0) - (z * z).sum(0)).clamp(min=0)  # |y|^2 off the column space
    alpha = torch.ones(len(classes), dtype=torch.float64)
    beta = torch.ones_like(alpha)
    evidence = _evidence(alpha, beta, n, d, sigma, s[:, None], z, outside)
    for _ in range(LOGME_MAX_ITER):
        gamma, m2, res2 = _posterior(alpha, beta, sigma, s[:, None], z, outside)
        new_alpha = (gamma / m2.clamp(min=1e-300)).clamp(*_CLAMP)
        new_beta = ((n - gamma) / res2.clamp(min=1e-300)).clamp(*_CLAMP)
        new_evidence = _evidence(new_alpha, new_beta, n, d, sigma, s[:, None], z, outside)
        still = (((new_alpha - alpha).abs() > LOGME_TOL * alpha)
                 | ((new_beta - beta).abs() > LOGME_TOL * beta))
        # towards a limit at infinity (N <= D): the evidence stops changing long before
        still &= (new_evidence - evidence).abs() > LOGME_EVIDENCE_TOL
        alpha, beta, evidence = new_alpha, new_beta, new_evidence
        if not still.any():
            break
    else:
        logger.warning("LogME: fixed point not converged in %d iterations", LOGME_MAX_ITER)
    return evidence, alpha, beta


def _evidence(alpha, beta, n, d, sigma, s, z, outside):
    """log evidence / N at (alpha, beta) per class."""
    _, m2, res2 = _posterior(alpha, beta, sigma, s, z, outside)
    logdet = torch.log(alpha + beta * sigma).sum(0) + (d - len(s)) * torch.log(alpha)
    value = (n / 2 * torch.log(beta) + d / 2 * torch.log(alpha) - n / 2 * np.log(2 * np.pi)
             - beta / 2 * res2 - alpha / 2 * m2 - logdet / 2)
    return value / n


def _posterior(alpha, beta, sigma, s, z, outside):
    """gamma, m^T m, ||F m - y||^2 of the posterior mean m = beta A^-1 F^T y (A = alpha I +
    beta F^T F), in closed form in the singular basis."""
    t = alpha + beta * sigma  # [r, C']
    gamma = (beta * sigma / t).sum(0)
    m2 = ((beta * s * z / t) ** 2).sum(0)
    res2 = ((alpha * z / t) ** 2).sum(0) + outside
    return gamma, m2, res2


# --------------------------------------------------------------------------- k-NN

def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, k: int = KNN_K,
                 num_classes: int | None = None) -> dict[str, float]:
    """Leave-one-out k-NN top-1 (%) with cosine similarity: each video is classified by the
    k most similar other videos (``min(k, N - 1)`` when fewer), one vote each; ties in votes go
    to the class with the larger summed similarity, then to the lowest class index.
    Returns ``{f"knn{k}_top1": accuracy}`` (NaN with fewer than 2 videos)."""
    key = f"knn{k}_top1"
    n = len(train_y)
    if k < 1:
        raise ValueError(f"knn_accuracy: k must be >= 1, got {k}")
    if n < 2:
        return {key: float("nan")}
    x = F.normalize(train_x.float(), dim=-1)
    y = train_y.long()
    c = int(num_classes if num_classes is not None else int(y.max()) + 1)
    kk = min(k, n - 1)
    chunk = max(1, 2**26 // n)  # rows of similarities at a time: at most 256 MiB of float32
    correct = 0
    for start in range(0, n, chunk):
        sim = x[start:start + chunk] @ x.t()
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = -float("inf")  # leave one out
        top, idx = sim.topk(kk, dim=1)
        votes = torch.zeros(sim.shape[0], c).scatter_add_(1, y[idx], torch.ones_like(top))
        sums = torch.zeros(sim.shape[0], c).scatter_add_(1, y[idx], top)
        tied = votes == votes.max(dim=1, keepdim=True).values
        sums = torch.where(tied, sums, torch.full_like(sums, -float("inf")))
        best = tied & (sums == sums.max(dim=1, keepdim=True).values)
        pred = best.int().argmax(dim=1)  # argmax returns the first maximum: lowest class
        correct += int((pred == y[start:start + chunk]).sum())
    return {key: 100.0 * correct / n}


# --------------------------------------------------------------------------- linear probe

def holdout_split(labels: Sequence[int], seed: int,
                  fraction: float = HOLDOUT_FRACTION) -> tuple[list[int], list[int]]:
    """Deterministic stratified split of indices into (fit, held out): per class (ascending),
    ``round(fraction * n)`` of its n videos, at least 1 when n >= 2, none when n == 1, drawn by
    one ``numpy.random.default_rng([seed, n_total])`` (``permutation`` per class)."""
    labels = [int(v) for v in labels]
    rng = np.random.default_rng([seed, len(labels)])
    fit, held = [], []
    for c in sorted(set(labels)):
        members = rng.permutation([i for i, v in enumerate(labels) if v == c])
        n_held = 0 if len(members) < 2 else max(1, int(round(fraction * len(members))))
        held += members[:n_held].tolist()
        fit += members[n_held:].tolist()
    return sorted(fit), sorted(held)


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, num_classes: int,
                   seed: int) -> dict[str, float]:
    """Linear-probe top-1 (%) on the held-out part of :func:`holdout_split`, the probe fitted on
    the rest (weight decay chosen by 2-fold cross-validation on the fitting part). ``{}`` when
    nothing can be held out."""
    from .fewshot import choose_weight_decay, fit_linear_probe

    fit, held = holdout_split(y.tolist(), seed)
    if not held:
        return {}
    fit_t, held_t = torch.tensor(fit), torch.tensor(held)
    wd = choose_weight_decay(x[fit_t], y[fit_t], num_classes, seed)
    w, b = fit_linear_probe(x[fit_t], y[fit_t], num_classes, wd)
    pred = (x[held_t] @ w.t() + b).argmax(dim=1)
    return {"probe_top1": 100.0 * float((pred == y[held_t]).float().mean()),
            "probe_weight_decay": wd}


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


def subsample(labels: Sequence[int], max_per_class: int | None, seed: int) -> list[int]:
    """Sorted indices keeping at most ``max_per_class`` videos per class, drawn by
    ``default_rng([seed, max_per_class])`` (``choice`` without replacement per class)."""
    if max_per_class is None:
        return list(range(len(labels)))
    rng = np.random.default_rng([seed, max_per_class])
    by_class: dict[int, list[int]] = {}
    for i, v in enumerate(labels):
        by_class.setdefault(int(v), []).append(i)
    keep = [int(m[j]) for _, m in sorted(by_class.items())
            for j in rng.choice(len(m), size=min(len(m), max_per_class), replace=False)]
    return sorted(keep)


def measure_fit(cfg: ExperimentConfig, accelerator, model, labels, dataset_names=None,
                cache=None, k: int = KNN_K, max_per_class: int | None = None
                ) -> dict[str, float]:
    """The fit measures (module docstring) of ``model``'s current weights on the training split
    of each dataset of :func:`fit_datasets`; keys ``<ds>/fit/<measure>``. Collective: call on
    every process; every process returns the same dict. ``model``: prepared or not; its train /
    eval mode and the RNG states are restored, so training after this is unchanged.
    ``cache``: a :class:`vlcofit.cache.FeatureCache` or None; ``max_per_class``: measure at most
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
    from .cache import cached_features, model_fingerprint
    from .experiment import build_dataset

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
