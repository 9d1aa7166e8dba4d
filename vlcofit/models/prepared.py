"""Running a prepared (DDP, FSDP, DeepSpeed or plain) model: inside its forward, where sharded
parameters are gathered; in evaluation mode; whole on each device for inference.
"""
from __future__ import annotations

import contextlib

import torch


@torch.no_grad()
def inside(model, fn):
    """``fn(video_model)`` run inside the forward of the prepared ``model`` (plain, DDP, FSDP or
    DeepSpeed), without gradients: FSDP gathers sharded parameters around a forward, so code
    there may use any submodule or parameter (the class matrix, the box head, the scales).
    Called from outside, FSDP 2's root parameters could still be shards (rank 1's share of a
    one-element scale is empty). Separately wrapped blocks gather their own parameters when
    called, so ``fn`` reads a block's parameters only by calling it (or via
    ``DTensor.full_tensor``, as :func:`vlcofit.eval.cache.model_fingerprint` does). Under sharding
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
