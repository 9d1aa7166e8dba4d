"""Text-video retrieval metrics (MSR-VTT protocol) from a caption x video similarity matrix.

Every caption is a text->video query whose one correct video is the video it describes; every
video is a video->text query whose correct answers are all of its captions (the best-ranked one
counts, as for COCO image->text with five captions per image).

Tie rule: rank = 1 + the number of WRONG candidates scored at least as high as the correct one
(for video->text: as its best-scored caption). A tie counts against the answer, so a model that
gives everything the same score ranks last, never first; and the rank does not depend on the
order of the candidates (``argsort``-based code breaks ties by position, so its numbers change
when the gallery is shuffled).

Metrics (``t2v_`` and ``v2t_`` prefixes): ``R1``, ``R5``, ``R10`` (percent of queries with rank
<= K), ``MdR`` (median rank; the mean of the two middle ranks for an even count) and ``MnR``
(mean rank).
"""
from __future__ import annotations

import torch

RECALLS = (1, 5, 10)
_CHUNK = 4096  # queries compared at a time: bounds the [chunk, gallery] comparison in memory


def t2v_ranks(sim: torch.Tensor, video_of: torch.Tensor) -> torch.Tensor:
    """Similarities [Q, V] (caption q vs video v) and each caption's video [Q] -> the rank
    (1-based, tie rule above) of the correct video for each caption, LongTensor [Q]."""
    _check(sim, video_of)
    correct = sim.gather(1, video_of[:, None].long())  # [Q, 1]
    right = torch.zeros_like(sim, dtype=torch.bool)
    right[torch.arange(sim.shape[0]), video_of.long()] = True
    return _rank(sim, correct, right)


def v2t_ranks(sim: torch.Tensor, video_of: torch.Tensor) -> torch.Tensor:
    """Similarities [Q, V] and each caption's video [Q] -> for each video, the rank of its
    best-scored caption among all Q captions, LongTensor [V]. Every video needs a caption."""
    _check(sim, video_of)
    q, v = sim.shape
    counts = torch.bincount(video_of.long(), minlength=v)
    if (counts == 0).any():
        raise ValueError(f"video {int((counts == 0).nonzero()[0])} has no caption: its "
                         "video->text rank is undefined")
    correct = sim[torch.arange(q), video_of.long()]  # each caption's score for its video [Q]
    best = correct.new_full((v,), float("-inf")).scatter_reduce(
        0, video_of.long(), correct, "amax")  # each video's best-scored caption [V]
    right = video_of.long()[None, :] == torch.arange(v)[:, None]  # [V, Q]: its own captions
    return _rank(sim.t(), best[:, None], right)


def _rank(scores: torch.Tensor, correct: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Scores [N, M], the correct answer's score [N, 1] and which candidates are correct [N, M]
    -> 1 + #wrong candidates scored >= the correct one [N] (chunked: bounded memory)."""
    ranks = [((scores[s:s + _CHUNK] >= correct[s:s + _CHUNK]) & ~right[s:s + _CHUNK]).sum(1) + 1
             for s in range(0, scores.shape[0], _CHUNK)]
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.long)


def rank_metrics(ranks: torch.Tensor, prefix: str) -> dict[str, float]:
    """1-based ranks [N] -> ``{prefix}R1/R5/R10`` (percent), ``{prefix}MdR``, ``{prefix}MnR``."""
    if ranks.numel() == 0:
        return {f"{prefix}{k}": float("nan")
                for k in [f"R{r}" for r in RECALLS] + ["MdR", "MnR"]}
    r = ranks.double()
    out = {f"{prefix}R{k}": 100.0 * float((r <= k).double().mean()) for k in RECALLS}
    # torch.median returns the lower middle value; the usual median averages the two
    out[f"{prefix}MdR"] = float(r.quantile(0.5))
    out[f"{prefix}MnR"] = float(r.mean())
    return out


def retrieval_metrics(sim: torch.Tensor, video_of: torch.Tensor) -> dict[str, float]:
    """Similarities [Q, V] (caption x video) and each caption's video index [Q] -> text->video
    and video->text metrics (module docstring), keys ``t2v_R1`` ... ``v2t_MnR``."""
    return {**rank_metrics(t2v_ranks(sim, video_of), "t2v_"),
            **rank_metrics(v2t_ranks(sim, video_of), "v2t_")}


def _check(sim: torch.Tensor, video_of: torch.Tensor) -> None:
    if sim.ndim != 2 or video_of.shape != (sim.shape[0],):
        raise ValueError(f"expected sim [Q, V] and video_of [Q], got {tuple(sim.shape)} and "
                         f"{tuple(video_of.shape)}")
    if video_of.numel() and not 0 <= int(video_of.min()) <= int(video_of.max()) < sim.shape[1]:
        raise ValueError(f"video_of must index the {sim.shape[1]} videos")
