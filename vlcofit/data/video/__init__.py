"""Video decoding: open a file, read frames by index, as uint8 tensors ``[T, 3, H, W]``.

Backends: ``pyav`` (default, always installed); ``torchcodec``, ``decord`` (the decord2 fork)
and ``pytorchvideo`` (its ``EncodedVideo``) as optional extras, imported only when selected
(:mod:`vlcofit.data.video.backends`). All raise :class:`VideoError` for a missing, empty,
corrupt or undecodable file; callers decide whether to skip it (training) or fail.

The PyAV reader decodes sequentially from the keyframe before the first requested frame and stops
after the last one: long-GOP h264 makes a seek per frame cost up to a GOP of decoding each, so
frames that are close are cheaper to reach by decoding through. It seeks forward only when the
next requested frame is more than twice the longest keyframe interval seen so far away: the seek
then lands on a keyframe past the current position and saves at least one GOP of decoding.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Sequence, get_args

import torch

from ...config.schema import Decoder
from ...errors import InputError
from ..sampling import clip_at_time
from . import backends as video_backends
from .base import VideoReader
from .pyav import PyAVReader

logger = logging.getLogger(__name__)

BACKENDS = get_args(Decoder)


# backend -> (module it imports, what installs it); the readers of optional backends live in
# video_backends.py
_MODULES = {"pyav": ("av", "pip install av"),
            "torchcodec": ("torchcodec", 'pip install -e ".[torchcodec]" (and FFmpeg 4-8)'),
            "decord": ("decord", 'pip install -e ".[decord]" (decord2, the maintained fork)'),
            "pytorchvideo": ("pytorchvideo", 'pip install -e ".[pytorchvideo]"')}


def _reader(backend: str) -> type[VideoReader]:
    if backend == "pyav":
        return PyAVReader
    return video_backends.READERS[backend]


def backend_available(backend: str) -> bool:
    """Whether ``backend``'s package is installed (without importing it)."""

    return backend in _MODULES and importlib.util.find_spec(_MODULES[backend][0]) is not None


def check_backend(backend: str) -> None:
    """Raise InputError if ``backend`` is unknown or its package is not installed."""
    if backend not in BACKENDS:
        raise InputError(f"decoder {backend!r} is unknown (choose from {', '.join(BACKENDS)})")
    if not backend_available(backend):
        raise InputError(f"decoder {backend!r} is selected but not installed "
                         f"({_MODULES[backend][1]}), or use decoder: pyav")


def open_video(path: str | Path, backend: str = "pyav", threads: int = 0) -> VideoReader:
    """Open ``path`` with ``backend`` (one of BACKENDS); use as a context manager.

    ``threads``: decoding threads (0: the decoder decides; 1 suits many DataLoader workers).
    Raises InputError for an unknown or uninstalled backend, VideoError for an unreadable file.
    """
    check_backend(backend)
    return _reader(backend)(path, threads=threads)


def read_frames(path: str | Path, indices: Sequence[int], backend: str = "pyav") -> torch.Tensor:
    """Frames ``indices`` of the video at ``path`` -> uint8 ``[len(indices), 3, H, W]``."""
    with open_video(path, backend) as reader:
        return reader.read(indices)


def read_clip_at(path: str | Path, center_sec: float, num_frames: int, stride: int,
                 backend: str = "pyav") -> torch.Tensor:
    """``num_frames`` frames ``stride`` apart centred at ``center_sec`` -> uint8 ``[T, 3, H, W]``.

    Indices outside the video are clamped to its first/last frame (e.g. AVA keyframes near the
    ends of a segment).
    """

    with open_video(path, backend) as reader:
        indices = clip_at_time(center_sec, reader.fps, num_frames, stride, reader.num_frames)
        return reader.read(indices)
