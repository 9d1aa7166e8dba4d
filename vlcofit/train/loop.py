"""The training loop, through HF Accelerate: one process, or `accelerate launch` on 1..N GPUs
or machines. `vlcofit train CONFIG` and `accelerate launch -m vlcofit train CONFIG` run this.
"""
from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config.loading import save_experiment
from ..config.schema import ExperimentConfig
from ..data import mixture
from ..data.loading import build_loader, watch
from ..errors import InputError
from ..eval.cache import FeatureCache
from ..experiment import build_dataset, build_labels, eval_loaders, evaluate_datasets
from ..experiment.fit import measure_fit
from ..models.notices import weights_follow
from ..models.prepared import inside
from ..run import checkpoint
from ..run.model import run_dir_of, starting_model
from ..run.records import (LossWindow, MetricsLog, finish_run_json, plot_learning_curves,
                           read_metrics, write_run_json)
from ..run.resume import check_resume_config, record_start, start_weights
from ..tasks import headline_metrics, task_of
from ..utils.files import read_json, write_atomic
from .accelerator import make_accelerator
from .bad_videos import BadVideos
from .optim import (apply_freeze, apply_l2sp, attach_l2sp, build_optimizer, build_scheduler,
                    format_table, group_table)
from .trackers import hyperparameters

logger = logging.getLogger(__name__)


def _resume_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        if (run_dir / "checkpoints" / "latest").is_file():
            raise InputError(f"{run_dir}: this run folder already holds checkpoints; pass --resume to "
                             f"continue it, or choose another output_dir (--set output_dir=...)")
        return None
    return checkpoint.resolve(run_dir if resume == "latest" else resume)


def _batches(accelerator, loader, dataset, start_micro: int):
    """Endless micro-batches from one iterator over the whole run (epochs follow each other
    inside the sampler, so workers prefetch across their boundaries), starting ``start_micro``
    batches in (resume: Accelerate skips them without loading any)."""
    if len(loader) == 0:
        raise InputError(f"dataset {dataset.card.name}: fewer training videos than one batch per process")
    return watch(accelerator.skip_first_batches(loader, start_micro) if start_micro else loader,
                 "training")


def freeze_unused(model, tasks) -> bool:
    """Freeze what no training task uses (a box head that is only evaluated, the logit scale
    beside a linear head): DDP then never waits for a gradient that cannot come. Returns
    whether some step still leaves trainable parameters unused (a mixture of tasks), which DDP
    must be told (``find_unused_parameters``)."""
    used = [task.used_parameters(model) for task in tasks]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    union = set().union(*used) & trainable
    frozen = sorted(trainable - union)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    if frozen:
        logger.info("frozen, no training task uses them: %s", ", ".join(frozen))
    return any((u & union) != union for u in used)


@dataclass
class _Data:
    """A run's datasets, loaders and mixture plan."""
    train_sets: dict
    loaders: dict
    eval_loaders: dict
    mix: mixture.Plan


def _build_data(cfg: ExperimentConfig, labels, backbone) -> _Data:
    t = cfg.train
    train_sets = {n: build_dataset(cfg.datasets[n], "train", labels.classes[n], backbone,
                                   train=True, seed=t.seed) for n in t.datasets}
    mix = mixture.plan(cfg, {n: len(ds) for n, ds in train_sets.items()})  # sizes: proportional
    logger.info("mixture (%s, %s):\n%s", t.sampling, t.schedule, mix.table())
    loaders = {n: build_loader(ds, t.batch_size, True, t.num_workers, cfg.data.stall_timeout)
               for n, ds in train_sets.items()}
    eval_sets = eval_loaders(cfg, labels, backbone)
    return _Data(train_sets, loaders, eval_sets, mix)


def _phase_schedule(optimizer, cfg: ExperimentConfig, mix: mixture.Plan, phase: int):
    """The warmup + cosine schedule of one training phase (co-finetuning has one phase; the
    sequential baseline a second, downstream one). A later phase also starts the optimizer
    afresh: its state is dropped, as a new optimizer's would be. One optimizer object for the
    whole run: Accelerate keeps every prepared optimizer, and would unscale fp16 gradients
    once per optimizer."""
    start, end = mix.phases[phase]
    base = getattr(optimizer, "optimizer", optimizer)  # under Accelerate's wrapper
    if phase > 0:
        base.state.clear()
    return build_scheduler(base, cfg.train.warmup_steps, end - start)


def _read_records(run_dir: Path, step: int) -> tuple[dict | None, list[dict]]:
    """A resumed run's run.json and its metrics rows up to the checkpoint's ``step``: read (a
    corrupt one is an InputError) before anything of the run is rewritten."""
    info, metrics = run_dir / "run.json", run_dir / "metrics.jsonl"
    rows = read_metrics(metrics) if metrics.is_file() else []
    return (read_json(info) if info.is_file() else None,
            [r for r in rows if r.get("step", 0) <= step])


def _start_records(run_dir: Path, accelerator, cfg: ExperimentConfig, labels, mix, groups,
                   previous: tuple[dict | None, list[dict]]) -> MetricsLog:
    """Write config.yaml, run.json, labels.json, mixture.json, param_groups.json and
    metrics.jsonl, each whole or not at all (after a resume has loaded); ``previous``:
    :func:`_read_records` of a resume."""
    t = cfg.train
    save_experiment(cfg, run_dir / "config.yaml")
    write_run_json(run_dir / "run.json", accelerator, t.seed, previous[0])
    write_atomic(run_dir / "labels.json", json.dumps(labels.to_dict(), indent=1))
    write_atomic(run_dir / "mixture.json", json.dumps(
        {"sampling": t.sampling, "schedule": t.schedule, **mix.to_dict()}, indent=1))
    write_atomic(run_dir / "param_groups.json", json.dumps(groups, indent=1))
    return MetricsLog(run_dir / "metrics.jsonl", previous[1])


def _start_model(cfg: ExperimentConfig, labels, resumed_run: Path | bool):
    """The model at step 0 and the checkpoint it started from. The starting weights are loaded
    on resume too (the checkpoint then overwrites them): they decide which parameters are new,
    and are L2-SP's w0."""
    start = start_weights(cfg, resumed_run or None)
    with weights_follow() if resumed_run else contextlib.nullcontext():  # the checkpoint's
        model = starting_model(cfg, labels, start)
    if cfg.model.reinit_last:
        model.reinit_last(cfg.model.reinit_last)
    apply_freeze(model, cfg.train.freeze)
    return model, start


def _log_fit(cfg: ExperimentConfig, accelerator, model, labels, run_dir: Path, log) -> None:
    """``train.fit_measures``: how well the starting weights fit the training data (zero-shot,
    k-NN, probe, LogME; vlcofit.experiment.fit), logged at step 0 before any update."""
    measures = measure_fit(cfg, accelerator, model, labels, cache=FeatureCache(run_dir / "features"),
                           max_per_class=cfg.train.fit_max_per_class)
    if log is not None:
        log.write({"step": 0, **measures})
    accelerator.log(measures, step=0)
    logger.info("fit of the starting weights: %s", measures)


def train(cfg: ExperimentConfig, resume: str | None = None) -> dict[str, float]:
    """Train as ``cfg`` says — one dataset, or a mixture (co-finetuning or the sequential
    baseline); returns the final evaluation metrics. Resumable (``resume``: "latest" or a
    checkpoint path); a resume whose config would train differently is refused, and nothing
    of the run is rewritten before its checkpoint has loaded."""
    t = cfg.train
    if not t.datasets:
        raise InputError("train.datasets: name the dataset(s) to train on, e.g. [demo]")
    run_dir = Path(cfg.output_dir)
    resume_from = _resume_checkpoint(run_dir, resume)
    state = checkpoint.read_state(resume_from) if resume_from else {"step": 0}
    if resume_from is not None:  # before anything of the run is rewritten
        check_resume_config(run_dir_of(resume_from) or run_dir, cfg)
    previous = _read_records(run_dir, state["step"]) if resume_from else (None, [])
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = build_labels(cfg)
    model, start = _start_model(cfg, labels, resume_from is not None
                                and (run_dir_of(resume_from) or run_dir))
    find_unused = freeze_unused(model, [task_of(cfg.datasets[n]) for n in t.datasets])
    accelerator = make_accelerator(cfg, run_dir, find_unused)
    data = _build_data(cfg, labels, model.backbone)
    optimizer = build_optimizer(model, model.new_parameter_names(), t,
                                fused=accelerator.device.type == "cuda")
    groups = group_table(model, optimizer)
    logger.info("parameter groups:\n%s", format_table(groups))
    model, optimizer = accelerator.prepare(model, optimizer)
    attach_l2sp(optimizer)  # w0: the starting weights, on the device, before any step or resume
    loaders = {n: accelerator.prepare(dl) for n, dl in data.loaders.items()}
    eval_loaders = {n: accelerator.prepare(dl) for n, dl in data.eval_loaders.items()}
    step = int(state["step"])
    scheduler = _phase_schedule(optimizer, cfg, data.mix, data.mix.phase_of(step))
    if resume_from is not None:
        checkpoint.load(accelerator, model, optimizer, scheduler, resume_from)
    window = LossWindow(len(t.datasets), accelerator, state.get("log_window"),
                        resume_from and resume_from / "state.json")
    log = None
    if accelerator.is_main_process:
        log = _start_records(run_dir, accelerator, cfg, labels, data.mix, groups, previous)
        if resume_from is None:
            record_start(run_dir, start)
    accelerator.init_trackers("vlcofit", config=hyperparameters(cfg))
    loop = _Loop(cfg, accelerator, model, labels, eval_loaders, run_dir, log,
                 BadVideos(run_dir / "bad_videos.txt", t.max_bad_fraction,
                           {n: len(d) for n, d in data.train_sets.items()},
                           state.get("bad_videos")))
    if t.fit_measures and resume_from is None:
        _log_fit(cfg, accelerator, model, labels, run_dir, loop.log)
    done = data.mix.counts(step)
    batches = {n: _batches(accelerator, loaders[n], data.train_sets[n], done[n] * t.grad_accum)
               for n in t.datasets}
    final = loop.run(step, data.mix, batches, optimizer, scheduler, window)
    for tracker in accelerator.trackers:
        # not accelerator.end_training(): it destroys the process group, and few-shot and
        # compare run several trainings in one launch
        tracker.finish()
    if accelerator.is_main_process:
        finish_run_json(run_dir / "run.json", final_metrics=final, steps=t.steps)
        plot_learning_curves(run_dir / "metrics.jsonl", run_dir / "learning_curve.png",
                             headline_metrics(cfg), {n: len(c) for n, c in labels.classes.items()})
    return final


class _Loop:
    """The step loop of one run: train, log, evaluate, checkpoint."""

    def __init__(self, cfg, accelerator, model, labels, eval_loaders, run_dir: Path,
                 log: MetricsLog | None, bad: BadVideos):
        self.cfg, self.accelerator, self.model, self.labels = cfg, accelerator, model, labels
        self.eval_loaders, self.run_dir, self.log, self.bad = eval_loaders, run_dir, log, bad
        self.rows = {n: labels.rows(n).to(accelerator.device) for n in labels.classes}
        self.main = accelerator.is_main_process

    def evaluate(self, at_step: int, final: bool) -> dict[str, float]:
        out = evaluate_datasets(self.accelerator, self.model, self.eval_loaders, self.cfg,
                                self.labels, self.run_dir / "eval" if final and self.main else None)
        if self.main:
            self.log.write({"step": at_step, **out})
        self.accelerator.log(out, step=at_step)
        return out

    def run(self, step: int, mix: mixture.Plan, batches, optimizer, scheduler,
            window: LossWindow) -> dict[str, float]:
        t, acc = self.cfg.train, self.accelerator
        bar = tqdm(total=t.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not self.main)
        self.model.train()
        phase = mix.phase_of(step)
        while step < t.steps:
            i = int(mix.schedule[step])
            name = t.datasets[i]
            # template draws of a trained text tower: from (seed, step, rank), so resume is exact
            acc.unwrap_model(self.model).seed_text_draws(t.seed, step, acc.process_index)
            loss = _optimizer_step(acc, self.model, optimizer, batches[name], self.rows[name],
                                   task_of(self.cfg.datasets[name]), t,
                                   lambda paths: self.bad.add(name, paths),
                                   t.loss_weights.get(name, 1.0))
            scheduler.step()
            step += 1
            if mix.phase_of(step) != phase:  # transfer learning: downstream starts afresh
                phase = mix.phase_of(step)
                scheduler = _phase_schedule(optimizer, self.cfg, mix, phase)
            window.add(i, loss, t.batch_size * t.grad_accum * acc.num_processes)
            bar.update(1)
            if step % t.log_every == 0 or step == t.steps:
                self._log(window.sums, step, window.seconds(), optimizer, bar)
                window.reset()
            if t.eval_every and step % t.eval_every == 0 and step < t.steps:
                self.evaluate(step, final=False)
                self.model.train()
            if step % t.save_every == 0 or step == t.steps:
                self.bad.sync(acc)
                checkpoint.save(acc, self.model, optimizer, scheduler, step,
                                self.run_dir / "checkpoints", t.keep_checkpoints,
                                extra={"phase": phase, "bad_videos": self.bad.state(),
                                       "log_window": window.state(acc)})
        bar.close()
        return self.evaluate(step, final=True)

    def _log(self, window, step: int, elapsed: float, optimizer, bar) -> None:
        self.bad.sync(self.accelerator)
        row = _log_row(self.accelerator, self.model, optimizer, self.cfg.train.datasets, window,
                       step, elapsed, self.bad.total())
        self.accelerator.log(row, step=step)
        if self.main:
            self.log.write(row)
        bar.set_postfix(loss=f"{row['train/loss']:.3f}",
                        clips_s=f"{row['train/clips_per_s']:.1f}")


def _log_row(accelerator, model, optimizer, names, window: torch.Tensor, step: int,
             elapsed: float, bad: int) -> dict[str, float]:
    """Loss per dataset and overall (averaged over processes), each parameter group's
    learning rate (for the next step), throughput."""
    total = accelerator.reduce(window, "sum").cpu()
    n = accelerator.num_processes
    losses, counts = total[0:-1:2] / n, total[1:-1:2] / n
    row = {"step": step, "train/loss": float(losses.sum() / counts.sum().clamp(min=1))}
    if len(names) > 1:
        row.update({f"train/{name}/loss": float(losses[i] / counts[i])
                    for i, name in enumerate(names) if counts[i] > 0})
    row.update({f"train/lr/{g['name']}": g["lr"] for g in optimizer.param_groups})
    scale = inside(model, lambda m: m.logit_scale.exp().item())  # a shard, under FSDP
    row.update({"train/logit_scale": scale,
                "train/clips_per_s": float(total[-1]) / n / max(elapsed, 1e-9),
                "train/bad_videos": bad})
    if accelerator.device.type == "cuda":  # this process's peak since the run started
        row["train/peak_mem_gib"] = torch.cuda.max_memory_allocated(accelerator.device) / 2**30
    return row


def _optimizer_step(accelerator, model, optimizer, batches, rows: torch.Tensor, task, t,
                    report_bad, loss_weight: float = 1.0) -> torch.Tensor:
    """One optimizer step over ``grad_accum`` micro-batches of one dataset; returns the mean
    micro-batch loss as a detached tensor on the device (no host sync).

    ``loss_weight`` (``train.loss_weights``) scales this step's update: every step trains one
    dataset, so a factor on its loss would be undone by gradient clipping and by Adam's
    normalisation; on the learning rate it acts in every case (for plain SGD without clipping
    it is the same as weighting the loss)."""
    total = 0.0
    for _ in range(t.grad_accum):
        batch = next(batches)
        report_bad(batch["bad"])
        # Accelerate synchronises gradients on the last micro-batch (make_accelerator) and
        # divides each loss by train.grad_accum in backward
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = task.loss(model, batch, rows, t)
            accelerator.backward(loss)
        total = total + loss.detach()
    if t.clip_grad:
        accelerator.clip_grad_norm_(model.parameters(), t.clip_grad)
    lrs = [g["lr"] for g in optimizer.param_groups]
    if loss_weight != 1.0:
        for g in optimizer.param_groups:
            g["lr"] = g["lr"] * loss_weight
    optimizer.step()
    apply_l2sp(optimizer)  # decoupled, at this step's (loss-weighted) lr
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    base = accelerator.unwrap_model(model)
    base.clamp_logit_scales()  # after the step, as open_clip does: the scale keeps its gradient
    if base.train_text:
        base.refresh_text_cache()
    return total / t.grad_accum


def clean_run_dir(run_dir: Path) -> None:
    """Remove a previous run's outputs (used by the demo when asked to start over)."""
    shutil.rmtree(run_dir, ignore_errors=True)
