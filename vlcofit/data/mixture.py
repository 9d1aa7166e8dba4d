"""Dataset mixtures: which dataset each training step draws (co-finetuning, Arnab et al. 2022),
and the sequential transfer-learning baseline with the same per-dataset step counts.

The baseline is transfer learning as it is done: the upstream phase trains with its own warmup
and cosine schedule; the downstream phase starts from those weights with a fresh optimizer and
its own warmup and cosine (``Plan.phases``).

The whole schedule is drawn up front from ``train.seed``, so every process of a distributed run
picks the same dataset at the same step, and a resumed run knows how far each dataset got.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import get_args

import numpy as np

from ..config.schema import ExperimentConfig, MixtureSampling, Schedule
from ..errors import InputError

logger = logging.getLogger(__name__)

SAMPLING = get_args(MixtureSampling)
SCHEDULES = get_args(Schedule)


def mixture_weights(cfg: ExperimentConfig, sizes: dict[str, int]) -> dict[str, float]:
    """Normalised sampling probability of each training dataset."""
    t = cfg.train
    if t.sampling == "uniform":
        raw = {n: 1.0 for n in t.datasets}
    elif t.sampling == "proportional":
        raw = {n: float(sizes[n]) for n in t.datasets}
    elif t.sampling == "temperature":
        raw = {n: float(sizes[n]) ** (1.0 / t.temperature) for n in t.datasets}
    else:
        raw = {n: float(t.weights[n]) for n in t.datasets}
    total = sum(raw.values())
    if total <= 0:
        raise InputError("train: the mixture weights are all zero (empty datasets?)")
    return {n: w / total for n, w in raw.items()}


@dataclass(frozen=True)
class Plan:
    """The dataset of every step; ``names[schedule[s]]`` is trained at step s."""
    names: tuple[str, ...]
    weights: dict[str, float]
    schedule: np.ndarray  # [steps] int
    # [start, end) step ranges; each phase has a fresh optimizer and its own lr schedule
    phases: tuple[tuple[int, int], ...] = ()

    def phase_of(self, step: int) -> int:
        """The phase that trains step ``step`` (0-based); the last one for ``step == steps``."""
        return next((i for i, (_, end) in enumerate(self.phases) if step < end),
                    len(self.phases) - 1)

    def counts(self, upto: int | None = None) -> dict[str, int]:
        """Steps each dataset takes in ``schedule[:upto]``."""
        part = self.schedule[:upto]
        return {n: int((part == i).sum()) for i, n in enumerate(self.names)}

    def table(self) -> str:
        counts = self.counts()
        lines = [f"{'dataset':<20} {'weight':>8} {'steps':>8}"]
        lines += [f"{n:<20} {self.weights[n]:8.3f} {counts[n]:8d}" for n in self.names]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"weights": self.weights, "steps": self.counts(),
                "phases": [list(p) for p in self.phases],
                "order": [self.names[i] for i in self.schedule[:50]]}


def plan(cfg: ExperimentConfig, sizes: dict[str, int]) -> Plan:
    """Draw the dataset of each of ``train.steps`` steps (budgets respected), then reorder for the
    sequential schedule: upstream steps first (in drawn order), downstream last."""
    t = cfg.train
    names = t.datasets
    weights = mixture_weights(cfg, sizes)
    rng = np.random.default_rng([t.seed, 1_000_003])
    p = np.array([weights[n] for n in names])
    budget = np.array([t.step_budgets.get(n, t.steps) for n in names], dtype=np.int64)
    if budget.sum() < t.steps:
        raise InputError(f"train.step_budgets add up to {budget.sum()}, fewer than train.steps={t.steps}")
    taken = np.zeros(len(names), dtype=np.int64)
    schedule = np.empty(t.steps, dtype=np.int64)
    draws = rng.random(t.steps)
    for step in range(t.steps):
        q = np.where(taken < budget, p, 0.0)
        if q.sum() <= 0:  # only datasets with zero weight have budget left
            q = (taken < budget).astype(float)
        i = int(np.searchsorted(np.cumsum(q / q.sum()), draws[step], side="right"))
        i = min(i, len(names) - 1)
        schedule[step] = i
        taken[i] += 1
    phases = ((0, t.steps),)
    if t.schedule == "sequential":
        down = np.isin(schedule, [names.index(n) for n in t.downstream])
        schedule = np.concatenate([schedule[~down], schedule[down]])
        upstream = int((~down).sum())
        phases = tuple(p for p in ((0, upstream), (upstream, t.steps)) if p[1] > p[0])
    for start, end in phases:
        if t.warmup_steps >= end - start:
            logger.warning("train.warmup_steps=%d is not shorter than the %d steps of the phase "
                           "from step %d: its learning rate only warms up", t.warmup_steps,
                           end - start, start)
    return Plan(tuple(names), weights, schedule, phases)
