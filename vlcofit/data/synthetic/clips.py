"""The built-in demo dataset: synthetic motion clips written as real h264 mp4 files.

Each video shows one shape (circle, square or triangle, with a contrasting dot that makes its
orientation visible) on a random textured background, doing its class's motion. The classes
(``prompts/demo.txt``) differ only in how the shape changes over time, so no single frame tells
"moving left" from "moving right": a model must compare frames. A tiny ViT learns them in minutes
on a CPU. Training clips must not be flipped horizontally (left/right, clockwise classes).

Layout under ``root``: ``train/NNNNNN.mp4``, ``val/NNNNNN.mp4``, ``train.csv`` and ``val.csv``
(``path,label`` with class names), ``train_captions.csv`` and ``val_captions.csv``
(``path,caption``: two plain-English captions a video naming shape, size, brightness, motion,
speed and start, :mod:`vlcofit.data.synthetic.words`) and ``meta.json`` (the parameters; same
parameters -> skipped). :mod:`vlcofit.data.synthetic.target` draws a held-out task with other
classes from the same shapes and motions.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DEMO_CLASSES = (
    "moving left", "moving right", "moving up", "moving down",
    "rotating clockwise", "rotating counterclockwise", "growing", "shrinking",
)
SHAPES = ("circle", "square", "triangle")
TRAIL = ((3, 0.15), (2, 0.3), (1, 0.5))  # (frames back, opacity) of the motion echo
RENDER_VERSION = 5  # bump when the rendering changes, so old folders are regenerated
CAPTIONS_VERSION = 1  # bump when the caption wording (synthetic_words) changes


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8, gop: int | None = None,
                crf: int = 20) -> None:
    """Write uint8 RGB frames ``[T, H, W, 3]`` (H, W even) as an h264/yuv420p mp4.

    ``gop``: keyframe interval (x264's default, 250, when None).
    """
    import av

    # threads 1: fastest for tiny clips. no-asm: x264's assembly reads the frame buffers'
    # uninitialised padding, and identical frames then gave different bytes now and then
    # (reproduced; C code only: same bytes every time, and these clips encode in milliseconds).
    options = {"crf": str(crf), "preset": "veryfast", "threads": "1", "x264-params": "no-asm=1"}
    if gop is not None:
        options.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def trajectory(label: str, rng: np.random.Generator, size: int, t: np.ndarray) -> tuple:
    """Per-frame centre x, y, radius and angle (radians) for class ``label``; ``t`` in [0, 1]."""
    ones = np.ones_like(t)
    angle = rng.uniform(0, 2 * np.pi) * ones
    if label in ("growing", "shrinking"):
        small, large = rng.uniform(0.07, 0.1) * size, rng.uniform(0.24, 0.3) * size
        radius = small + (large - small) * (t if label == "growing" else 1 - t)
        cx, cy = rng.uniform(0.35, 0.65, size=2) * size
        return cx * ones, cy * ones, radius, angle
    radius = rng.uniform(0.14, 0.18) * size * ones
    margin = radius[0] + 1
    if label.startswith("rotating"):
        speed = np.deg2rad(rng.uniform(8, 14)) * (len(t) - 1)  # total turn over the clip
        sign = 1 if label == "rotating clockwise" else -1  # y points down: +angle is clockwise
        cx, cy = rng.uniform(margin, size - margin, size=2)
        return cx * ones, cy * ones, radius, angle + sign * speed * t
    distance = rng.uniform(0.4, 0.5) * size
    along = rng.uniform(margin, size - margin - distance) + distance * t  # increasing
    across = rng.uniform(margin, size - margin) * ones
    if label in ("moving left", "moving up"):
        along = size - along
    if label in ("moving left", "moving right"):
        return along, across, radius, angle
    return across, along, radius, angle


def shape_coverage(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` (circumradius r) at shape-frame coords."""
    if shape == "circle":
        distance = np.sqrt(u * u + v * v) - r
    elif shape == "square":
        distance = np.maximum(np.abs(u), np.abs(v)) - 0.75 * r
    else:  # equilateral triangle: inradius r/2, outward edge normals at 60, 180, 300 degrees
        normals = np.deg2rad([60.0, 180.0, 300.0])
        distance = np.max([u * np.cos(a) + v * np.sin(a) for a in normals], axis=0) - r / 2
    return np.clip(0.5 - distance, 0.0, 1.0)


def draw_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark grey background and a light grey shape: a tiny model trained from scratch then
    spends its few minutes on the motion, not on colour invariance."""
    return np.full(3, rng.uniform(0, 50)), np.full(3, rng.uniform(190, 255))


@dataclass(frozen=True)
class ClipParams:
    """What one clip shows, as drawn (grey levels 0-255, pixels, radians; arrays per frame):
    the captions (:mod:`vlcofit.data.synthetic.words`) are a function of these alone."""
    label: str
    shape: str
    background: float  # grey level of the (textured) background
    colour: float  # grey level of the shape; its orientation dot is 255 - colour
    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    size: int  # frame side


def render_clip(label: str, rng: np.random.Generator, size: int = 64,
                num_frames: int = 16) -> np.ndarray:
    """One clip of class ``label`` (a DEMO_CLASSES name) -> uint8 ``[T, size, size, 3]``."""
    return draw_clip(label, rng, size, num_frames)[0]


def draw_clip(label: str, rng: np.random.Generator, size: int = 64, num_frames: int = 16,
              shape: str | None = None) -> tuple[np.ndarray, ClipParams]:
    """:func:`render_clip`'s frames and the parameters they were drawn with. ``shape`` given:
    that shape, not a drawn one (the target task's classes name it); None: drawn first, so the
    demo's draws (and videos) are those of every earlier version."""
    if shape is None:
        shape = SHAPES[rng.integers(len(SHAPES))]
    background, colour = draw_colours(rng)
    texture = background + rng.normal(0, 6, size=(size, size, 3))  # static per video
    cx, cy, radius, angle = trajectory(label, rng, size, np.linspace(0, 1, num_frames))
    params = ClipParams(label, shape, float(background[0]), float(colour[0]), cx, cy, radius,
                        angle, size)
    return paint(params, texture, colour, rng), params


def paint(p: ClipParams, texture: np.ndarray, colour: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    """The frames of ``p`` over ``texture``, with per-frame pixel noise (drawn last)."""
    size, num_frames = p.size, len(p.cx)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    def layers(k: int) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = xs - p.cx[k], ys - p.cy[k]
        cos, sin = np.cos(p.angle[k]), np.sin(p.angle[k])
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        alpha = shape_coverage(p.shape, u, v, p.radius[k])[..., None]
        dot = shape_coverage("circle", u - 0.5 * p.radius[k], v, 0.22 * p.radius[k])[..., None]
        return alpha, dot

    for k in range(num_frames):
        image = texture.copy()
        # A fading echo of the last positions (like a long exposure): the direction of a motion
        # shows within a clip of a few frames, so a tiny model learns it in minutes on a CPU.
        for lag, opacity in TRAIL:
            if k - lag >= 0:
                alpha, dot = layers(k - lag)
                image = image * (1 - opacity * alpha) + colour * opacity * alpha
                image = image * (1 - opacity * dot) + (255 - colour) * opacity * dot
        alpha, dot = layers(k)
        image = image * (1 - alpha) + colour * alpha
        image = image * (1 - dot) + (255 - colour) * dot
        image += rng.normal(0, 3, size=image.shape)
        frames[k] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def already_made(root: Path, meta: dict,
                 files: tuple[str, ...] = ("train.csv", "val.csv")) -> bool:
    """Whether ``root`` holds a complete generated dataset made with exactly ``meta`` (and its
    ``files``); if not, its stale mark is removed (``meta.json`` is written last, so a partial
    folder never counts)."""
    meta_path = root / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta \
            and all((root / f).is_file() for f in files):
        logger.info("generated data already in %s", root)
        return True
    meta_path.unlink(missing_ok=True)
    return False


def mark_made(root: Path, meta: dict) -> None:
    """Record a finished generation (see :func:`already_made`)."""
    (root / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


