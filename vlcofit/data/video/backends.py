"""The optional decoders behind :func:`vlcofit.data.video.open_video`: torchcodec, decord
(decord2) and pytorchvideo's ``EncodedVideo``. Each returns the frames PyAV returns for the same
indices (tests/test_video.py compares them on generated mp4s); a package that is installed but
cannot run (torchcodec without FFmpeg's libraries) is an InputError saying what is missing, not
a per-video error that would count every video as unreadable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ...errors import InputError
from .base import VideoError, VideoReader, check_file, check_indices
from .pyav import PyAVReader


def _opened(reader: VideoReader, path: str | Path) -> Path:
    """The checks before a decoder opens ``path``; sets ``reader.path``."""
    path = Path(path)
    check_file(path)
    reader.path = str(path)
    return path


def _check_frames(reader: VideoReader) -> None:
    if reader.num_frames <= 0:
        raise VideoError(Path(reader.path), "no frames")


class TorchCodecReader(VideoReader):
    """torchcodec reader (``pip install -e ".[torchcodec]"``; needs FFmpeg's shared libraries)."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        from torchcodec.decoders import VideoDecoder

        path = _opened(self, path)
        try:
            self._decoder = VideoDecoder(self.path, seek_mode="approximate",
                                         num_ffmpeg_threads=threads)
            meta = self._decoder.metadata
            self.fps = float(meta.average_fps)
            self.num_frames = int(meta.num_frames or round(meta.duration_seconds * self.fps))
        except (RuntimeError, ValueError, TypeError) as err:
            if "libtorchcodec" in str(err):  # the package, not this video
                raise InputError(f"decoder torchcodec cannot load FFmpeg's libraries (install "
                                 f"FFmpeg 4-8, e.g. apt-get install ffmpeg), or use decoder: "
                                 f"pyav: {str(err).splitlines()[0]}") from None
            raise VideoError(path, f"cannot open ({err})") from None
        _check_frames(self)

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        indices = [min(i, self.num_frames - 1) for i in check_indices(self.path, indices)]
        try:
            return self._decoder.get_frames_at(indices=indices).data
        except (RuntimeError, ValueError, IndexError) as err:
            raise VideoError(self.path, f"decoding failed ({err})") from None


class DecordReader(VideoReader):
    """decord reader (``pip install -e ".[decord]"``: decord2, the maintained fork of decord)."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import decord

        path = _opened(self, path)
        try:
            self._reader = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=threads)
            self.num_frames = len(self._reader)
            self.fps = float(self._reader.get_avg_fps())
        except (decord.DECORDError, RuntimeError) as err:
            raise VideoError(path, f"cannot open ({err})") from None
        _check_frames(self)

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        import decord

        indices = [min(i, self.num_frames - 1) for i in check_indices(self.path, indices)]
        try:
            frames = self._reader.get_batch(indices).asnumpy()  # [T, H, W, 3]
        except (decord.DECORDError, RuntimeError) as err:
            raise VideoError(self.path, f"decoding failed ({err})") from None
        return torch.from_numpy(frames).permute(0, 3, 1, 2)


class PyTorchVideoReader(VideoReader):
    """pytorchvideo's ``EncodedVideo`` (``pip install -e ".[pytorchvideo]"``; its PyAV decoder),
    which reads by time: the window from the first to the last requested frame is decoded and
    each frame picked by its offset in it (frame k at k / fps, as PyAV numbers them)."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        from pytorchvideo.data.encoded_video import EncodedVideo

        path = Path(path)
        with PyAVReader(path) as meta:  # frame count and rate; also the readability check
            self.num_frames, self.fps = meta.num_frames, meta.fps
        self.path = str(path)
        try:
            self._video = EncodedVideo.from_path(self.path, decode_audio=False, decoder="pyav")
        except (RuntimeError, ValueError, OSError) as err:
            raise VideoError(path, f"cannot open ({err})") from None

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        indices = [min(i, self.num_frames - 1) for i in check_indices(self.path, indices)]
        first, last = min(indices), max(indices)
        try:
            clip = self._video.get_clip((first - 0.5) / self.fps, (last + 0.5) / self.fps)
        except (RuntimeError, ValueError, OSError) as err:
            raise VideoError(self.path, f"decoding failed ({err})") from None
        video = clip["video"] if clip is not None else None  # [3, T, H, W] float 0-255
        if video is None or video.shape[1] == 0:
            raise VideoError(self.path, f"no frames decoded in {first}..{last}")
        offsets = torch.tensor([min(i - first, video.shape[1] - 1) for i in indices])
        return video.permute(1, 0, 2, 3)[offsets].round().clamp(0, 255).to(torch.uint8)

    def close(self) -> None:
        self._video.close()


READERS = {"torchcodec": TorchCodecReader, "decord": DecordReader,
           "pytorchvideo": PyTorchVideoReader}
