"""A held-out target task for the demo: other classes drawn from the same visual vocabulary.

Six classes (``prompts/demo_target.txt``), the shape crossed with the direction of a sideways
motion: circle / square / triangle moving left / right. The clips are the demo's (same renderer,
same size, colour, speed and start ranges, :func:`vlcofit.data.synthetic.clips.draw_clip`), only the
shape is set by the class instead of drawn at random.

Why these classes: they sit at the three levels of what the source data teaches.

- The coarse demo labels (moving sideways / vertically / rotating / changing size) put every
  target clip in one group: an encoder trained on them need not keep either factor.
- The fine demo labels name the direction but never the shape (every shape appears equally in
  every class): an encoder trained on them is at best right on the direction, about 1/3 here
  (chance 1/6), unless shape survives in its features by accident.
- The demo captions name both, the shape in each of them (:mod:`vlcofit.data.synthetic.words`).

So transfer from the four training arms (coarse, fine, captions, fine + captions) is expected to
order by how much of the shape and direction each kept, and a frozen fine-label encoder is not
already perfect on it. Both factors are hard for a tiny ViT (a shape spans about two of its 16 px
patches; the Quick start demo learns direction slowest), so no arm is expected near 100 %.
The clips are drawn from other seeds than the demo's (``_STREAM``): no target clip is a demo clip.

Layout under ``root``: as the demo (``train/``, ``val/``, ``{train,val}.csv``, captions CSVs of
the same wording, ``meta.json``). Default 24 train + 10 val clips a class: 204 videos, seconds
to probe or fine-tune. No horizontal flips: they would swap left and right.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .clips import CAPTIONS_VERSION, RENDER_VERSION as _DEMO_VERSION, SHAPES, ClipParams, draw_clip
from .demo import write_generated

DIRECTIONS = ("moving left", "moving right")  # demo classes whose motion the target reuses
# class name -> (shape, demo motion class)
TARGET_CLASSES = {f"{shape} {motion}": (shape, motion) for shape in SHAPES for motion in DIRECTIONS}
_VERSION = 1  # bump when the class design changes, so old folders are regenerated
_STREAM = 7  # clip seeds [seed, split, 7, i]: 4 words, never a demo clip's [seed, split, i]


def _target_clips(per_class: int, stream: list[int], size: int,
                  num_frames: int) -> Iterator[tuple[str, np.ndarray, ClipParams]]:
    """The split's clips in order: classes in turn, clip i drawn from ``stream + [i]``."""
    names = tuple(TARGET_CLASSES)
    for i in range(per_class * len(names)):
        name = names[i % len(names)]
        shape, motion = TARGET_CLASSES[name]
        rng = np.random.default_rng([*stream, i])
        yield (name, *draw_clip(motion, rng, size, num_frames, shape=shape))


def make_demo_target(root: str | Path, *, per_class_train: int = 24, per_class_val: int = 10,
                     size: int = 64, num_frames: int = 16, fps: int = 8, seed: int = 0) -> Path:
    """Write the target task under ``root`` (see the module docstring); returns ``root``.

    Deterministic for the parameters; skipped when ``root/meta.json`` records the same ones.
    """
    meta = {"version": _VERSION, "render_version": _DEMO_VERSION, "classes": list(TARGET_CLASSES),
            "per_class_train": per_class_train, "per_class_val": per_class_val, "size": size,
            "num_frames": num_frames, "fps": fps, "seed": seed, "captions": CAPTIONS_VERSION}
    return write_generated(Path(root), meta, lambda split_index, per_class: _target_clips(
        per_class, [seed, split_index, _STREAM], size, num_frames))
