"""The built-in localisation demo: synthetic AVA-format videos, boxes and proposals (no download).

Each video (default 96x80, 8 fps, 10 s) shows 2-4 "actor slots" on a dark textured background.
A slot holds a sequence of tracks; a track is one bright shape (circle, square or triangle with a
contrasting dot that shows its orientation) that lives from about 1 s before its first keyframe
to 1 s after its last one, doing a fixed set of actions (multi-label): one motion (moving left /
right / up / down, standing still) and at most one of rotating, growing, shrinking, blinking.
Between two tracks of a slot one keyframe is left without that slot's actor, so some keyframes
have no box at all (written as ``video_id,timestamp`` rows). A clip of 8 frames 2 apart (1.75 s)
centred on a keyframe sees the action: a tiny model can learn the classes on a CPU in minutes.
Classes are long-tailed by construction (quotas per split: "standing still" is ~8x as frequent
as "blinking"); their ids (``prompts/demo_ava.txt``) skip 6, as AVA's label map skips ids.
Training must not flip horizontally (left/right classes).

Layout under ``root`` (official AVA formats, readable by :mod:`vlcofit.data.ava_formats`)::

    videos/<video_id>.mp4                     h264 videos (video ids train_000, val_000, ...)
    train.csv, val.csv                        ground truth, keyframes at 1 Hz from 1 s to 9 s
    proposals_{train,val}.pkl / .csv          person proposals: jittered boxes + false positives
    val_excluded_timestamps.csv               two excluded val keyframes
    labelmap.pbtxt                            the label map (as prompts/demo_ava.txt)
    meta.json                                 the parameters (same parameters -> skipped)
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ava_formats import AvaTable, format_timestamp, write_groundtruth, write_labelmap_pbtxt
# the classification demo's drawing and generation bookkeeping
from .clips import SHAPES, already_made, draw_colours, mark_made, shape_coverage, write_video

logger = logging.getLogger(__name__)

DEMO_AVA_ACTIONS = {1: "moving left", 2: "moving right", 3: "moving up", 4: "moving down",
                    5: "standing still", 7: "rotating", 8: "growing", 9: "shrinking",
                    10: "blinking"}
# Share of tracks per motion / extra action in each split (exact quotas, then shuffled).
_MOTIONS = {5: 0.34, 2: 0.26, 1: 0.18, 4: 0.13, 3: 0.09}
_EXTRAS = {0: 0.51, 7: 0.26, 8: 0.11, 9: 0.08, 10: 0.04}  # 0: none
_VERSION = 2  # bump when the rendering changes, so old folders are regenerated


@dataclass
class _Track:
    """One actor: alive over [start, end) seconds, labelled on ``keyframes``."""
    start: float
    end: float
    keyframes: list
    actions: tuple = ()
    shape: str = "circle"
    colour: np.ndarray | None = None
    origin: tuple = (0.0, 0.0)  # centre (px) at ``start``
    velocity: tuple = (0.0, 0.0)  # px / s
    radii: tuple = (7.0, 7.0)  # radius at start and at end (growing / shrinking: geometric)
    angle: float = 0.0
    spin: float = 0.0  # rad / s
    blink: int = -1  # phase (frames) of a 2 Hz bright/dim cycle; -1: no blinking


def _quota(rng: np.random.Generator, n: int, shares: dict) -> list:
    """``n`` values with the given shares (rounded, remainder to the most common), shuffled."""
    counts = {k: int(round(p * n)) for k, p in shares.items()}
    top = max(shares, key=shares.get)
    counts[top] += n - sum(counts.values())
    values = [k for k, c in counts.items() for _ in range(max(c, 0))][:n]
    return [values[i] for i in rng.permutation(len(values))]


def _schedule(rng: np.random.Generator, last_keyframe: int, fps: int) -> list[_Track]:
    """Tracks of one video: 2-4 slots, each a run of 1-5 keyframes, one keyframe between runs.

    A track is drawn from one frame after the keyframe before its first one until (not
    including) the keyframe after its last one: a keyframe where it is not labelled never
    shows it, and the 1.75 s clips of its own keyframes show it in all frames but at most one."""
    tracks = []
    for _ in range(int(rng.integers(2, 5))):
        position = 1 + int(rng.random() < 0.3)
        while position <= last_keyframe:
            length = min(int(rng.integers(1, 6)), last_keyframe - position + 1)
            keyframes = list(range(position, position + length))
            tracks.append(_Track(keyframes[0] - 1.0 + 1.0 / fps, keyframes[-1] + 1.0, keyframes))
            position += length + 1
    return tracks


def _place(track: _Track, rng: np.random.Generator, width: int, height: int) -> None:
    """Shape, colour and motion of a track whose ``actions`` are set; stays inside the frame."""
    track.shape = SHAPES[int(rng.integers(len(SHAPES)))]
    track.colour = rng.uniform(150, 255, size=3)
    small, large = rng.uniform(3.5, 4.5), rng.uniform(10.0, 12.0)
    track.radii = ((small, large) if 8 in track.actions else (large, small)
                   if 9 in track.actions else (rng.uniform(6.0, 9.0),) * 2)
    margin = max(track.radii) + 1.0
    duration = track.end - track.start
    centre = [rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)]
    velocity = [0.0, 0.0]
    for motion, (axis, sign) in {1: (0, -1), 2: (0, 1), 3: (1, -1), 4: (1, 1)}.items():
        if motion in track.actions:
            extent = (width, height)[axis]
            room = extent - 2 * margin
            speed = rng.uniform(0.75, 1.0) * room / duration
            along = margin + rng.uniform(0, room - speed * duration)
            centre[axis] = along if sign > 0 else extent - along
            velocity[axis] = sign * speed
    track.origin, track.velocity = tuple(centre), tuple(velocity)
    track.angle = rng.uniform(0, 2 * np.pi)
    track.spin = rng.choice([-1.0, 1.0]) * rng.uniform(2.0, 3.0) if 7 in track.actions else 0.0
    track.blink = int(rng.integers(4)) if 10 in track.actions else -1


def _draw(image: np.ndarray, track: _Track, seconds: float, frame: int) -> tuple:
    """Composite ``track`` at time ``seconds`` onto ``image`` [H, W, 3] (only the pixels near
    it, for speed); returns its mask there and the mask's (top, left) offset."""
    elapsed = seconds - track.start
    r = track.radii[0] * (track.radii[1] / track.radii[0]) ** (elapsed / (track.end - track.start))
    cx = track.origin[0] + track.velocity[0] * elapsed
    cy = track.origin[1] + track.velocity[1] * elapsed
    top, left = max(int(cy - r) - 2, 0), max(int(cx - r) - 2, 0)
    bottom = min(int(cy + r) + 3, image.shape[0])
    right = min(int(cx + r) + 3, image.shape[1])
    ys, xs = np.mgrid[top:bottom, left:right] + 0.5
    angle = track.angle + track.spin * elapsed
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = (xs - cx) * cos + (ys - cy) * sin, -(xs - cx) * sin + (ys - cy) * cos
    alpha = shape_coverage(track.shape, u, v, r)[..., None]
    dot = shape_coverage("circle", u - 0.5 * r, v, 0.25 * r)[..., None]
    colour = track.colour
    if track.blink >= 0 and (frame + track.blink) // 2 % 2:  # dim every other quarter second
        colour = colour * 0.4
    patch = image[top:bottom, left:right]
    patch *= 1 - alpha
    patch += alpha * (colour * (1 - dot) + (255 - track.colour) * dot)
    return alpha[..., 0] > 0.5, (top, left)


def _mask_box(mask: np.ndarray, offset: tuple, width: int, height: int) -> np.ndarray:
    """Normalised x1, y1, x2, y2 of the pixels of a boolean mask placed at (top, left)."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    top, left = offset
    if not len(cols):  # a shape below a pixel: not drawn at these sizes, but keep a valid box
        return np.array([left / width, top / height, (left + 1) / width, (top + 1) / height])
    return np.array([(left + cols[0]) / width, (top + rows[0]) / height,
                     (left + cols[-1] + 1) / width, (top + rows[-1] + 1) / height])


def _render(tracks: list[_Track], rng: np.random.Generator, width: int, height: int, fps: int,
            seconds: int) -> tuple[np.ndarray, dict]:
    """Frames uint8 [T, H, W, 3] and {(track index, keyframe): normalised box [4]}."""
    background, _ = draw_colours(rng)
    texture = background + rng.normal(0, 6, size=(height, width, 3))
    frames = np.empty((seconds * fps, height, width, 3), np.uint8)
    boxes = {}
    for k in range(len(frames)):
        t = k / fps
        image = texture.copy()
        for i, track in enumerate(tracks):
            if track.start <= t < track.end:
                mask, offset = _draw(image, track, t, k)
                if k % fps == 0 and k // fps in track.keyframes:
                    boxes[i, k // fps] = _mask_box(mask, offset, width, height)
        frames[k] = np.clip(image, 0, 255)
    noise = rng.standard_normal(frames.shape, dtype=np.float32) * 3  # sensor noise, all at once
    return np.clip(frames + noise, 0, 255).astype(np.uint8), boxes


def _proposals(rng: np.random.Generator, boxes: list[np.ndarray]) -> np.ndarray:
    """[N >= 1, 5] person proposals of a keyframe: jittered true boxes (mostly confident) and a
    few low-scoring false positives."""
    rows = []
    for box in boxes:
        size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        jittered = np.clip(box + rng.normal(0, 0.05, 4) * size, 0, 1)
        jittered[2:] = np.maximum(jittered[2:], jittered[:2] + 0.02)
        score = rng.uniform(0.82, 0.99) if rng.random() > 0.1 else rng.uniform(0.4, 0.78)
        rows.append([*np.clip(jittered, 0, 1), score])
    for _ in range(max(int(rng.poisson(0.7)), int(not rows))):  # never empty
        x, y = rng.uniform(0, 0.8, 2)
        w, h = rng.uniform(0.08, 0.2, 2)
        rows.append([x, y, min(x + w, 1.0), min(y + h, 1.0), rng.uniform(0.05, 0.7)])
    return np.asarray(rows, np.float32).reshape(-1, 5)


def _write_split(root: Path, split: str, videos: int, rng: np.random.Generator, *, width: int,
                 height: int, fps: int, seconds: int) -> list:
    """Videos, ground truth and proposals of one split; returns its keyframe keys."""
    schedules = [_schedule(rng, seconds - 1, fps) for _ in range(videos)]
    every = [track for tracks in schedules for track in tracks]
    for track, motion, extra in zip(every, _quota(rng, len(every), _MOTIONS),
                                    _quota(rng, len(every), _EXTRAS)):
        track.actions = (motion,) if extra == 0 else (motion, extra)
    keys, rows, proposals = [], [], {}
    for v, tracks in enumerate(schedules):
        video_id = f"{split}_{v:03d}"
        for track in tracks:
            _place(track, rng, width, height)
        frames, boxes = _render(tracks, rng, width, height, fps, seconds)
        write_video(root / "videos" / f"{video_id}.mp4", frames, fps=fps)
        for t in range(1, seconds):
            keys.append((video_id, t))
            present = [(i, boxes[i, t]) for i, tr in enumerate(tracks) if t in tr.keyframes]
            rows += [(len(keys) - 1, box, action, i) for i, box in present
                     for action in tracks[i].actions]
            proposals[keys[-1]] = _proposals(rng, [box for _, box in present])
    index, box, label, person = zip(*rows)
    table = AvaTable.from_arrays(keys, index, np.array(box), np.array(label),
                                 person_ids=np.array(person))
    write_groundtruth(root / f"{split}.csv", table)
    _write_proposals(root / f"proposals_{split}", proposals)
    return keys


def _write_proposals(stem: Path, proposals: dict) -> None:
    """Both official forms: a pickle {"video_id,timestamp": [N, 5]} and a CSV."""
    named = {f"{v},{format_timestamp(t)}": arr for (v, t), arr in proposals.items()}
    with open(stem.with_suffix(".pkl"), "wb") as f:
        pickle.dump(named, f)
    lines = [f"{name},{x1:.3f},{y1:.3f},{x2:.3f},{y2:.3f},{s:.4f}\n"
             for name, arr in named.items() for x1, y1, x2, y2, s in arr.tolist()]
    stem.with_suffix(".csv").write_text("".join(lines))


def make_demo_ava(root: str | Path, *, num_train_videos: int = 32, num_val_videos: int = 12,
                  size: tuple[int, int] = (96, 80), fps: int = 8, seconds: int = 10,
                  seed: int = 0) -> Path:
    """Write the localisation demo under ``root`` (see the module docstring); returns ``root``.

    ``size`` is (width, height), both even. Deterministic for the parameters; skipped when
    ``root/meta.json`` records the same ones.
    """
    width, height = size
    if width % 2 or height % 2 or min(width, height) < 48:
        raise ValueError(f"size must be even and >= 48 (yuv420p, room to move), got {size}")
    if seconds < 3 or fps < 4:
        raise ValueError("need seconds >= 3 and fps >= 4")
    root = Path(root)
    meta = {"version": _VERSION, "actions": {str(k): v for k, v in DEMO_AVA_ACTIONS.items()},
            "num_train_videos": num_train_videos, "num_val_videos": num_val_videos,
            "size": [width, height], "fps": fps, "seconds": seconds, "seed": seed}
    if already_made(root, meta):
        return root
    (root / "videos").mkdir(parents=True, exist_ok=True)
    for stale in (root / "videos").glob("*_[0-9][0-9][0-9].mp4"):  # only files named as ours
        stale.unlink()
    keys = {}
    for split_index, (split, videos) in enumerate((("train", num_train_videos),
                                                   ("val", num_val_videos))):
        rng = np.random.default_rng([seed, split_index])
        keys[split] = _write_split(root, split, videos, rng, width=width, height=height,
                                   fps=fps, seconds=seconds)
    excluded = [keys["val"][1], keys["val"][len(keys["val"]) // 2]]
    (root / "val_excluded_timestamps.csv").write_text(
        "".join(f"{v},{format_timestamp(t)}\n" for v, t in excluded))
    write_labelmap_pbtxt(root / "labelmap.pbtxt", DEMO_AVA_ACTIONS)
    mark_made(root, meta)
    logger.info("wrote the localisation demo to %s", root)
    return root
