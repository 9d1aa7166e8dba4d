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

Two protocols (``PROTOCOLS``; a captions card picks one with ``retrieval_protocol``):

- ``vlcofit`` (default): the above.
- ``clip4clip``: CLIP4Clip's ``metrics.py`` and its evaluation loop, which X-CLIP, TS2-Net and
  most video-text papers reuse, so the numbers they publish on MSR-VTT, DiDeMo, ActivityNet and
  MSVD are these. With one caption per video (MSR-VTT 1k-A, DiDeMo and ActivityNet paragraphs)
  it is ``compute_metrics`` on the square matrix: a query whose correct score ties with others is
  counted once per tied position (so the query count grows), and MdR is numpy's median. With
  several captions per video (MSVD, full MSR-VTT) text->video ranks come from a double
  ``argsort`` (ties broken by gallery position: the numbers change when the gallery is
  shuffled), R@K is computed in float32 and MdR is the lower middle rank; video->text ranks a
  video's group of captions among the groups, each scored by its best caption (not its best
  caption among all captions).
"""
from __future__ import annotations

import numpy as np
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


PROTOCOLS = {  # the choices of a captions card's `retrieval_protocol` (module docstring)
    "vlcofit": "tie-robust ranks (ties count against the answer), usual median",
    "clip4clip": "CLIP4Clip's metrics.py, as most published video-text results",
}


def retrieval_metrics(sim: torch.Tensor, video_of: torch.Tensor,
                      protocol: str = "vlcofit") -> dict[str, float]:
    """Similarities [Q, V] (caption x video) and each caption's video index [Q] -> text->video
    and video->text metrics under ``protocol`` (module docstring), keys ``t2v_R1`` ...
    ``v2t_MnR``."""
    if protocol == "clip4clip":
        return clip4clip_metrics(sim, video_of)
    if protocol != "vlcofit":
        raise ValueError(f"unknown retrieval protocol {protocol!r} (choose from "
                         f"{', '.join(PROTOCOLS)})")
    return {**rank_metrics(t2v_ranks(sim, video_of), "t2v_"),
            **rank_metrics(v2t_ranks(sim, video_of), "v2t_")}


def clip4clip_metrics(sim: torch.Tensor, video_of: torch.Tensor) -> dict[str, float]:
    """CLIP4Clip's protocol (module docstring). Its loop holds each video's captions in one
    block, videos in gallery order: the captions are put in that order first (stable)."""
    _check(sim, video_of)
    q, v = sim.shape
    video_of = video_of.long()
    counts = torch.bincount(video_of, minlength=v)
    if q == 0 or (counts == 0).any():
        raise ValueError("the clip4clip protocol needs at least one caption for every video")
    sim = sim.detach().float().cpu()[torch.argsort(video_of, stable=True)]
    if bool((counts == 1).all()):  # its single-sentence path: caption i describes video i
        square = sim.numpy()
        return {**_prefixed(_compute_metrics(square), "t2v_"),
                **_prefixed(_compute_metrics(square.T), "v2t_")}
    # its multi-sentence path: [video, caption slot, video], padded with -inf
    slots = torch.cat([torch.arange(int(n)) for n in counts])
    stacked = sim.new_full((v, int(counts.max()), v), float("-inf"))
    stacked[torch.repeat_interleave(torch.arange(v), counts), slots] = sim
    t2v = _multi_sentence_t2v(stacked)
    best = stacked.nan_to_num(nan=float("-inf")).max(dim=1).values  # [group, video]
    return {**t2v, **_prefixed(_compute_metrics(best.T.numpy()), "v2t_")}


def _compute_metrics(x: np.ndarray) -> dict[str, float]:
    """Square [query, candidate] scores, the correct one on the diagonal: every position of the
    sorted row that ties with the correct score is one entry (CLIP4Clip's ``compute_metrics``)."""
    diff = np.sort(-x, axis=1) - np.diag(-x)[:, None]
    pos = np.where(diff == 0)[1]  # 0-based positions
    n = len(pos)
    out = {f"R{k}": float(np.sum(pos < k)) * 100 / n for k in RECALLS}
    out["MdR"] = float(np.median(pos) + 1)
    out["MnR"] = float(np.mean(pos) + 1)
    return out


def _multi_sentence_t2v(stacked: torch.Tensor) -> dict[str, float]:
    """[video, slot, video] -> text->video metrics: rank by position in a descending argsort,
    padding (-inf) and NaN scores dropped."""
    per_slot = stacked.permute(1, 0, 2)  # [slot, query video, candidate video]
    order = torch.argsort(per_slot, dim=-1, descending=True)
    positions = torch.argsort(order, dim=-1)
    ranks = torch.diagonal(positions, dim1=1, dim2=2).flatten()  # [slot * video], 0-based
    correct = torch.diagonal(stacked, dim1=0, dim2=2).flatten()  # same order
    ranks = ranks[~(torch.isinf(correct) | torch.isnan(correct))]
    out = {f"t2v_R{k}": float(torch.sum(ranks < k) * 100 / len(ranks)) for k in RECALLS}
    out["t2v_MdR"] = float(torch.median(ranks + 1))  # torch: the lower middle value
    out["t2v_MnR"] = float(np.mean(ranks.numpy() + 1))
    return out


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {prefix + k: v for k, v in metrics.items()}


def _check(sim: torch.Tensor, video_of: torch.Tensor) -> None:
    if sim.ndim != 2 or video_of.shape != (sim.shape[0],):
        raise ValueError(f"expected sim [Q, V] and video_of [Q], got {tuple(sim.shape)} and "
                         f"{tuple(video_of.shape)}")
    if video_of.numel() and not 0 <= int(video_of.min()) <= int(video_of.max()) < sim.shape[1]:
        raise ValueError(f"video_of must index the {sim.shape[1]} videos")
