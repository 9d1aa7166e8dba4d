"""The demo's captions: true of the drawn clip, more than the label, two wordings, short."""
from __future__ import annotations

import numpy as np
import pytest

from vlcofit.data.synthetic.clips import DEMO_CLASSES, SHAPES, ClipParams, draw_clip
from vlcofit.data.synthetic.words import MOTION_WORDS, captions, is_fast, size_words, where_words


def _params(label="moving right", shape="square", radius=0.16, x=(0.2, 0.68), y=(0.5, 0.5),
            turn=0.0, colour=240.0, background=10.0, size=64, frames=16) -> ClipParams:
    t = np.linspace(0, 1, frames)
    r = np.full(frames, radius * size) if np.isscalar(radius) \
        else (radius[0] + (radius[1] - radius[0]) * t) * size
    return ClipParams(label, shape, background, colour, (x[0] + (x[1] - x[0]) * t) * size,
                      (y[0] + (y[1] - y[0]) * t) * size, r, np.deg2rad(turn) * t, size)


@pytest.fixture(scope="module")
def drawn():
    """Three clips a class, as the demo draws them (64x64, 16 frames)."""
    return [draw_clip(label, np.random.default_rng([0, 0, i]), 64, 16)[1]
            for i, label in enumerate(DEMO_CLASSES * 3)]


def test_examples():
    assert captions(_params()) == (
        "a medium white square moves right quickly starting on the left",
        "on a black background a medium-sized bright white square slides to the right fast "
        "from the left side")
    spin = _params("rotating counterclockwise", "circle", 0.145, (0.5, 0.5), (0.2, 0.2),
                   turn=-8.5 * 15, colour=200, background=40)
    assert captions(spin) == (
        "a small light grey circle spins counterclockwise slowly near the top",
        "on a dark grey background a little pale grey circle turns anticlockwise in place "
        "by about a third of a turn")
    grow = _params("growing", "triangle", (0.08, 0.27), (0.5, 0.5))
    assert captions(grow)[1].endswith("triangle expands to three times its size")


@pytest.mark.parametrize("travelled, fast", [(0.41, False), (0.49, True)])
def test_speed_follows_the_distance(travelled, fast):
    assert is_fast(_params(x=(0.1, 0.1 + travelled))) is fast
    assert is_fast(_params("moving up", x=(0.5, 0.5), y=(0.8, 0.8 - travelled))) is fast


def test_size_and_start_words():
    assert [size_words(_params(radius=r))[0] for r in (0.141, 0.16, 0.179)] == \
        ["small", "medium", "large"]
    assert size_words(_params("shrinking", radius=(0.28, 0.08)))[0] == "large"
    assert where_words(_params(x=(0.1, 0.6), y=(0.9, 0.9))) == \
        ("near the bottom left", "from the lower left")
    assert where_words(_params(x=(0.5, 0.9), y=(0.5, 0.5))) == ("in the middle", "from the centre")


def test_captions_of_drawn_clips_name_what_the_label_does_not(drawn):
    for p in drawn:
        first, second = captions(p)
        assert first != second
        for text in (first, second):
            assert p.shape in text.split()  # the shape: never in a class name
            assert not (set(SHAPES) - {p.shape}) & set(text.split())
        assert MOTION_WORDS[p.label][0] in first and MOTION_WORDS[p.label][1] in second
        assert ("quickly" in first) is is_fast(p) and ("slowly" in first) is not is_fast(p)
    # both speeds, all sizes and both brightness words occur: the words vary between clips
    words = {w for p in drawn for w in captions(p)[0].split()}
    assert {"quickly", "slowly", "small", "medium", "large", "white", "light"} <= words


def test_captions_fit_the_tiny_text_context(drawn):
    from open_clip.tokenizer import SimpleTokenizer
    tokenizer = SimpleTokenizer()
    longest = max(len(tokenizer.encode(c)) for p in drawn for c in captions(p))
    assert longest + 2 <= 32  # start and end tokens; configs/models/tiny.json context_length
