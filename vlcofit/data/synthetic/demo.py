"""The built-in demo datasets written to disk: split files, captions, the generated-folder
bookkeeping.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .clips import (CAPTIONS_VERSION, DEMO_CLASSES, RENDER_VERSION, ClipParams, already_made,
                    draw_clip, mark_made, write_video)
from .words import captions

logger = logging.getLogger(__name__)


SPLIT_FILES = ("train.csv", "val.csv", "train_captions.csv", "val_captions.csv")


def write_split(root: Path, split: str, clips: Iterable[tuple[str, np.ndarray, ClipParams]],
                fps: int) -> None:
    """``(label, frames, params)`` clips -> ``split/NNNNNN.mp4`` in order, ``split.csv``
    (``path,label``) and ``split_captions.csv`` (``path,caption``, two rows a video)."""

    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("[0-9]*.mp4"):  # only files named as we name them
        stale.unlink()
    rows, caption_rows = ["path,label"], [("path", "caption")]
    for i, (label, frames, params) in enumerate(clips):
        name = f"{split}/{i:06d}.mp4"
        write_video(root / name, frames, fps=fps)
        rows.append(f"{name},{label}")
        caption_rows += [(name, text) for text in captions(params)]
    (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    with open(root / f"{split}_captions.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(caption_rows)


def _demo_clips(per_class: int, stream: list[int], size: int,
                num_frames: int) -> Iterator[tuple[str, np.ndarray, ClipParams]]:
    """The demo split's clips in order: classes in turn, clip i drawn from ``stream + [i]``."""
    for i in range(per_class * len(DEMO_CLASSES)):
        label = DEMO_CLASSES[i % len(DEMO_CLASSES)]
        yield (label, *draw_clip(label, np.random.default_rng([*stream, i]), size, num_frames))


def make_demo_dataset(root: str | Path, *, per_class_train: int = 40, per_class_val: int = 10,
                      size: int = 64, num_frames: int = 16, fps: int = 8, seed: int = 0) -> Path:
    """Write the demo dataset under ``root`` (see the module docstring); returns ``root``.

    Deterministic for the parameters; skipped when ``root/meta.json`` records the same ones.
    """
    # "captions" (their wording's version) came after the videos: a folder made before it is
    # rewritten once, with the same video bytes (the draws are unchanged)
    meta = {"version": RENDER_VERSION, "classes": list(DEMO_CLASSES), "per_class_train": per_class_train,
            "per_class_val": per_class_val, "size": size, "num_frames": num_frames, "fps": fps,
            "seed": seed, "captions": CAPTIONS_VERSION}
    return write_generated(Path(root), meta, lambda split_index, per_class: _demo_clips(
        per_class, [seed, split_index], size, num_frames))


def write_generated(root: Path, meta: dict, clips_of: Callable[[int, int], Iterator]) -> Path:
    """Write a generated dataset's two splits (``clips_of(split index, clips a class)`` gives
    a split's clips, :func:`write_split`) unless ``root`` already holds one made with ``meta``
    (which gives ``size``, ``fps`` and ``per_class_{train,val}``); returns ``root``."""
    if meta["size"] % 2 or meta["size"] < 16:
        raise ValueError(f"size must be even and >= 16 (yuv420p), got {meta['size']}")
    if already_made(root, meta, SPLIT_FILES):
        return root
    for split_index, split in enumerate(("train", "val")):
        write_split(root, split, clips_of(split_index, meta[f"per_class_{split}"]), meta["fps"])
    mark_made(root, meta)
    logger.info("wrote generated data to %s", root)
    return root
