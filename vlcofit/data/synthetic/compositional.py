"""A built-in benchmark with words in it: clips whose class names are plain English
compositions of what is seen, colour x shape x motion ("a red circle moving left"), split into
seen and unseen compositions for zero-shot on names never trained on.

Every colour, shape and motion appears in the seen compositions; some combinations never do
(:func:`unseen`): a model can only name an unseen clip by composing words it learned apart.
Each unseen name is the only unseen one with its colour and shape, so against the unseen names
alone shared words suffice (a random text tower does well too, docs/zero-few-shot.md); scoring against all 48
names (``compositional_all``) is the harder, generalised test.

The clips use the demo's renderer (:mod:`vlcofit.data.synthetic.clips`: shape with an orientation
dot, motion echo, textured dark background), with the shape in its colour. Layout under
``root``: ``train/``, ``val/`` (mp4), ``train.csv`` (seen compositions), ``val_seen.csv`` and
``val_unseen.csv`` (held-out clips of each kind), ``train_unseen.csv`` (clips of the unseen
compositions for few-shot splits only), ``val_unseen_synonyms.csv`` (val_unseen's clips labelled
with the synonym names, prompt file ``compositional_unseen_synonyms``), ``meta.json``. The class names are shipped
prompt files, ``prompts/compositional_seen.txt``, ``compositional_unseen.txt`` (:func:`split_names`)
and ``compositional_all.txt`` (every composition). No horizontal flips: they would swap left and right.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from .clips import SHAPES, ClipParams, already_made, mark_made, paint, trajectory, write_video

COLOURS = {"red": (215, 45, 40), "green": (45, 190, 70), "blue": (55, 95, 235),
           "yellow": (235, 205, 45)}
MOTIONS = ("moving left", "moving right", "moving up", "growing")
# Words never in a training name, one per word that is: the unseen names rewritten with them
# test meaning rather than shared words (an encoder that knows "crimson" is a red)
SYNONYMS = {"red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden",
            "circle": "disc", "square": "box", "triangle": "wedge",
            "moving left": "sliding leftward", "moving right": "drifting rightward",
            "moving up": "rising", "growing": "getting bigger"}
FILES = ("train.csv", "val_seen.csv", "val_unseen.csv", "train_unseen.csv",
         "val_unseen_synonyms.csv")
# 2: train_unseen.csv; 3: val_unseen_synonyms.csv (version 1's clips unchanged in both)
_VERSION = 3


def name(colour: str, shape: str, motion: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape} {motion}"


def compositions() -> list[tuple[str, str, str]]:
    """Every (colour, shape, motion), in a fixed order."""
    return list(itertools.product(COLOURS, SHAPES, MOTIONS))


def unseen(colour: str, shape: str, motion: str) -> bool:
    """Held out when the attribute indices sum to 0 mod 4: 12 of the 48 compositions (each
    colour and motion in 3 of them, each shape in 4), so every attribute is still in at least
    9 seen compositions."""
    c, s, m = list(COLOURS).index(colour), SHAPES.index(shape), MOTIONS.index(motion)
    return (c + s + m) % 4 == 0


def split_names() -> dict[str, list[str]]:
    """``{"seen": [...], "unseen": [...], "unseen_synonyms": [...]}`` class names (the last:
    the unseen ones in the same order, every word replaced by its :data:`SYNONYMS` entry)."""
    out: dict[str, list[str]] = {"seen": [], "unseen": [], "unseen_synonyms": []}
    for combo in compositions():
        out["unseen" if unseen(*combo) else "seen"].append(name(*combo))
        if unseen(*combo):
            out["unseen_synonyms"].append(name(*(SYNONYMS[w] for w in combo)))
    return out


def render(colour: str, shape: str, motion: str, rng: np.random.Generator, size: int,
           num_frames: int) -> np.ndarray:
    """One clip: the demo's motion and renderer, the shape in ``colour``."""
    background = np.full(3, rng.uniform(0, 50))
    texture = background + rng.normal(0, 6, size=(size, size, 3))
    cx, cy, radius, angle = trajectory(motion, rng, size, np.linspace(0, 1, num_frames))
    rgb = np.array(COLOURS[colour], dtype=np.float64) + rng.uniform(-15, 15, size=3)
    params = ClipParams(name(colour, shape, motion), shape, float(background[0]),
                        float(rgb.mean()), cx, cy, radius, angle, size)
    return paint(params, texture, np.clip(rgb, 0, 255), rng)


def _write_rows(root: Path, folder: str, combos, per_class: int, stream: list[int], size: int,
                num_frames: int, fps: int, start: int) -> list[str]:
    rows = []
    for i in range(per_class * len(combos)):
        combo = combos[i % len(combos)]
        clip = render(*combo, np.random.default_rng([*stream, i]), size, num_frames)
        path = f"{folder}/{start + i:06d}.mp4"
        write_video(root / path, clip, fps=fps)
        rows.append(f"{path},{name(*combo)}")
    return rows


def make_compositional(root: str | Path, *, per_class_train: int = 12, per_class_val: int = 4,
                       per_class_fewshot: int = 16, size: int = 64, num_frames: int = 16,
                       fps: int = 8, seed: int = 0) -> Path:
    """Write the benchmark under ``root`` (module docstring); skipped when made already with
    the same parameters. ``train.csv`` holds seen compositions only; ``train_unseen.csv``
    (``per_class_fewshot`` clips of each unseen one) is the pool of K-shot splits for few-shot
    learning of the unseen names, never part of the seen-name training."""
    root = Path(root)
    meta = {"version": _VERSION, "colours": COLOURS, "shapes": SHAPES, "motions": MOTIONS,
            "per_class_train": per_class_train, "per_class_val": per_class_val,
            "per_class_fewshot": per_class_fewshot, "size": size,
            "num_frames": num_frames, "fps": fps, "seed": seed}
    meta = json.loads(json.dumps(meta))  # tuples as lists: compares equal to the file's
    if already_made(root, meta, FILES):
        return root
    for folder in ("train", "val"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for stale in (root / folder).glob("[0-9]*.mp4"):
            stale.unlink()
    seen = [c for c in compositions() if not unseen(*c)]
    held = [c for c in compositions() if unseen(*c)]
    common = dict(size=size, num_frames=num_frames, fps=fps)
    train = _write_rows(root, "train", seen, per_class_train, [seed, 0], start=0, **common)
    val_seen = _write_rows(root, "val", seen, per_class_val, [seed, 1], start=0, **common)
    val_unseen = _write_rows(root, "val", held, per_class_val, [seed, 2],
                             start=len(val_seen), **common)
    # a stream of its own, after the others: version 1's clips stay byte for byte the same
    train_unseen = _write_rows(root, "train", held, per_class_fewshot, [seed, 3],
                               start=len(train), **common)
    to_synonyms = dict(zip(split_names()["unseen"], split_names()["unseen_synonyms"]))
    synonyms = [f"{r.split(',')[0]},{to_synonyms[r.split(',')[1]]}" for r in val_unseen]
    for file, rows in (("train.csv", train), ("val_seen.csv", val_seen),
                       ("val_unseen.csv", val_unseen), ("train_unseen.csv", train_unseen),
                       ("val_unseen_synonyms.csv", synonyms)):
        (root / file).write_text("\n".join(["path,label", *rows]) + "\n")
    mark_made(root, meta)
    return root
