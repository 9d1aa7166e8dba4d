"""Clip transforms (torchvision.transforms.v2): uint8 frames in, uint8 ``S x S`` clips out.

Training: a random resized crop and (optionally) a horizontal flip, the same for every frame of a
clip (the clip is a ``tv_tensors.Video``, so v2 draws one set of parameters per call).
Evaluation: resize the short side to ``image_size``, then a centre crop or three crops along
the long side (left/centre/right). Clips stay uint8 until the model's device, where the
backbone scales and normalises them (``Backbone.pixels``): a quarter of float32's bytes through
the workers, pinned memory and the host-to-device copy.

Flipping swaps left and right: turn it off (``flip=False``) for datasets whose classes say which
way something moves (Something-Something's "from left to right", the demo's "moving left").
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


class TrainTransform:
    """uint8 ``[T, 3, H, W]`` -> uint8 ``[T, 3, S, S]``; random, from torch's global RNG."""

    def __init__(self, image_size: int, flip: bool = True, scale: tuple[float, float] = (0.4, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.image_size = image_size
        self.train = True
        steps = [v2.RandomResizedCrop(image_size, scale=scale, ratio=ratio, antialias=True)]
        if flip:
            steps.append(v2.RandomHorizontalFlip())
        self._transform = v2.Compose(steps)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        out = self._transform(tv_tensors.Video(frames))
        return out.as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"TrainTransform({self._transform})"


class EvalTransform:
    """uint8 ``[T, 3, H, W]`` -> uint8 ``[crops, T, 3, S, S]``: short side resize, 1 or 3 crops."""

    def __init__(self, image_size: int, crops: int = 1) -> None:
        if crops not in (1, 3):
            raise ValueError(f"crops must be 1 or 3, got {crops}")
        self.image_size = image_size
        self.crops = crops
        self.train = False

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        frames = F.resize(tv_tensors.Video(frames), size, antialias=True)
        height, width = frames.shape[-2:]
        if self.crops == 1:
            views = [F.center_crop(frames, [size, size])]
        else:  # left/top, centre, right/bottom along the long side
            long_side = max(height, width)
            starts = [0, (long_side - size) // 2, long_side - size]
            centre = ((min(height, width) - size) // 2)
            boxes = [(centre, s) if width >= height else (s, centre) for s in starts]
            views = [F.crop(frames, top, left, size, size) for top, left in boxes]
        return torch.stack(views).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"EvalTransform(image_size={self.image_size}, crops={self.crops})"


def build_transform(train: bool, image_size: int, crops: int = 1, flip: bool = True,
                    scale: tuple[float, float] = (0.4, 1.0)) -> TrainTransform | EvalTransform:
    """The training or evaluation transform (uint8 out: the model normalises).

    Training returns ``[T, 3, S, S]``; evaluation ``[crops, T, 3, S, S]``. Training only:
    ``flip`` must be False for datasets with left/right classes (card ``hflip``); ``scale`` is
    the random crop's area range as a fraction of the frame (card ``min_crop_scale``).
    """
    if train:
        return TrainTransform(image_size, flip=flip, scale=scale)
    return EvalTransform(image_size, crops=crops)
