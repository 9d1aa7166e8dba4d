"""Plain-English captions of the demo clips, derived from the parameters they were drawn with.

A caption says more than the clip's class: the shape, its size, how bright it is (and the dark
background), how fast it moves / turns / changes size and where it starts. The class names are
shape-, size- and speed-blind, so a model trained on captions can learn these attributes and one
trained on the labels need not (the held-out target task, :mod:`vlcofit.data.synthetic.target`,
needs the shape). Each clip gets two captions worded differently (word order, synonyms), as
caption datasets give several per video, so no single template's word order is what is learnt.

Words are relative to the demo's own ranges (:func:`vlcofit.data.synthetic.clips.trajectory`): "small" /
"large" are the thirds of its radius range, "slowly" / "quickly" the halves of its distance,
turn-speed and size-ratio ranges; every word is true of the pixels. Captions stay under the tiny
CLIP's 32-token context (tested) so no word is cut off.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # synthetic imports this module
    from .clips import ClipParams

# class -> (first wording, second wording) of its motion
MOTION_WORDS = {
    "moving left": ("moves left", "slides to the left"),
    "moving right": ("moves right", "slides to the right"),
    "moving up": ("moves up", "rises"),
    "moving down": ("moves down", "drops"),
    "rotating clockwise": ("spins clockwise", "turns clockwise in place"),
    "rotating counterclockwise": ("spins counterclockwise", "turns anticlockwise in place"),
    "growing": ("grows", "expands"),
    "shrinking": ("shrinks", "contracts"),
}
SCALING = ("growing", "shrinking")
ROTATING = ("rotating clockwise", "rotating counterclockwise")


def size_words(p: ClipParams) -> tuple[str, str]:
    """Size at the start: thirds of the moving shapes' radius range (0.14-0.18 of the frame);
    a growing shape starts small, a shrinking one large (0.07-0.1 -> 0.24-0.3 of the frame)."""
    if p.label in SCALING:
        return ("small", "tiny") if p.label == "growing" else ("large", "big")
    r = p.radius[0] / p.size
    if r < 0.14 + 0.04 / 3:
        return "small", "little"
    if r > 0.18 - 0.04 / 3:
        return "large", "big"
    return "medium", "medium-sized"


def colour_words(p: ClipParams) -> tuple[str, str, str]:
    """(shape colour, its other wording, background colour): the shape is 190-255 grey,
    the background 0-50 grey; the split points are the middles of those ranges."""
    light = ("white", "bright white") if p.colour >= 222.5 else ("light grey", "pale grey")
    return (*light, "black" if p.background < 25 else "dark grey")


def is_fast(p: ClipParams) -> bool:
    """Faster than the middle of the class's drawn range: distance travelled (0.4-0.5 of the
    frame), turn per frame (8-14 degrees) or size ratio between first and last frame."""
    if p.label in SCALING:
        ratio = max(p.radius[0], p.radius[-1]) / min(p.radius[0], p.radius[-1])
        return bool(ratio > (0.24 / 0.1 + 0.3 / 0.07) / 2)
    if p.label in ROTATING:
        per_frame = np.rad2deg(abs(p.angle[-1] - p.angle[0])) / (len(p.angle) - 1)
        return bool(per_frame > 11)
    travelled = max(abs(p.cx[-1] - p.cx[0]), abs(p.cy[-1] - p.cy[0])) / p.size
    return bool(travelled > 0.45)


def where_words(p: ClipParams) -> tuple[str, str]:
    """Where the shape starts, in thirds of the frame: ("near the top left", "from the upper
    left"), ("in the middle", "from the centre"), ..."""
    def third(value: float, low: str, high: str) -> str:
        return low if value < p.size / 3 else high if value > 2 * p.size / 3 else ""
    row, column = third(p.cy[0], "top", "bottom"), third(p.cx[0], "left", "right")
    if not row and not column:
        return "in the middle", "from the centre"
    if not row:
        return f"on the {column}", f"from the {column} side"
    if not column:
        return f"near the {row}", f"from the {row}"
    upper = {"top": "upper", "bottom": "lower"}[row]
    return f"near the {row} {column}", f"from the {upper} {column}"


def _extent(p: ClipParams) -> str:
    """How much a rotating shape turns, or how much a scaling one changes, over the clip."""
    if p.label in ROTATING:
        turn = np.rad2deg(abs(p.angle[-1] - p.angle[0]))
        return ("by about a third of a turn" if turn < 150 else "by almost half a turn"
                if turn < 180 else "by more than half a turn")
    ratio = max(p.radius[0], p.radius[-1]) / min(p.radius[0], p.radius[-1])
    n = int(np.clip(round(ratio), 2, 4))
    if p.label == "growing":
        return f"to {({2: 'twice', 3: 'three times', 4: 'four times'})[n]} its size"
    return f"to a {({2: 'half', 3: 'third', 4: 'quarter'})[n]} of its size"


def captions(p: ClipParams) -> tuple[str, str]:
    """Two captions of the clip, worded differently, e.g. "a large white square moves left
    quickly starting near the top right" and "on a black background a big bright white square
    slides to the left fast from the upper right"."""
    size, other_size = size_words(p)
    colour, other_colour, background = colour_words(p)
    motion, other_motion = MOTION_WORDS[p.label]
    fast = is_fast(p)
    speed, other_speed = ("quickly", "fast") if fast else ("slowly", "unhurriedly")
    where, other_where = where_words(p)
    first = f"a {size} {colour} {p.shape} {motion} {speed}"
    if p.label in SCALING or p.label in ROTATING:
        first += f" {where}"
        second = f"on a {background} background a {other_size} {other_colour} {p.shape} " \
                 f"{other_motion} {_extent(p)}"
    else:
        first += f" starting {where}"
        second = f"on a {background} background a {other_size} {other_colour} {p.shape} " \
                 f"{other_motion} {other_speed} {other_where}"
    return first, second
