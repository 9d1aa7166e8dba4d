"""Clip transforms: shapes, uint8 out (the backbone normalises on its device), one crop/flip for
all frames, 3 crops."""
from __future__ import annotations

import pytest
import torch

from vlcofit.data.transforms import TrainTransform, build_transform
from vlcofit.models.backbones.base import Backbone


def _clip(t=4, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8, generator=g)


def test_train_shape_dtype_and_same_crop_for_all_frames():
    frame = _clip(t=1)
    clip = frame.repeat(6, 1, 1, 1)  # identical frames must stay identical
    out = build_transform(True, 32)(clip)
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.uint8
    assert type(out) is torch.Tensor
    assert all(torch.equal(out[0], out[t]) for t in range(6))


def test_backbone_scales_and_normalises_uint8_on_its_device():
    backbone = Backbone()
    backbone.mean, backbone.std = (0.5, 0.25, 0.0), (0.25, 0.5, 1.0)
    clip = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 3, 1, 1).expand(2, 3, 4, 4)
    out = backbone.pixels(clip)
    assert out.dtype == torch.float32
    expected = torch.tensor([(0 - 0.5) / 0.25, (0.2 - 0.25) / 0.5, 1.0])
    assert torch.allclose(out, expected.reshape(1, 3, 1, 1).expand_as(out), atol=1e-6)
    normalised = torch.randn(2, 3, 4, 4)
    assert backbone.pixels(normalised) is normalised  # float input: already normalised


def _is_flipped(clip, out):
    return torch.equal(out, clip.flip(-1))


def test_flip_is_random_and_can_be_disabled():
    clip = _clip(t=3, h=16, w=16)
    full = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the crop is the whole frame
    flipped = []
    for seed in range(20):
        torch.manual_seed(seed)
        out = TrainTransform(16, **full)(clip)
        plain = torch.equal(out, clip)
        assert plain != _is_flipped(clip, out)  # all frames flipped together or none
        flipped.append(_is_flipped(clip, out))
    assert 0 < sum(flipped) < 20
    for seed in range(10):
        torch.manual_seed(seed)
        assert not _is_flipped(clip, TrainTransform(16, flip=False, **full)(clip))


def test_train_randomness_follows_torch_seed():
    clip, transform = _clip(), build_transform(True, 32)
    torch.manual_seed(3)
    a = transform(clip)
    torch.manual_seed(3)
    assert torch.equal(a, transform(clip))
    assert not torch.equal(a, transform(clip))


def test_eval_centre_crop():
    clip = _clip(t=5, h=48, w=64)
    out = build_transform(False, 24)(clip)
    assert out.shape == (1, 5, 3, 24, 24)
    again = build_transform(False, 24)(clip)
    assert torch.equal(out, again)  # deterministic


@pytest.mark.parametrize("height,width", [(48, 96), (96, 48)])
def test_eval_three_crops_along_the_long_side(height, width):
    ramp = torch.linspace(0, 255, max(height, width)).to(torch.uint8)
    clip = torch.zeros(2, 3, height, width, dtype=torch.uint8)
    if width > height:
        clip[:] = ramp[None, None, None, :]
    else:
        clip[:] = ramp[None, None, :, None]
    out = build_transform(False, 24, crops=3)(clip)
    assert out.shape == (3, 2, 3, 24, 24)
    means = out.float().mean(dim=(1, 2, 3, 4)).tolist()
    assert means[0] < means[1] < means[2]  # left/top, centre, right/bottom
    assert means[1] == pytest.approx(127.5, abs=3)  # the centre crop is centred on the ramp


def test_bad_crops():
    with pytest.raises(ValueError):
        build_transform(False, 24, crops=2)
