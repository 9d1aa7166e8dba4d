"""Transferability measures of features: LogME, leave-one-out k-NN, a held-out linear probe
(Plested et al. 2021's fit measures; vlcofit.experiment.fit measures them on a config's
datasets).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .probe import choose_weight_decay, fit_linear_probe

LOGME_TOL = 1e-8  # relative change of both alpha and beta between iterations
LOGME_EVIDENCE_TOL = 1e-14  # change of log evidence / N (float64 resolution at O(1) values)
LOGME_MAX_ITER = 1000  # interior fixed points converge in tens of iterations
HOLDOUT_FRACTION = 0.2
_CLAMP = (1e-10, 1e10)  # alpha, beta kept finite when a class is fitted (almost) exactly

logger = logging.getLogger(__name__)

KNN_K = 10  # neighbours of the leave-one-out k-NN fit measure


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

    fit, held = holdout_split(y.tolist(), seed)
    if not held:
        return {}
    fit_t, held_t = torch.tensor(fit), torch.tensor(held)
    wd = choose_weight_decay(x[fit_t], y[fit_t], num_classes, seed)
    w, b = fit_linear_probe(x[fit_t], y[fit_t], num_classes, wd)
    pred = (x[held_t] @ w.t() + b).argmax(dim=1)
    return {"probe_top1": 100.0 * float((pred == y[held_t]).float().mean()),
            "probe_weight_decay": wd}


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
