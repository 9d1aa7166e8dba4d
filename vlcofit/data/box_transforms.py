"""Box-aware clip transforms (torchvision.transforms.v2): frames and person boxes move together.

Input: uint8 frames ``[T, 3, H, W]`` and boxes ``[M, 4]`` (x1, y1, x2, y2 normalised to the
original frame). Output: ``(video, boxes, keep)`` with video uint8 ``[T, 3, S, S]`` (the model
normalises it on its device: :mod:`vlcofit.data.transforms`), boxes ``[M', 4]`` normalised to
the OUTPUT frame, and ``keep`` long ``[M']`` the indices of the input boxes that survived (so
their labels can follow).

Training: a random resized crop (area fraction in ``[min_scale, 1]``, aspect ratio in
``ratio`` times the frame's own, so that a crop squashed to a square is distorted about as much
as the evaluation squash of the whole frame) and optionally a horizontal flip, drawn once per
clip (the frames are one ``tv_tensors.Video``) and applied to the boxes as
``tv_tensors.BoundingBoxes``; boxes are clamped to the crop, and
``SanitizeBoundingBoxes`` drops those that became degenerate or smaller than ``min_box_size``
output pixels. If no box survives, the sample falls back to an un-cropped resize (flip kept):
a localisation sample must keep at least one box.

Evaluation: the full frame is resized to ``S x S`` (squashed, aspect ratio not kept). A ViT's
position embeddings need a fixed square input, and a centre crop of a wide frame would cut off
the people near its sides; squashing keeps every proposal inside the frame, so its normalised
coordinates are the same in the input and the output frame.

Randomness comes from torch's global RNG (datasets seed it per sample).
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

BoxOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _check(frames: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [T, 3, H, W], got {tuple(frames.shape)}")
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [M, 4], got {tuple(boxes.shape)}")
    return boxes


class BoxTrainTransform:
    """Training: random resized crop + optional flip, boxes follow; see the module docstring.

    ``scale``: the crop's area range (fraction of the frame); ``ratio``: its aspect-ratio range
    relative to the frame's; ``min_box_size``: boxes narrower or shorter than this many output
    pixels after the crop are dropped."""

    def __init__(self, image_size: int, flip: bool = True, scale: tuple[float, float] = (0.4, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), min_box_size: float = 2.0) -> None:
        self.image_size, self.scale, self.ratio = image_size, scale, ratio
        self.train = True
        self._flips = [v2.RandomHorizontalFlip()] if flip else []
        self._sanitize = v2.SanitizeBoundingBoxes(min_size=min_box_size, labels_getter=_keep_of)
        self._crops: dict[tuple[int, int], v2.Compose] = {}  # per frame size (aspect ratio)
        self._resize = v2.Compose([v2.Resize((image_size, image_size), antialias=True),
                                   *self._flips])

    def _crop(self, height: int, width: int) -> v2.Compose:
        if (height, width) not in self._crops:
            aspect = width / height
            ratio = (self.ratio[0] * aspect, self.ratio[1] * aspect)
            crop = v2.RandomResizedCrop(self.image_size, scale=self.scale, ratio=ratio,
                                        antialias=True)
            self._crops[height, width] = v2.Compose([crop, *self._flips, self._sanitize])
        return self._crops[height, width]

    def __call__(self, frames: torch.Tensor, boxes: torch.Tensor) -> BoxOutput:
        """uint8 ``[T, 3, H, W]``, boxes ``[M, 4]`` (original frame, normalised) ->
        (uint8 ``[T, 3, S, S]``, boxes ``[M', 4]`` (output frame, normalised), keep ``[M']``)."""
        boxes = _check(frames, boxes)
        height, width = frames.shape[-2:]
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        sample = {"video": tv_tensors.Video(frames),
                  "boxes": tv_tensors.BoundingBoxes(boxes * scale, format="XYXY",
                                                    canvas_size=(height, width)),
                  "keep": torch.arange(len(boxes))}
        out = self._crop(height, width)(sample)
        if len(boxes) and not len(out["keep"]):  # every box cropped away: keep the whole frame
            out = self._resize(sample)
        size = self.image_size
        video = out["video"].as_subclass(torch.Tensor)
        kept = out["boxes"].as_subclass(torch.Tensor) / size
        return video, kept.clamp_(0.0, 1.0) + 0.0, out["keep"]  # + 0.0: no -0.0 from flips

    def __repr__(self) -> str:
        return (f"BoxTrainTransform(image_size={self.image_size}, scale={self.scale}, "
                f"ratio={self.ratio} x frame aspect, flip={bool(self._flips)})")


def _keep_of(sample: dict) -> torch.Tensor:
    """SanitizeBoundingBoxes' labels: the box indices, so the caller learns which survived."""
    return sample["keep"]


class BoxEvalTransform:
    """Evaluation: squash the full frame to ``S x S``; boxes keep their normalised coordinates."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self.train = False

    def __call__(self, frames: torch.Tensor, boxes: torch.Tensor) -> BoxOutput:
        """uint8 ``[T, 3, H, W]``, boxes ``[M, 4]`` -> (uint8 ``[T, 3, S, S]``, the same boxes
        ``[M, 4]``, keep = ``arange(M)``)."""
        boxes = _check(frames, boxes)
        size = self.image_size
        video = F.resize(tv_tensors.Video(frames), [size, size], antialias=True)
        video = video.as_subclass(torch.Tensor)
        return video, boxes.clone(), torch.arange(len(boxes))

    def __repr__(self) -> str:
        return f"BoxEvalTransform(image_size={self.image_size})"


def build_box_transform(train: bool, image_size: int, flip: bool = True,
                        scale: tuple[float, float] = (0.4, 1.0)
                        ) -> BoxTrainTransform | BoxEvalTransform:
    """The training or evaluation box transform (uint8 out: the model normalises).

    Training only: ``flip`` (card ``hflip``; off where classes say left/right) and ``scale``
    (the crop's area range, card ``[min_crop_scale, 1]``).
    """
    if train:
        return BoxTrainTransform(image_size, flip=flip, scale=scale)
    return BoxEvalTransform(image_size)
