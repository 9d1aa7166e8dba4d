"""The linear probe: multinomial logistic regression on frozen features (L-BFGS, L2 weight decay
chosen on a held-out split), as CLIP's linear-probe evaluation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PROBE_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)
PROBE_DEFAULT_DECAY = 1e-3


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                     max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on features ``x`` [N, E], labels ``y`` [N] with L-BFGS;
    loss = mean cross-entropy + weight_decay / 2 * |W|^2. Returns (W [C, E], b [C])."""
    threads = torch.get_num_threads()
    if x.numel() * num_classes < 10**7:  # tiny problems: thread start-up costs more than it saves
        torch.set_num_threads(1)
    try:
        return _fit(x.double(), y, num_classes, weight_decay, max_iter)
    finally:
        torch.set_num_threads(threads)


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
         max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.t() + b, y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float()


def _accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * ((x @ w.t() + b).argmax(dim=1) == y).float().mean().item() if len(y) else float("nan")


def choose_weight_decay(x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int) -> float:
    """2-fold cross-validation over ``PROBE_WEIGHT_DECAYS``, folds split within each class;
    ties go to the larger decay. Fewer than 2 videos in some class: ``PROBE_DEFAULT_DECAY``."""
    counts = torch.bincount(y, minlength=num_classes)
    if int(counts[counts > 0].min()) < 2:
        return PROBE_DEFAULT_DECAY
    rng = np.random.default_rng([seed, len(y), 1])
    fold = torch.zeros(len(y), dtype=torch.long)
    for c in range(num_classes):
        members = (y == c).nonzero().flatten().numpy()
        fold[rng.permutation(members)[1::2]] = 1
    best, best_acc = PROBE_DEFAULT_DECAY, -1.0
    for wd in PROBE_WEIGHT_DECAYS:
        acc = np.mean([_accuracy(*fit_linear_probe(x[fold != f], y[fold != f], num_classes, wd),
                                 x[fold == f], y[fold == f]) for f in (0, 1)])
        if acc >= best_acc:
            best, best_acc = wd, acc
    return best


def linear_probe(train_feats: dict[str, torch.Tensor], eval_feats: dict[str, torch.Tensor],
                 chosen: list[int], num_classes: int, seed: int) -> dict[str, float]:
    """Fit on the ``chosen`` training records (unreadable ones dropped), top-1 on the
    evaluation split's readable videos."""
    position = {int(r): i for i, r in enumerate(train_feats["rows"])}
    rows = torch.tensor([position[c] for c in chosen], dtype=torch.long)
    rows = rows[train_feats["valid"][rows]]
    x, y = train_feats["x"][rows], train_feats["label"][rows]
    wd = choose_weight_decay(x, y, num_classes, seed)
    w, b = fit_linear_probe(x, y, num_classes, wd)
    ok = eval_feats["valid"]
    return {"top1": _accuracy(w, b, eval_feats["x"][ok], eval_feats["label"][ok]),
            "weight_decay": wd, "train_videos": int(len(rows)), "count": int(ok.sum())}
