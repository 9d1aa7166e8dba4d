"""The published retrieval protocol (``clip4clip``) against values CLIP4Clip's own code gives.

Expected values were computed by CLIP4Clip's ``metrics.py`` and the reshape of its
``main_task_retrieval.py`` (github.com/ArrowLuo/CLIP4Clip at 508ffa3, its newest commit) on the
deterministic matrices below; a random sweep of 600 matrices (with and without ties, one and
several captions per video, captions shuffled) matched bit for bit when this was written.
"""
import numpy as np
import pytest
import torch

from vlcofit.metrics.retrieval import retrieval_metrics

COUNTS = {"single": [1] * 12, "multi": [1, 3, 2, 4, 1, 2, 3, 1, 2]}

CLIP4CLIP = {  # (captions per video, ties) -> CLIP4Clip's metrics
    ("single", False): {
        "t2v_R1": 0.0, "t2v_R5": 41.666666666666664, "t2v_R10": 83.33333333333333,
        "t2v_MdR": 6.5, "t2v_MnR": 6.5, "v2t_R1": 16.666666666666668,
        "v2t_R5": 41.666666666666664, "v2t_R10": 91.66666666666667, "v2t_MdR": 7.0,
        "v2t_MnR": 6.166666666666667},
    ("single", True): {  # a tied query counts once per tied position: 32 t2v entries, not 12
        "t2v_R1": 6.25, "t2v_R5": 39.0625, "t2v_R10": 78.125, "t2v_MdR": 7.0, "t2v_MnR": 6.875,
        "v2t_R1": 7.894736842105263, "v2t_R5": 42.10526315789474, "v2t_R10": 73.6842105263158,
        "v2t_MdR": 7.0, "v2t_MnR": 6.921052631578948},
    ("multi", False): {  # R@K in float32, as its code computes them
        "t2v_R1": 10.526315689086914, "t2v_R5": 47.3684196472168, "t2v_R10": 100.0,
        "t2v_MdR": 6.0, "t2v_MnR": 5.2105263157894735, "v2t_R1": 11.11111111111111,
        "v2t_R5": 66.66666666666667, "v2t_R10": 100.0, "v2t_MdR": 4.0,
        "v2t_MnR": 4.777777777777778},
    ("multi", True): {
        "t2v_R1": 15.789473533630371, "t2v_R5": 57.894737243652344, "t2v_R10": 100.0,
        "t2v_MdR": 5.0, "t2v_MnR": 5.052631578947368, "v2t_R1": 15.151515151515152,
        "v2t_R5": 78.78787878787878, "v2t_R10": 100.0, "v2t_MdR": 4.0,
        "v2t_MnR": 3.9696969696969697},
}


def _matrix(counts: list[int], ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A caption x video matrix from an integer hash (no RNG: the same on every machine)."""
    video_of = np.repeat(np.arange(len(counts)), counts)
    i, j = np.arange(len(video_of))[:, None], np.arange(len(counts))[None, :]
    h = (i * 2654435761 + j * 40503 + i * j * 97) % 1000003
    sim = ((h % 4) / 4 if ties else h / 1000003).astype(np.float32)
    return torch.from_numpy(sim), torch.from_numpy(video_of)


@pytest.mark.parametrize("layout, ties", list(CLIP4CLIP))
def test_clip4clip_protocol_equals_its_code_bit_for_bit(layout, ties):
    sim, video_of = _matrix(COUNTS[layout], ties)
    assert retrieval_metrics(sim, video_of, "clip4clip") == CLIP4CLIP[layout, ties]
    # the caption order of the input does not matter: captions are grouped by video first
    perm = torch.randperm(len(video_of), generator=torch.Generator().manual_seed(0))
    assert retrieval_metrics(sim[perm], video_of[perm], "clip4clip") == CLIP4CLIP[layout, ties]


def test_the_issue_examples_where_the_protocols_differ():
    # text->video ranks [1, 1, 2, 2] (two videos, two captions each): lower middle vs average
    sim = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.9, 0.1], [0.8, 0.3]])
    video_of = torch.tensor([0, 0, 1, 1])
    assert retrieval_metrics(sim, video_of, "clip4clip")["t2v_MdR"] == 1.0
    assert retrieval_metrics(sim, video_of)["t2v_MdR"] == 1.5
    # captions [c0 | c1 c2 c3]: video 0's caption c0 is beaten by all three of video 1's, but
    # video 1's group (scored by its best caption) is the only group above video 0's
    sim = torch.tensor([[0.5, 0.0], [0.6, 0.9], [0.7, 0.9], [0.8, 0.9]])
    video_of = torch.tensor([0, 1, 1, 1])
    assert retrieval_metrics(sim, video_of)["v2t_MnR"] == (4 + 1) / 2
    assert retrieval_metrics(sim, video_of, "clip4clip")["v2t_MnR"] == (2 + 1) / 2


def test_ties_move_clip4clip_with_gallery_order_but_not_vlcofit():
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7], [0.3, 0.3, 0.3], [0.9, 0.1, 0.1]])
    video_of = torch.tensor([0, 1, 2, 2])  # several captions per video: the argsort path
    order = torch.tensor([2, 1, 0])  # the gallery reversed
    inverse = torch.argsort(order)
    shuffled = (sim[:, order], inverse[video_of])
    assert retrieval_metrics(*shuffled) == retrieval_metrics(sim, video_of)
    assert retrieval_metrics(*shuffled, "clip4clip") != retrieval_metrics(sim, video_of,
                                                                           "clip4clip")
    # the tie-robust rule counts a tie against the answer: flat scores rank every answer last
    flat = retrieval_metrics(torch.zeros(4, 3), video_of)
    assert flat["t2v_R1"] == 0.0 and flat["t2v_MnR"] == 3.0
    assert retrieval_metrics(torch.zeros(4, 3), video_of, "clip4clip")["t2v_R1"] > 0


def test_bad_protocol_and_uncaptioned_videos_are_errors():
    with pytest.raises(ValueError, match="unknown retrieval protocol 'msrvtt'.*vlcofit, clip4clip"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([0, 1]), "msrvtt")
    with pytest.raises(ValueError, match="at least one caption for every video"):
        retrieval_metrics(torch.zeros(2, 3), torch.tensor([0, 1]), "clip4clip")
