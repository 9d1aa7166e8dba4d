"""Decode benchmark: clips/s for 8-frame clips from long-GOP h264, per decoder.

Writes a few 10 s, 320x240, 30 fps h264 videos with a 250-frame GOP (x264's default keyframe
interval; one keyframe at 0 and one at 250) to a temporary folder, then reads clips from them:

- ``tsn``: the 8 evaluation frames (segment centres) of the whole video;
- ``dense``: 8 frames, stride 4, at a random position.

Each video is opened for each clip, as a dataset item does. Rows: ``naive seek`` (the baseline:
PyAV, a seek to each frame's pts and decoding up to it), ``pyav decode all`` (decode from the
start to the end, as some loaders do), ``pyav`` (vlcofit's reader: sequential from the keyframe
before the first frame, stopping after the last), and every optional decoder installed
(torchcodec, decord2, pytorchvideo: ``pip install -e ".[torchcodec,decord,pytorchvideo]"``;
torchcodec also needs FFmpeg's libraries). Every reader's frames are first checked against the
naive seek's (within one grey level). Arms interleaved over ``--repeats`` rounds; printed: the
median rate, and the medians of the per-round ratios to the naive seek and to vlcofit's PyAV
reader (with their min-max spread).

    python bench/decode.py [--seconds-per-cell 3] [--videos 3] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from vlcofit.data.sampling import dense_indices, tsn_indices
from vlcofit.data.synthetic.clips import write_video
from vlcofit.data.video import BACKENDS, backend_available, open_video

FPS, SECONDS, WIDTH, HEIGHT, GOP = 30, 10, 320, 240, 250


def make_videos(folder: Path, count: int, seconds: int = SECONDS) -> list[Path]:
    """``count`` textured, moving videos (they compress like camera footage, not like noise)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    paths = []
    for v in range(count):
        texture = rng.uniform(0, 255, size=(HEIGHT // 8, WIDTH // 8, 3)).astype(np.float32)
        texture = np.kron(texture, np.ones((8, 8, 1), np.float32))
        frames = np.empty((FPS * seconds, HEIGHT, WIDTH, 3), np.uint8)
        for k in range(len(frames)):
            shifted = np.roll(texture, (k * 2, k * 3), axis=(0, 1))
            wave = 40 * np.sin((xs + 4 * k) / 17 + v)[..., None]
            frames[k] = np.clip(shifted * 0.7 + wave + rng.normal(0, 6, (HEIGHT, WIDTH, 1)), 0, 255)
        path = folder / f"video{v:03d}.mp4"
        write_video(path, frames, fps=FPS, gop=GOP)
        paths.append(path)
    return paths


def naive_seek(path: Path, indices: list[int]) -> torch.Tensor:
    """Baseline: per frame, seek to its pts (lands on the keyframe before) and decode up to it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        step = 1 / (float(stream.time_base) * float(stream.average_rate))
        out = []
        for index in indices:
            target = int(round(index * step))
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts >= target:
                    out.append(frame.to_ndarray(format="rgb24"))
                    break
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def decode_all(path: Path, indices: list[int]) -> torch.Tensor:
    """Decode every frame from the start, keep the requested ones."""
    wanted = set(indices)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        kept = {k: f.to_ndarray(format="rgb24")
                for k, f in enumerate(container.decode(stream)) if k in wanted}
    return torch.from_numpy(np.stack([kept[i] for i in indices])).permute(0, 3, 1, 2)


def backend_reader(backend: str):
    def read(path: Path, indices: list[int]) -> torch.Tensor:
        with open_video(path, backend) as reader:
            return reader.read(indices)
    return read


def clip_plan(kind: str, count: int, seed: int = 0) -> list[list[int]]:
    n = FPS * SECONDS
    if kind == "tsn":
        return tsn_indices(n, 8, train=False) * count
    rng = np.random.default_rng(seed)
    return [dense_indices(n, 8, 4, train=True, rng=rng)[0] for _ in range(count)]


def measure(read, videos: list[Path], clips: list[list[int]], budget: float) -> float:
    """Clips per second, reading clips round-robin over the videos until ``budget`` seconds."""
    read(videos[0], clips[0])  # warm-up (imports, caches)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget and done < len(clips):
        read(videos[done % len(videos)], clips[done])
        done += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-per-cell", type=float, default=3.0)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        videos = make_videos(Path(tmp), args.videos)
        print(f"{args.videos} videos, {SECONDS} s {WIDTH}x{HEIGHT} {FPS} fps h264, GOP {GOP} "
              f"(made in {time.perf_counter() - start:.1f} s); torch threads "
              f"{torch.get_num_threads()}")
        methods = {"naive seek (baseline)": naive_seek, "pyav decode all": decode_all}
        for backend in BACKENDS:
            methods[backend] = backend_reader(backend) if backend_available(backend) else None
        for clip in clip_plan("tsn", 1) + clip_plan("dense", 3):  # all readers agree
            expected = naive_seek(videos[0], clip).int()
            for name, read in methods.items():
                if read is not None:  # within one grey level (the optional decoders' RGB)
                    assert (read(videos[0], clip).int() - expected).abs().max() <= 1, name
        present = {n: r for n, r in methods.items() if r is not None}
        rates: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):  # the arms interleaved, round after round
            for kind in ("tsn", "dense"):
                for name, read in present.items():
                    rate = measure(read, videos, clip_plan(kind, 2000), args.seconds_per_cell)
                    rates.setdefault((name, kind), []).append(rate)
        print(f"\n{'decoder':<24}" + "".join(f"{k + ' clips/s':>15}{'x naive':>9}{'x pyav (min-max)':>19}"
                                            for k in ("tsn", "dense")))
        for name in methods:
            if name not in present:
                print(f"{name:<24}{'not installed':>15}")
                continue
            row = f"{name:<24}"
            for kind in ("tsn", "dense"):
                mine = rates[name, kind]
                vs = [m / b for m, b in zip(mine, rates["naive seek (baseline)", kind])]
                vp = [m / b for m, b in zip(mine, rates["pyav", kind])]
                row += (f"{statistics.median(mine):15.1f}{statistics.median(vs):8.1f}x"
                        f"{statistics.median(vp):10.2f} ({min(vp):.2f}-{max(vp):.2f})")
            print(row, flush=True)


if __name__ == "__main__":
    main()
