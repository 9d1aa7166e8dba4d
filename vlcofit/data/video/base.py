"""The video reader interface every decoder implements, and its errors."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch


class VideoError(Exception):
    """A video that cannot be read: missing, zero-length, corrupt or without decodable frames."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class VideoReader:
    """An open video. ``num_frames`` and ``fps`` come from the container's metadata.

    ``num_frames`` may overstate the frames that can actually be decoded (broken metadata);
    ``read`` then returns the last decodable frame for indices past the end.
    """

    path: str
    num_frames: int
    fps: float

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` (any order, repeats allowed) -> uint8 ``[N, 3, H, W]``."""
        raise NotImplementedError

    def time_to_index(self, seconds: float) -> int:
        """The frame shown at ``seconds`` from the start of the video (not clamped)."""
        return int(math.floor(seconds * self.fps + 1e-6))

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_file(path: Path) -> None:
    if not path.is_file():
        raise VideoError(path, "no such file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")


def check_indices(path: str, indices: Sequence[int]) -> list[int]:
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"{path}: no frame indices requested")
    if min(indices) < 0:
        raise ValueError(f"{path}: negative frame index {min(indices)}")
    return indices
