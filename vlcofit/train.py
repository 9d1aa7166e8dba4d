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
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from . import checkpoint
from .config import ExperimentConfig, save_experiment
from .errors import InputError
from .evaluate import evaluate_classification
from .experiment import LabelSetup, build_dataset, build_labels, build_loader, build_video_model
from .optim import build_optimizer, build_scheduler
from .runinfo import MetricsLog, finish_run_json, plot_learning_curves, write_run_json

logger = logging.getLogger(__name__)


def make_accelerator(cfg: ExperimentConfig, run_dir: Path | None) -> Accelerator:
    """One Accelerator per run; TensorBoard logs go to ``<run>/tensorboard``."""
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with="tensorboard" if run_dir is not None else None,
        project_dir=str(run_dir) if run_dir is not None else None,
        # Seeded, epoch-aware shuffling: the same order on every process, and on resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
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
    """Unreadable training videos: counted, listed in ``bad_videos.txt``, fatal past a fraction."""

    def __init__(self, path: Path, max_fraction: float, dataset_size: int):
        self.path, self.max_fraction, self.size = path, max_fraction, dataset_size
        self.local: set[str] = set()
        self.known: set[str] = set()

    def add(self, paths: list[str]) -> None:
        self.local.update(paths)

    def sync(self, accelerator) -> None:
        """Collective: merge every process's list, write it, fail past ``max_fraction``."""
        merged = set()
        for part in accelerator.gather_for_metrics([sorted(self.local)], use_gather_object=True):
            merged.update(part)
        self.known |= merged
        if accelerator.is_main_process and self.known:
            self.path.write_text("".join(p + "\n" for p in sorted(self.known)))
        if len(self.known) > self.max_fraction * self.size:
            raise InputError(f"{len(self.known)} of {self.size} training videos are unreadable, more than "
                             f"train.max_bad_fraction={self.max_fraction}; see {self.path}")


def train(cfg: ExperimentConfig, resume: str | None = None) -> dict[str, float]:
    """Train as ``cfg`` says; returns the final evaluation metrics. Resumable (``resume``:
    "latest" or a checkpoint path)."""
    if len(cfg.train.datasets) != 1:
        raise InputError("train.datasets: name exactly one dataset to train on, e.g. [demo]")
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = _resume_checkpoint(run_dir, resume)
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(cfg.train.seed)  # same initial weights on every process
    t = cfg.train
    if accelerator.is_main_process:
        save_experiment(cfg, run_dir / "config.yaml")
        write_run_json(run_dir / "run.json", accelerator, t.seed)
    labels = build_labels(cfg)
    model = build_video_model(cfg, labels)
    name = t.datasets[0]
    card = cfg.datasets[name]
    train_set = build_dataset(card, "train", labels.classes[name], model.backbone, train=True, seed=t.seed)
    train_loader = build_loader(train_set, t.batch_size, True, t.num_workers)
    eval_loaders = {n: build_loader(build_dataset(cfg.datasets[n], cfg.eval.split, labels.classes[n],
                                                  model.backbone, train=False, seed=t.seed),
                                    cfg.eval.batch_size, False, t.num_workers)
                    for n in cfg.eval_datasets}
    optimizer = build_optimizer(model, model.new_parameter_names(), t)
    scheduler = build_scheduler(optimizer, t)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_loaders = {n: accelerator.prepare(dl) for n, dl in eval_loaders.items()}
    step = checkpoint.load(accelerator, model, optimizer, scheduler, resume_from) if resume_from else 0
    if accelerator.is_main_process:
        (run_dir / "labels.json").write_text(json.dumps(labels.to_dict(), indent=1))
        log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume_from else None)
        if resume_from is None:
            (run_dir / "metrics.jsonl").write_text("")
    accelerator.init_trackers("tensorboard")
    bad = BadVideos(run_dir / "bad_videos.txt", t.max_bad_fraction, len(train_set))

    def run_eval(at_step: int, final: bool) -> dict[str, float]:
        out = {}
        for n, dl in eval_loaders.items():
            out.update(evaluate_classification(
                accelerator, model, dl, n, labels.rows(n).to(accelerator.device), labels.classes[n],
                out_dir=run_dir / "eval" if final else None, max_batches=cfg.eval.max_batches))
        if accelerator.is_main_process:
            log.write({"step": at_step, **out})
        accelerator.log(out, step=at_step)
        return out

    rows = labels.rows(name).to(accelerator.device)
    batches = _batches(accelerator, train_loader, train_set, step * t.grad_accum)
    bar = tqdm(total=t.steps, initial=step, desc=f"train {name}", unit="step", dynamic_ncols=True,
               disable=not accelerator.is_main_process)
    model.train()
    window_loss, window_clips, window_start = 0.0, 0, time.perf_counter()
    while step < t.steps:
        loss_sum = _optimizer_step(accelerator, model, optimizer, batches, rows, t, bad)
        scheduler.step()
        step += 1
        window_loss += loss_sum
        window_clips += t.batch_size * t.grad_accum * accelerator.num_processes
        bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
            bad.sync(accelerator)
            steps_in_window = (step - 1) % t.log_every + 1
            loss = accelerator.reduce(torch.tensor(window_loss / steps_in_window, device=accelerator.device),
                                      "mean").item()
            elapsed = time.perf_counter() - window_start
            row = {"step": step, "train/loss": loss, "train/lr": scheduler.get_last_lr()[0],
                   "train/lr_new": max(scheduler.get_last_lr()),
                   "train/logit_scale": accelerator.unwrap_model(model).logit_scale.exp().item(),
                   "train/clips_per_s": window_clips / max(elapsed, 1e-9),
                   "train/bad_videos": len(bad.known)}
            accelerator.log(row, step=step)
            if accelerator.is_main_process:
                log.write(row)
            bar.set_postfix(loss=f"{loss:.3f}", clips_s=f"{row['train/clips_per_s']:.1f}")
            window_loss, window_clips, window_start = 0.0, 0, time.perf_counter()
        if t.eval_every and step % t.eval_every == 0 and step < t.steps:
            run_eval(step, final=False)
            model.train()
        if step % t.save_every == 0 or step == t.steps:
            checkpoint.save(accelerator, model, optimizer, scheduler, step, run_dir / "checkpoints",
                            t.keep_checkpoints)
    bar.close()
    final = run_eval(step, final=True)
    accelerator.end_training()
    if accelerator.is_main_process:
        finish_run_json(run_dir / "run.json", final_metrics=final, steps=step)
        plot_learning_curves(run_dir / "metrics.jsonl", run_dir / "learning_curve.png")
    return final


def _optimizer_step(accelerator, model, optimizer, batches, rows: torch.Tensor, t, bad: BadVideos) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean micro-batch loss."""
    total = 0.0
    for micro in range(t.grad_accum):
        batch = next(batches)
        bad.add(batch["bad"])
        # Gradients are all-reduced only on the last micro-batch.
        sync = micro == t.grad_accum - 1
        with accelerator.no_sync(model) if not sync else nullcontext():
            with accelerator.autocast():
                logits = model(batch["video"], rows)
            loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=t.label_smoothing)
            accelerator.backward(loss / t.grad_accum)
        total += loss.item()
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
