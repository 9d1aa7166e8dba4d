"""Frame-index sampling: which frames of an ``n``-frame video make a clip.

Pure functions; training randomness comes from a ``numpy.random.Generator`` passed in.

- ``tsn``: the video is cut into ``T`` equal segments and one frame is taken from each (a random
  frame in training, the centre frame in evaluation). With several test clips, the frame's offset
  inside its segment is shifted evenly: clip c of C takes offset (c + 0.5) / C of each segment.
- ``dense``: ``T`` frames ``stride`` apart; a random start in training, ``num_clips`` clips
  evenly spread (centred in equal chunks of the possible starts) in evaluation.

Short videos: TSN repeats frames when ``n < T`` (each frame fills ``T / n`` segments); a dense clip
that does not fit uses the largest stride that fits, down to TSN-like spreading when ``n < T``.
"""
from __future__ import annotations

import math
from typing import get_args

import numpy as np
import torch

from ..config.schema import ClipSampling

SAMPLINGS = get_args(ClipSampling)


def _check(n: int, num_frames: int, num_clips: int) -> None:
    if n < 1:
        raise ValueError(f"cannot sample from a video with {n} frames")
    if num_frames < 1 or num_clips < 1:
        raise ValueError(f"num_frames ({num_frames}) and num_clips ({num_clips}) must be >= 1")


def tsn_indices(n: int, num_frames: int, train: bool, rng: np.random.Generator | None = None,
                num_clips: int = 1) -> list[list[int]]:
    """``num_clips`` lists of ``num_frames`` indices in ``[0, n)``, one frame per segment.

    Segment k covers frames ``[k n / T, (k + 1) n / T)``. Evaluation takes, for clip c of C,
    ``floor((k + (c + 0.5) / C) * n / T)``: the exact centre frame for one clip.
    """
    _check(n, num_frames, num_clips)
    ks = np.arange(num_frames)
    clips = []
    for c in range(num_clips):
        if train:
            offsets = _rng(rng).random(num_frames)
            positions = np.floor((ks + offsets) * n / num_frames).astype(np.int64)
        else:  # integer arithmetic: floor(((k C + c + 1/2) n) / (T C)), no float rounding
            positions = ((2 * (ks * num_clips + c) + 1) * n) // (2 * num_frames * num_clips)
        clips.append(np.minimum(positions, n - 1).tolist())
    return clips


def dense_indices(n: int, num_frames: int, stride: int, train: bool,
                  rng: np.random.Generator | None = None, num_clips: int = 1) -> list[list[int]]:
    """``num_clips`` lists of ``num_frames`` indices ``stride`` apart, inside ``[0, n)``."""
    _check(n, num_frames, num_clips)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if n < num_frames:
        return tsn_indices(n, num_frames, train, rng, num_clips)
    stride = min(stride, (n - 1) // max(num_frames - 1, 1) or 1)  # the largest stride that fits
    span = (num_frames - 1) * stride + 1
    room = n - span  # number of possible starts - 1
    if train:
        starts = _rng(rng).integers(0, room + 1, size=num_clips).tolist()
    else:
        starts = [int(math.floor((c + 0.5) * room / num_clips)) for c in range(num_clips)]
    return [[s + k * stride for k in range(num_frames)] for s in starts]


def sample_indices(n: int, num_frames: int, sampling: str = "tsn", stride: int = 4,
                   train: bool = False, rng: np.random.Generator | None = None,
                   num_clips: int = 1) -> list[list[int]]:
    """Frame indices of ``num_clips`` temporal views of an ``n``-frame video, one list per view.

    ``sampling`` is ``tsn`` or ``dense`` (``stride`` is used by ``dense`` only); ``rng`` is
    required when ``train``.
    """
    if sampling == "tsn":
        return tsn_indices(n, num_frames, train, rng, num_clips)
    if sampling == "dense":
        return dense_indices(n, num_frames, stride, train, rng, num_clips)
    raise ValueError(f"unknown sampling {sampling!r} (choose from {', '.join(SAMPLINGS)})")


def clip_at_time(center_sec: float, fps: float, num_frames: int, stride: int,
                 n: int | None = None) -> list[int]:
    """``num_frames`` indices ``stride`` apart centred on the frame at ``center_sec``.

    The centre frame is index ``num_frames // 2`` of the clip (as in SlowFast's AVA loader);
    indices are clamped to ``[0, n)`` when ``n`` is given.
    """
    if num_frames < 1 or stride < 1 or fps <= 0:
        raise ValueError("num_frames and stride must be >= 1 and fps > 0")
    center = int(math.floor(center_sec * fps + 1e-6))
    indices = [center + (k - num_frames // 2) * stride for k in range(num_frames)]
    upper = (n - 1) if n is not None else None
    return [max(0, i if upper is None else min(i, upper)) for i in indices]


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("training sampling needs an rng (numpy.random.Generator)")
    return rng


class SharedEpoch:
    """The training epoch, as persistent DataLoader workers must see it: a one-element tensor in
    shared memory. A plain attribute set in the main process would stay at its old value in the
    workers' copies of the dataset, and every epoch would repeat the first one's draws."""

    def __init__(self) -> None:
        self._value = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value.fill_(epoch)

    def get(self) -> int:
        return int(self._value.item())

    def epoch(self, later: int = 0) -> int:
        """This epoch, or the one ``later`` epochs on (an :class:`EpochBatches` item index)."""
        return self.get() + later

    def generator(self, seed: int, index: int, later: int = 0) -> np.random.Generator:
        """The random draws of item ``index`` in epoch ``epoch(later)``: a function of (seed,
        epoch, index)."""
        return np.random.default_rng([seed & 0xFFFFFFFF, self.epoch(later), index])


class EpochBatches:
    """Training batches over endless epochs, so one DataLoader iterator serves the whole run and
    its workers keep prefetching across epoch boundaries (a new iterator per epoch made the run
    wait while they refilled their queues: bench/epoch_boundary.py).

    Epoch e's order is ``torch.randperm(n)`` from a generator seeded ``seed + e`` — the order
    Accelerate's seedable sampler gave each epoch — cut into batches of ``batch_size``, the
    last partial one dropped. Item ``e * n + i`` stands for record i in epoch e (the datasets'
    ``__getitem__`` splits it). Accelerate shards the batches over processes (round-robin, as
    before) and skips the first ones on resume without loading them. ``len``: batches per epoch.
    """
    drop_last = True

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self):
        epoch = 0
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            order = (order + epoch * self.n).tolist()
            for b in range(len(self)):
                yield order[b * self.batch_size:(b + 1) * self.batch_size]
            epoch += 1
