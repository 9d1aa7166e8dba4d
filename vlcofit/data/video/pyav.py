"""The PyAV reader (the default decoder): seeks to the keyframe before each wanted frame, decodes
only what a clip needs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .base import VideoError, VideoReader, check_file, check_indices

logger = logging.getLogger(__name__)


# Until two keyframes are seen, assume x264's default keyframe interval (the longest common one)
# so that close frames are decoded through rather than sought.
_DEFAULT_GOP = 250


class PyAVReader(VideoReader):
    """PyAV (FFmpeg) reader; see the module docstring for the decoding strategy."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import av

        self._av = av
        path = Path(path)
        check_file(path)
        self.path = str(path)
        try:
            self._container = av.open(self.path)
        except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise VideoError(path, f"cannot open ({err})") from None
        try:
            self._init_stream(threads)
        except BaseException:
            self._container.close()
            raise

    def _init_stream(self, threads: int) -> None:
        if not self._container.streams.video:
            raise VideoError(self.path, "no video stream")
        stream = self._stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads  # 0: FFmpeg picks
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or float(rate) <= 0:
            raise VideoError(self.path, "unknown frame rate")
        self.fps = float(rate)
        self._tb = float(stream.time_base) if stream.time_base else 1.0 / self.fps
        self._start = stream.start_time or 0
        self.num_frames = int(stream.frames or 0)
        if self.num_frames <= 0:  # e.g. webm/mkv carry no frame count: use the duration
            if stream.duration:
                seconds = stream.duration * self._tb
            elif self._container.duration:
                seconds = self._container.duration / 1e6  # AV_TIME_BASE
            else:
                seconds = 0.0
            self.num_frames = int(round(seconds * self.fps))
        if self.num_frames <= 0:
            raise VideoError(self.path, "no frames (zero duration and no frame count)")

    def close(self) -> None:
        self._container.close()

    def _frame_index(self, frame, previous: int | None) -> int:
        if frame.pts is None:
            return 0 if previous is None else previous + 1
        return int(round((frame.pts - self._start) * self._tb * self.fps))

    def _frames_from(self, index: int):
        """Decoded frames from the keyframe at or before frame ``index``."""
        if index > 0:
            target = self._start + int(index / self.fps / self._tb)
            self._container.seek(target, stream=self._stream, backward=True, any_frame=False)
        elif self._decoded_any:
            self._container.seek(self._start, stream=self._stream, backward=True, any_frame=False)
        self._decoded_any = True
        return self._container.decode(self._stream)

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        indices = check_indices(self.path, indices)
        try:
            frames = self._decode(sorted(set(indices)))
        except self._av.FFmpegError as err:
            raise VideoError(self.path, f"decoding failed ({err})") from None
        return torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2)

    def _decode(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """``{index: [H, W, 3] uint8}`` for every index in ``wanted`` (sorted, unique).

        A wanted index gets the last frame whose index is <= it (the frame on screen at that
        time), so gaps in the timestamps and counts that overstate the stream are harmless.
        """
        out: dict[int, np.ndarray] = {}
        self._decoded_any = False
        keyframes: list[int] = []
        position, previous, k = None, None, 0
        start = wanted[0] if wanted[0] > _DEFAULT_GOP else 0
        stream = self._frames_from(start)
        sought = int(start > 0)  # seek at most once per wanted frame (irregular GOPs could loop)
        while k < len(wanted):
            if (position is not None and sought <= k
                    and wanted[k] - position > 2 * _gop_bound(keyframes, position)):
                stream, previous, sought = self._frames_from(wanted[k]), None, k + 1
            frame = next(stream, None)
            if frame is None:
                break
            index = self._frame_index(frame, position)
            position = index
            if frame.key_frame and (not keyframes or index > keyframes[-1]):
                keyframes.append(index)
            while k < len(wanted) and index >= wanted[k]:
                chosen = frame if index == wanted[k] or previous is None else previous[1]
                out[wanted[k]] = chosen.to_ndarray(format="rgb24")
                k += 1
            previous = (index, frame)
        if previous is None and not out:
            if wanted[0] > 0:  # sought past the real end (overstated count): read the tail
                return self._decode_tail(wanted)
            raise VideoError(self.path, "no decodable frames")
        last = previous[1].to_ndarray(format="rgb24") if previous is not None else None
        for index in wanted[k:]:  # past the end of the decodable stream: clamp to the last frame
            out[index] = last if last is not None else out[max(out)]
        if k < len(wanted):
            logger.debug("%s: frames %s past the decodable end (%s); clamped", self.path,
                         wanted[k:], position)
        return out

    def _decode_tail(self, wanted: list[int]) -> dict[int, np.ndarray]:
        last = None
        for frame in self._frames_from(0):
            last = frame
        if last is None:
            raise VideoError(self.path, "no decodable frames")
        array = last.to_ndarray(format="rgb24")
        return {index: array for index in wanted}


def _gop_bound(keyframes: list[int], position: int) -> int:
    """An upper bound on the keyframe interval: the longest seen so far (a guess before two)."""
    since_last = position - keyframes[-1] if keyframes else position
    if len(keyframes) < 2:
        return max(_DEFAULT_GOP, since_last)
    return max(max(np.diff(keyframes)), since_last)
