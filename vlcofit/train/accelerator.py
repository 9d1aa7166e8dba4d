"""The distributed strategy a run gets from ``accelerate launch`` (configs/accelerate/): DDP,
FSDP or DeepSpeed, checked against what was asked for and against the experiment config.

Accelerate 1.x on CPU does not run FSDP: with ``--use_fsdp`` (or an FSDP config file) and
``ACCELERATE_USE_CPU`` it builds a plain DDP model (FSDP 2) or fails with "no available
devices" (FSDP 1). A run that asked for sharding and did not get it would train unsharded and
silently need more memory than planned, so it is refused here, naming what happened.
"""
from __future__ import annotations

import os
from pathlib import Path

from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import DistributedType, GradientAccumulationPlugin

from ..config.schema import ExperimentConfig, TrainConfig
from ..errors import InputError
from ..utils.distributed import process_state
from .trackers import build_trackers


def _asked(name: str) -> bool:
    return os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() in ("1", "true", "yes")


def check_strategy(accelerator: Accelerator, t: TrainConfig) -> None:
    """Refuse a strategy that did not take effect, or one the training config contradicts."""
    kind = accelerator.distributed_type
    for name, wanted in (("FSDP", DistributedType.FSDP), ("DEEPSPEED", DistributedType.DEEPSPEED)):
        if _asked(name) and kind != wanted:
            raise InputError(
                f"accelerate launch asked for {name} (ACCELERATE_USE_{name}=true) but Accelerate "
                f"set up {kind.value} on {accelerator.device.type}: {name} runs on GPUs (CUDA, "
                f"XPU, NPU, ...) only, and on a CPU Accelerate falls back to unsharded DDP. Use "
                f"configs/accelerate/ddp.yaml here, or run on GPUs")
    if kind == DistributedType.DEEPSPEED:
        _check_deepspeed(accelerator, t)


def _check_deepspeed(accelerator: Accelerator, t: TrainConfig) -> None:
    """DeepSpeed owns accumulation, clipping and the optimizer step: its config must agree."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    for key, ours, name in (("gradient_accumulation_steps", t.grad_accum, "train.grad_accum"),
                            ("gradient_clipping", t.clip_grad or 0.0, "train.clip_grad")):
        theirs = ds.get(key, "auto")
        if theirs != "auto" and float(theirs) != float(ours):
            raise InputError(f"DeepSpeed config {key}={theirs} differs from {name}={ours}: set "
                             f"one to the other (vlcofit steps the optimizer as {name} says)")
    if t.l2sp > 0:
        raise InputError(f"train.l2sp={t.l2sp}: L2-SP moves weights outside the optimizer step, "
                         f"which DeepSpeed's sharded optimizer would not see; use DDP or FSDP")


def accelerator_error(err: Exception) -> InputError:
    """An Accelerator that could not be built (a strategy's package missing, no device)."""
    if isinstance(err, ImportError) and _asked("DEEPSPEED"):
        return InputError(f"accelerate launch asked for DeepSpeed, which is not installed "
                          f"({err}): pip install -e \".[deepspeed]\"")
    if _asked("FSDP"):
        return InputError(f"accelerate launch asked for FSDP, which Accelerate could not set up "
                          f"({type(err).__name__}: {err}): FSDP runs on GPUs only; use "
                          f"configs/accelerate/ddp.yaml here, or run on GPUs")
    return InputError(f"accelerate could not set up this launch's strategy "
                      f"({type(err).__name__}: {err})")


def make_accelerator(cfg: ExperimentConfig, run_dir: Path | None,
                     find_unused: bool = False) -> Accelerator:
    """One Accelerator per run, logging to ``train.trackers`` (TensorBoard: ``<run>/tensorboard``,
    :mod:`vlcofit.train.trackers`). ``find_unused``:
    some training step leaves trainable parameters without a gradient (:func:`freeze_unused`)."""
    # the process group starts here, with the run's collective timeout (Accelerate's
    # InitProcessGroupKwargs did not reach it in every supported version)
    process_state(cfg.train.collective_timeout)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused else []
    # outside the try: a tracker's own error (not installed) is not the strategy's
    trackers = build_trackers(cfg.train.trackers, run_dir) if run_dir is not None else None
    try:
        accelerator = Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            log_with=trackers,
            project_dir=str(run_dir) if run_dir is not None else None,
            # micro-batches per optimizer step, synchronised on the last (DDP's no_sync, FSDP's
            # and DeepSpeed's own); never early at an epoch's end: steps cross epochs
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=cfg.train.grad_accum, sync_with_dataloader=False,
                adjust_scheduler=False),
            step_scheduler_with_optimizer=False,
            kwargs_handlers=handlers,
        )
    except (ImportError, RuntimeError, ValueError) as err:
        raise accelerator_error(err) from None
    check_strategy(accelerator, cfg.train)
    return accelerator
