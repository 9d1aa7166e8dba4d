"""Decoding: frames come back at the requested indices, bad files raise VideoError."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlcofit.data.synthetic.clips import write_video
from vlcofit.data.video.pyav import PyAVReader
from vlcofit.data.video.base import VideoError
from vlcofit.data.video import backend_available, open_video, read_clip_at, read_frames
from vlcofit.errors import InputError


def _value(k: int) -> int:
    """Grey level of frame k in the test videos (period 30: distinct within 30 frames)."""
    return 8 * (k % 30) + 8


def _grey_video(path, n: int, gop: int | None, fps: int = 10, size: int = 16) -> None:
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[:] = np.array([_value(k) for k in range(n)], np.uint8)[:, None, None, None]
    write_video(path, frames, fps=fps, gop=gop)


def _decoded_values(frames: torch.Tensor) -> list[float]:
    return frames.float().mean(dim=(1, 2, 3)).tolist()


def _assert_frames(frames: torch.Tensor, indices: list[int]) -> None:
    assert frames.dtype == torch.uint8 and frames.shape[1] == 3
    assert _decoded_values(frames) == pytest.approx([_value(i) for i in indices], abs=3)


@pytest.fixture(scope="module")
def short_gop(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "gop5.mp4"
    _grey_video(path, 60, gop=5)
    return path


def test_metadata_and_order(short_gop):
    with open_video(short_gop) as reader:
        assert (reader.num_frames, reader.fps) == (60, 10.0)
        indices = [29, 0, 3, 3, 17]  # any order, repeats
        _assert_frames(reader.read(indices), indices)
        assert reader.time_to_index(1.75) == 17


@pytest.fixture
def starts(monkeypatch):
    """Frame indices the reader started decoding from (0 = the start, else a seek)."""
    calls: list[int] = []
    original = PyAVReader._frames_from

    def spy(self, index):
        calls.append(index)
        return original(self, index)

    monkeypatch.setattr(PyAVReader, "_frames_from", spy)
    return calls


def test_sequential_decode_across_keyframes(short_gop, starts):
    indices = [3, 4, 5, 6, 12, 14]  # crosses keyframes 5 and 10
    _assert_frames(read_frames(short_gop, indices), indices)
    assert starts == [0]


def test_forward_seek_when_frames_are_far(short_gop, starts):
    # after two keyframes (0, 5) the reader knows the GOP is 5, so 7 -> 50 is reached by a seek
    indices = [1, 7, 50, 51, 59]
    _assert_frames(read_frames(short_gop, indices), indices)
    assert starts == [0, 50]


def test_initial_seek_in_long_video(tmp_path, starts):
    path = tmp_path / "long.mp4"
    _grey_video(path, 320, gop=40, fps=30, size=16)
    indices = [262, 270, 300, 319]  # first index past the default GOP bound: seeks first
    _assert_frames(read_frames(path, indices), indices)
    assert starts == [262]


def test_mkv_without_frame_count_uses_duration(tmp_path):
    path = tmp_path / "a.mkv"
    _grey_video(path, 30, gop=10)
    with open_video(path) as reader:
        assert reader.num_frames == 30
        _assert_frames(reader.read([0, 15, 29]), [0, 15, 29])


def test_indices_past_the_end_are_clamped(short_gop):
    # as when the container's frame count overstates the stream
    _assert_frames(read_frames(short_gop, [10, 1000]), [10, 59])
    _assert_frames(read_frames(short_gop, [500, 700]), [59, 59])  # sought past the end


def test_read_clip_at(short_gop):
    clip = read_clip_at(short_gop, center_sec=2.0, num_frames=4, stride=2)
    _assert_frames(clip, [16, 18, 20, 22])
    _assert_frames(read_clip_at(short_gop, 0.0, 4, 3), [0, 0, 0, 3])  # clamped at the start


@pytest.mark.parametrize("content", [None, b"", b"random bytes " * 100])
def test_bad_files_raise_video_error(tmp_path, content):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(VideoError) as info:
        read_frames(path, [0])
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_truncated_file_raises_or_clamps(tmp_path, short_gop):
    path = tmp_path / "cut.mp4"
    path.write_bytes(short_gop.read_bytes()[:300])  # header only: no decodable frames
    with pytest.raises(VideoError):
        read_frames(path, [0, 10])


OPTIONAL = ("torchcodec", "decord", "pytorchvideo")


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    """A moving texture (every frame different, colour detail everywhere), short GOP."""
    rng = np.random.default_rng(0)
    base = np.clip(rng.normal(128, 40, size=(48, 64, 3)), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("video") / "texture.mp4"
    write_video(path, np.stack([np.roll(base, 2 * k, axis=1) for k in range(40)]), fps=10, gop=8)
    return path


def test_backend_choice(short_gop):
    with pytest.raises(InputError, match="unknown"):
        open_video(short_gop, backend="opencv")
    for backend in OPTIONAL:
        if not backend_available(backend):
            with pytest.raises(InputError, match=r"not installed \(pip install -e"):
                open_video(short_gop, backend=backend)
    assert isinstance(open_video(short_gop), PyAVReader)


@pytest.mark.parametrize("backend", OPTIONAL)
def test_optional_decoders_return_pyav_frames(textured, backend):
    """Same indices (any order, repeats, past the end), same pixels as PyAV: every decoder here
    links FFmpeg's h264 decoder and converts to RGB as PyAV does; tolerance 1 grey level."""
    if not backend_available(backend):
        pytest.skip(f"{backend} not installed (its extra)")
    indices = [0, 3, 9, 17, 30, 39, 39, 5, 45]
    want = open_video(textured).read(indices).float()
    with open_video(textured, backend=backend) as reader:
        assert (reader.num_frames, reader.fps) == (40, 10.0)
        got = reader.read(indices).float()
    assert got.shape == want.shape and (got - want).abs().max() <= 1
    with pytest.raises(VideoError):
        open_video(textured.parent / "missing.mp4", backend=backend)


def test_torchcodec_without_ffmpeg_is_one_clear_error(textured, monkeypatch):
    if not backend_available("torchcodec"):
        pytest.skip("torchcodec not installed")
    import torchcodec.decoders

    def no_ffmpeg(*args, **kwargs):
        raise RuntimeError("Could not load libtorchcodec. Likely causes:\n 1. FFmpeg is not ...")
    monkeypatch.setattr(torchcodec.decoders, "VideoDecoder", no_ffmpeg)
    with pytest.raises(InputError, match="decoder torchcodec cannot load FFmpeg's libraries"):
        open_video(textured, backend="torchcodec")
