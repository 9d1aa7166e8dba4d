"""The training loop, through HF Accelerate: one process, or `accelerate launch` on 1..N GPUs
or machines. `vlcofit train CONFIG` and `accelerate launch -m vlcofit train CONFIG` run this.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from . import checkpoint
from .config import ExperimentConfig, save_experiment
from .errors import InputError
from . import mixture
from .experiment import build_dataset, build_labels, build_loader, build_video_model
from .optim import build_optimizer, build_scheduler
from .runinfo import MetricsLog, finish_run_json, plot_learning_curves, write_run_json
from .tasks import task_of

logger = logging.getLogger(__name__)


def make_accelerator(cfg: ExperimentConfig, run_dir: Path | None) -> Accelerator:
    """One Accelerator per run; TensorBoard logs go to ``<run>/tensorboard``."""
    tasks = {cfg.datasets[n].task for n in cfg.train.datasets}
    handlers = []
    if len(tasks) > 1 or "localization" in tasks:
        # Each step trains one task: the other task's head gets no gradient that step.
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with="tensorboard" if run_dir is not None else None,
        project_dir=str(run_dir) if run_dir is not None else None,
        # Seeded, epoch-aware shuffling: the same order on every process, and on resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
        kwargs_handlers=handlers,
    )


def _resume_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    if resume is None:
        if (run_dir / "checkpoints" / "latest").is_file():
            raise InputError(f"{run_dir}: this run folder already holds checkpoints; pass --resume to "
                             f"continue it, or choose another output_dir (--set output_dir=...)")
        return None
    return checkpoint.resolve(run_dir if resume == "latest" else resume)


def _batches(accelerator, loader, dataset, start_micro: int):
    """Endless micro-batches, epoch after epoch, starting ``start_micro`` batches in (resume)."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise InputError(f"dataset {dataset.card.name}: fewer training videos than one batch per process")
    epoch, skip = divmod(start_micro, per_epoch)
    while True:
        loader.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for batch in (accelerator.skip_first_batches(loader, skip) if skip else loader):
            yield batch
        epoch, skip = epoch + 1, 0


class BadVideos:
    """Unreadable training videos: counted, listed in ``bad_videos.txt``, fatal past a fraction
    of any one dataset."""

    def __init__(self, path: Path, max_fraction: float, sizes: dict[str, int]):
        self.path, self.max_fraction, self.sizes = path, max_fraction, sizes
        self.local: dict[str, set[str]] = {n: set() for n in sizes}
        self.known: dict[str, set[str]] = {n: set() for n in sizes}

    def add(self, name: str, paths: list[str]) -> None:
        self.local[name].update(paths)

    def total(self) -> int:
        return sum(len(v) for v in self.known.values())

    def sync(self, accelerator) -> None:
        """Collective: merge every process's lists, write them, fail past ``max_fraction``."""
        local = {n: sorted(v) for n, v in self.local.items()}
        for part in accelerator.gather_for_metrics([local], use_gather_object=True):
            for name, paths in part.items():
                self.known[name].update(paths)
        if accelerator.is_main_process and self.total():
            self.path.write_text("".join(p + "\n" for n in self.known for p in sorted(self.known[n])))
        for name, paths in self.known.items():
            if len(paths) > self.max_fraction * self.sizes[name]:
                raise InputError(f"{len(paths)} of {self.sizes[name]} training videos of {name} are "
                                 f"unreadable, more than train.max_bad_fraction={self.max_fraction}; "
                                 f"see {self.path}")


def train(cfg: ExperimentConfig, resume: str | None = None) -> dict[str, float]:
    """Train as ``cfg`` says — one dataset, or a mixture (co-finetuning or the sequential
    baseline); returns the final evaluation metrics. Resumable (``resume``: "latest" or a
    checkpoint path)."""
    t = cfg.train
    if not t.datasets:
        raise InputError("train.datasets: name the dataset(s) to train on, e.g. [demo]")
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = _resume_checkpoint(run_dir, resume)
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(t.seed)  # same initial weights on every process
    if accelerator.is_main_process:
        save_experiment(cfg, run_dir / "config.yaml")
        write_run_json(run_dir / "run.json", accelerator, t.seed)
    labels = build_labels(cfg)
    model = build_video_model(cfg, labels)
    if cfg.model.init_from and resume_from is None:
        checkpoint.load_matching(model, checkpoint.resolve(cfg.model.init_from))
    train_sets = {n: build_dataset(cfg.datasets[n], "train", labels.classes[n], model.backbone,
                                   train=True, seed=t.seed) for n in t.datasets}
    mix = mixture.plan(cfg, {n: len(ds) for n, ds in train_sets.items()})  # sizes: proportional
    logger.info("mixture (%s, %s):\n%s", t.sampling, t.schedule, mix.table())
    loaders = {n: build_loader(ds, t.batch_size, True, t.num_workers) for n, ds in train_sets.items()}
    eval_loaders = {n: build_loader(build_dataset(cfg.datasets[n], cfg.eval.split, labels.classes[n],
                                                  model.backbone, train=False, seed=t.seed),
                                    cfg.eval.batch_size, False, t.num_workers)
                    for n in cfg.eval_datasets}
    optimizer = build_optimizer(model, model.new_parameter_names(), t)
    scheduler = build_scheduler(optimizer, t)
    model, optimizer = accelerator.prepare(model, optimizer)
    loaders = {n: accelerator.prepare(dl) for n, dl in loaders.items()}
    eval_loaders = {n: accelerator.prepare(dl) for n, dl in eval_loaders.items()}
    step = checkpoint.load(accelerator, model, optimizer, scheduler, resume_from) if resume_from else 0
    if accelerator.is_main_process:
        (run_dir / "labels.json").write_text(json.dumps(labels.to_dict(), indent=1))
        (run_dir / "mixture.json").write_text(json.dumps(
            {"sampling": t.sampling, "schedule": t.schedule, **mix.to_dict()}, indent=1))
        if resume_from is None:
            (run_dir / "metrics.jsonl").write_text("")
        log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume_from else None)
    accelerator.init_trackers("tensorboard")
    sizes = {n: len(d) for n, d in train_sets.items()}
    bad = BadVideos(run_dir / "bad_videos.txt", t.max_bad_fraction, sizes)
    rows = {n: labels.rows(n).to(accelerator.device) for n in labels.classes}
    done = mix.counts(step)
    batches = {n: _batches(accelerator, loaders[n], train_sets[n], done[n] * t.grad_accum)
               for n in t.datasets}

    def run_eval(at_step: int, final: bool) -> dict[str, float]:
        out = {}
        for n, dl in eval_loaders.items():
            card = cfg.datasets[n]
            out.update(task_of(card).evaluate(
                accelerator, model, dl, card, rows[n], labels.classes[n], cfg.eval.split,
                run_dir / "eval" if final and accelerator.is_main_process else None,
                cfg.eval.max_batches))
        if accelerator.is_main_process:
            log.write({"step": at_step, **out})
        accelerator.log(out, step=at_step)
        return out

    bar = tqdm(total=t.steps, initial=step, desc="train", unit="step", dynamic_ncols=True,
               disable=not accelerator.is_main_process)
    model.train()
    # per dataset: loss sum, steps; then clips. On the device: reading a loss back every step
    # would make the host wait for the GPU at each step instead of queueing the next one.
    # float32, not float64: Apple's MPS has no float64.
    window = torch.zeros(2 * len(t.datasets) + 1, device=accelerator.device)
    window_start = time.perf_counter()
    while step < t.steps:
        i = int(mix.schedule[step])
        name = t.datasets[i]
        loss = _optimizer_step(accelerator, model, optimizer, batches[name], rows[name],
                               task_of(cfg.datasets[name]), t, lambda paths: bad.add(name, paths),
                               t.loss_weights.get(name, 1.0))
        scheduler.step()
        step += 1
        window[2 * i] += loss
        window[2 * i + 1] += 1
        window[-1] += t.batch_size * t.grad_accum * accelerator.num_processes
        bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
            bad.sync(accelerator)
            row = _log_row(accelerator, model, scheduler, t.datasets, window, step,
                           time.perf_counter() - window_start, bad.total())
            accelerator.log(row, step=step)
            if accelerator.is_main_process:
                log.write(row)
            bar.set_postfix(loss=f"{row['train/loss']:.3f}", clips_s=f"{row['train/clips_per_s']:.1f}")
            window.zero_()
            window_start = time.perf_counter()
        if t.eval_every and step % t.eval_every == 0 and step < t.steps:
            run_eval(step, final=False)
            model.train()
        if step % t.save_every == 0 or step == t.steps:
            checkpoint.save(accelerator, model, optimizer, scheduler, step, run_dir / "checkpoints",
                            t.keep_checkpoints)
    bar.close()
    final = run_eval(step, final=True)
    for tracker in accelerator.trackers:
        # not accelerator.end_training(): it destroys the process group, and few-shot and
        # compare run several trainings in one launch
        tracker.finish()
    if accelerator.is_main_process:
        finish_run_json(run_dir / "run.json", final_metrics=final, steps=step)
        plot_learning_curves(run_dir / "metrics.jsonl", run_dir / "learning_curve.png")
    return final


def _log_row(accelerator, model, scheduler, names, window: torch.Tensor, step: int,
             elapsed: float, bad: int) -> dict[str, float]:
    """Loss per dataset and overall (averaged over processes), learning rates, throughput."""
    total = accelerator.reduce(window, "sum").cpu()
    n = accelerator.num_processes
    losses, counts = total[0:-1:2] / n, total[1:-1:2] / n
    row = {"step": step, "train/loss": float(losses.sum() / counts.sum().clamp(min=1))}
    if len(names) > 1:
        row.update({f"train/{name}/loss": float(losses[i] / counts[i])
                    for i, name in enumerate(names) if counts[i] > 0})
    lrs = scheduler.get_last_lr()
    row.update({"train/lr": min(lrs), "train/lr_new": max(lrs),
                "train/logit_scale": accelerator.unwrap_model(model).logit_scale.exp().item(),
                "train/clips_per_s": float(total[-1]) / n / max(elapsed, 1e-9),
                "train/bad_videos": bad})
    if accelerator.device.type == "cuda":  # this process's peak since the run started
        row["train/peak_mem_gib"] = torch.cuda.max_memory_allocated(accelerator.device) / 2**30
    return row


def _optimizer_step(accelerator, model, optimizer, batches, rows: torch.Tensor, task, t,
                    report_bad, loss_weight: float = 1.0) -> torch.Tensor:
    """One optimizer step over ``grad_accum`` micro-batches of one dataset; returns the mean
    (unweighted) micro-batch loss as a detached tensor on the device (no host sync)."""
    total = 0.0
    for micro in range(t.grad_accum):
        batch = next(batches)
        report_bad(batch["bad"])
        # Gradients are all-reduced only on the last micro-batch.
        sync = micro == t.grad_accum - 1
        with accelerator.no_sync(model) if not sync else nullcontext():
            with accelerator.autocast():
                loss = task.loss(model, batch, rows, t)
            accelerator.backward(loss * (loss_weight / t.grad_accum))
        total = total + loss.detach()
    if t.clip_grad:
        accelerator.clip_grad_norm_(model.parameters(), t.clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if accelerator.unwrap_model(model).train_text:
        accelerator.unwrap_model(model).refresh_text_cache()
    return total / t.grad_accum


def clean_run_dir(run_dir: Path) -> None:
    """Remove a previous run's outputs (used by the demo when asked to start over)."""
    shutil.rmtree(run_dir, ignore_errors=True)
