"""Box-aware transforms: flips, crops and the evaluation squash move boxes with the frames."""
from __future__ import annotations

import pytest
import torch

from vlcofit.data.box_transforms import BoxEvalTransform, BoxTrainTransform, build_box_transform



def _coordinate_frames(height: int, width: int, frames: int = 2) -> torch.Tensor:
    """uint8 [T, 3, H, W]: channel 0 = 4 * x, channel 1 = 4 * y (pixel positions readable)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([4 * xs, 4 * ys, torch.zeros_like(xs)]).to(torch.uint8)
    return image.expand(frames, 3, height, width).clone()


def test_horizontal_flip_maps_x_to_one_minus_x():
    # crop = the whole 40x60 frame (area 1; ratio relative to the frame's), only the flip is random
    height, width, size = 40, 60, 20
    frames = torch.zeros(2, 3, height, width, dtype=torch.uint8)
    frames[..., : width // 2] = 255  # bright left half shows whether the clip was flipped
    transform = BoxTrainTransform(size, flip=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.5], [0.5, 0.0, 0.9, 1.0]])
    flipped = torch.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], 1)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        video, out, keep = transform(frames, boxes)
        assert video.shape == (2, 3, size, size)
        assert keep.tolist() == [0, 1]
        was_flipped = bool(video[0, 0, 0, 0] < 128)  # left column dark: mirrored
        expected = flipped if was_flipped else boxes
        assert torch.allclose(out, expected, atol=1e-6), (seed, out)
        seen.add(was_flipped)
    assert seen == {True, False}


def test_no_flip_when_disabled():
    frames = torch.zeros(1, 3, 20, 20, dtype=torch.uint8)
    frames[..., :10] = 255
    transform = BoxTrainTransform(10, flip=False, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.6]])
    for seed in range(6):
        torch.manual_seed(seed)
        video, out, _ = transform(frames, boxes)
        assert video[0, 0, 0, 0] > 128 and torch.allclose(out, boxes)


def test_known_crop_maps_boxes_as_by_hand():
    # a 40x40 frame, crop area 1/4 and square: a 20x20 crop; output 20 px, so no resampling and
    # the coordinate image tells where the crop was
    frames = _coordinate_frames(40, 40)
    transform = BoxTrainTransform(20, flip=False, scale=(0.25, 0.25),
                                  ratio=(1.0, 1.0), min_box_size=2.0)
    box_px = torch.tensor([[10.0, 12.0, 30.0, 26.0], [0.0, 0.0, 4.0, 4.0]])
    boxes = box_px / 40
    checked = 0
    for seed in range(20):
        torch.manual_seed(seed)
        video, out, keep = transform(frames, boxes)
        left = round(video[0, 0, 0, 0].item() / 4)
        top = round(video[0, 1, 0, 0].item() / 4)
        # by hand: shift by the crop corner, clamp to the 20 px crop, divide by 20
        shifted = box_px - torch.tensor([left, top, left, top])
        expected = shifted.clamp(0, 20) / 20
        corner_kept = left <= 2 and top <= 2
        corner_gone = left >= 4 or top >= 4
        if corner_gone:
            assert keep.tolist() == [0]
            assert torch.allclose(out, expected[:1], atol=1e-5), (seed, left, top, out)
            checked += 1
        elif corner_kept:
            assert keep.tolist() == [0, 1]
            assert torch.allclose(out, expected, atol=1e-5)
            checked += 1
    assert checked >= 10


def test_hand_computed_example():
    # the crop at (left 8, top 4) of a 40x40 frame, 20x20: box (10, 12)-(30, 26) px becomes
    # (2, 8)-(20, 20) in crop pixels = (0.1, 0.4, 1.0, 1.0)
    frames = _coordinate_frames(40, 40)
    transform = BoxTrainTransform(20, flip=False, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    boxes = torch.tensor([[10.0, 12.0, 30.0, 26.0]]) / 40
    for seed in range(200):
        torch.manual_seed(seed)
        video, out, _ = transform(frames, boxes)
        if (round(video[0, 0, 0, 0].item() / 4), round(video[0, 1, 0, 0].item() / 4)) \
                == (8, 4):
            assert torch.allclose(out, torch.tensor([[0.1, 0.4, 1.0, 1.0]]), atol=1e-6)
            return
    pytest.skip("no seed gave the crop at (8, 4)")


def test_falls_back_to_whole_frame_when_no_box_survives():
    frames = _coordinate_frames(40, 40)
    transform = BoxTrainTransform(16, flip=False, scale=(0.1, 0.1))
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.7]])  # zero width: always removed by the crop path
    torch.manual_seed(0)
    video, out, keep = transform(frames, boxes)
    assert keep.tolist() == [0] and torch.allclose(out, boxes)
    # an un-cropped resize: the top-left pixel is the frame's own corner, the bottom-right near it
    assert video[0, 0, 0, 0].item() < 8 and video[0, 0, -1, -1].item() > 140


def test_eval_squashes_and_keeps_coordinates():
    frames = _coordinate_frames(30, 60, frames=3)
    transform = build_box_transform(False, 24)
    assert isinstance(transform, BoxEvalTransform)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.05, 0.3, 0.2, 0.9]])
    video, out, keep = transform(frames, boxes)
    assert video.shape == (3, 3, 24, 24) and video.dtype == torch.uint8  # the model normalises
    assert torch.equal(out, boxes) and keep.tolist() == [0, 1]
    # the full width is kept: the right-most column comes from the frame's right edge
    assert video[0, 0, 0, -1].item() > 4 * 55
    assert video[0, 0, 0, 0].item() < 4 * 3


def test_bad_shapes_are_errors():
    transform = BoxEvalTransform(8)
    with pytest.raises(ValueError, match=r"\[M, 4\]"):
        transform(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 5))
