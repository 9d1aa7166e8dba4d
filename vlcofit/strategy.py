"""The distributed strategy a run gets from ``accelerate launch`` (configs/accelerate/): DDP,
FSDP or DeepSpeed, checked against what was asked for and against the experiment config.

Accelerate 1.x on CPU does not run FSDP: with ``--use_fsdp`` (or an FSDP config file) and
``ACCELERATE_USE_CPU`` it builds a plain DDP model (FSDP 2) or fails with "no available
devices" (FSDP 1). A run that asked for sharding and did not get it would train unsharded and
silently need more memory than planned, so it is refused here, naming what happened.
"""
from __future__ import annotations

import contextlib
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from .errors import InputError
from .schema import TrainConfig


@torch.no_grad()
def inside(model, fn):
    """``fn(video_model)`` run inside the forward of the prepared ``model`` (plain, DDP, FSDP or
    DeepSpeed), without gradients: FSDP gathers sharded parameters around a forward, so code
    there may use any submodule or parameter (the class matrix, the box head, the scales).
    Called from outside, FSDP 2's root parameters could still be shards (rank 1's share of a
    one-element scale is empty). Separately wrapped blocks gather their own parameters when
    called, so ``fn`` reads a block's parameters only by calling it (or via
    ``DTensor.full_tensor``, as :func:`vlcofit.cache.model_fingerprint` does). Under sharding
    every process must make the same calls: each is a collective."""
    return model(call=fn)


def for_inference(accelerator, model):
    """The model of an inference-only command (eval, zero-shot, few-shot features, advise,
    predict): whole on this process's device, not wrapped. Without gradients there is nothing
    to synchronise, and sharding saves what training holds (gradients, optimizer state), not
    weights that fit a device; under any launch the command still splits the videos over the
    processes (its loaders are prepared)."""
    return model.to(accelerator.device)


@contextlib.contextmanager
def evaluating(model):
    """``model`` (prepared or not, or any module) in eval mode inside the block, its own mode
    restored after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


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
