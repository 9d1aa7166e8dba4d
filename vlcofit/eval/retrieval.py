"""Evaluation of caption datasets: text->video and video->text retrieval (MSR-VTT protocol).

Every video of the split is embedded (its evaluation views: unit view embeddings averaged and
normalised again) and so is every caption of it; both are gathered over processes with
``gather_for_metrics`` (the padding that evens out the last batch is dropped, so each video and
caption counts once). Similarity = cosine; metrics and the tie rule:
:mod:`vlcofit.metrics.retrieval`.

Metrics (keys ``"<name>/..."``): ``t2v_R1/R5/R10/MdR/MnR`` (each caption a query),
``v2t_R1/R5/R10/MdR/MnR`` (each video a query, its captions the answers) under the card's
``retrieval_protocol``, and the same under every other protocol with its name as a prefix
(``clip4clip_t2v_R1``, or ``vlcofit_t2v_R1`` when the card picks ``clip4clip``), ``videos`` and
``captions`` evaluated, ``unreadable`` (videos that could not be read: left out with their
captions, as classification evaluation leaves unreadable videos out).

With ``out_dir``: ``<name>_retrieval_top10.json``, ``{"t2v": [{"caption", "video", "rank",
"top": [[video, score], ...]}], "v2t": [{"video", "rank", "top": [[caption, its video,
score], ...]}]}`` (videos as paths relative to the card's root).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..metrics.retrieval import PROTOCOLS, rank_metrics, retrieval_metrics, t2v_ranks, v2t_ranks
from ..models.prepared import evaluating, inside
from .classification import eval_batches

logger = logging.getLogger(__name__)

TOP_K = 10


@torch.no_grad()
def extract_pairs(accelerator, model, loader, max_batches: int | None = None,
                  desc: str = "eval") -> dict[str, torch.Tensor]:
    """Video and caption embeddings of the loader's videos, gathered over processes.

    Returns ``video`` [N, E] and ``text`` [N, M, E] (unit, float32; M = the dataset's most
    captions per video, ``mask`` [N, M] marks the real ones), ``index`` [N] (record index),
    ``valid`` [N] (False: unreadable video)."""
    width = loader.dataset.max_captions
    parts: list[tuple[torch.Tensor, ...]] = []
    with evaluating(model):
        for batch in eval_batches(accelerator, loader, max_batches, desc):
            with accelerator.autocast():
                video, text, mask = inside(model, lambda m: (
                    _embed_videos(m, batch["video"]), *_embed_captions(m, batch["captions"], width)))
            gathered = accelerator.gather_for_metrics(
                (video, text, mask, batch["index"].to(video.device), batch["valid"].to(video.device)))
            parts.append(tuple(t.cpu() for t in gathered))
    keys = ("video", "text", "mask", "index", "valid")
    if not parts:
        return {"video": torch.empty(0, 0), "text": torch.empty(0, width, 0),
                "mask": torch.zeros(0, width, dtype=torch.bool),
                "index": torch.empty(0, dtype=torch.long),
                "valid": torch.empty(0, dtype=torch.bool)}
    return {k: torch.cat([p[n] for p in parts]) for n, k in enumerate(keys)}


def _embed_videos(model, video: torch.Tensor) -> torch.Tensor:
    """[B, T, 3, H, W] or [B, V, T, 3, H, W] (V views) -> unit embeddings [B, E]."""
    if video.ndim == 5:
        video = video[:, None]
    b, v = video.shape[:2]
    emb, _ = model.encode_video(video.to(model.logit_scale.device).flatten(0, 1))
    views = F.normalize(emb.float(), dim=-1).reshape(b, v, -1)
    return F.normalize(views.mean(dim=1), dim=-1)


def _embed_captions(model, captions: Sequence[Sequence[str]],
                    width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B videos' captions -> unit embeddings [B, width, E] (zeros past a video's last caption)
    and the mask of real ones [B, width]: a fixed shape, so processes can gather them."""
    device = model.logit_scale.device
    counts = torch.tensor([len(c) for c in captions], device=device)
    tokens = model.backbone.tokenize([c for cs in captions for c in cs]).to(device)
    text = F.normalize(model.backbone.encode_text(tokens).float(), dim=-1)  # [K, E]
    rows = torch.repeat_interleave(torch.arange(len(captions), device=device), counts)
    cols = torch.cat([torch.arange(int(n), device=device) for n in counts])
    padded = text.new_zeros(len(captions), width, text.shape[1])
    mask = torch.zeros(len(captions), width, dtype=torch.bool, device=device)
    padded[rows, cols] = text
    mask[rows, cols] = True
    return padded, mask


def retrieval_report(name: str, feats: dict[str, torch.Tensor], records: Sequence,
                     root: str | Path, out_dir: Path | None = None,
                     protocol: str = "vlcofit") -> dict[str, float]:
    """Metrics ``{"<name>/t2v_R1": ...}`` of the gathered embeddings (:func:`extract_pairs`)
    under ``protocol``, the other protocols' prefixed; ``records`` are the dataset's (``path``,
    ``captions``), by ``index``. With ``out_dir``, also the top-k file (module docstring)."""
    keep = feats["valid"]
    video, mask, index = feats["video"][keep], feats["mask"][keep], feats["index"][keep]
    captions = feats["text"][keep][mask]  # [Q, E]: video by video, each one's captions in order
    video_of = torch.repeat_interleave(torch.arange(len(video)), mask.sum(1))
    sim = captions @ video.t()  # [Q, V]
    t2v, v2t = t2v_ranks(sim, video_of), v2t_ranks(sim, video_of)
    bad = int((~keep).sum())
    if bad:
        logger.warning("%s: %d unreadable videos (and their captions) left out of the "
                       "evaluation", name, bad)
    metrics = _protocol_metrics(sim, video_of, t2v, v2t, protocol)
    metrics.update({"videos": float(len(video)), "captions": float(len(captions)),
                    "unreadable": float(bad)})
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        caption_no = (mask.cumsum(1) - 1)[mask]  # each caption's position in its record
        top = _top_k(sim, [records[int(i)] for i in index], video_of, caption_no, t2v, v2t,
                     Path(root))
        path = out_dir / f"{name}_retrieval_top{TOP_K}.json"
        path.write_text(json.dumps(top, indent=1))
        logger.info("%s: top-%d retrievals per query in %s", name, TOP_K, path)
    return {f"{name}/{k}": v for k, v in metrics.items()}


def _protocol_metrics(sim: torch.Tensor, video_of: torch.Tensor, t2v: torch.Tensor,
                      v2t: torch.Tensor, protocol: str) -> dict[str, float]:
    """``protocol``'s metrics unprefixed, every other protocol's with its name as a prefix."""
    out: dict[str, float] = {}
    for name in PROTOCOLS:
        if name == "vlcofit":  # the ranks are computed already (the top-k file shows them)
            values = {**rank_metrics(t2v, "t2v_"), **rank_metrics(v2t, "v2t_")}
        elif len(video_of):
            values = retrieval_metrics(sim, video_of, name)
        else:  # nothing readable: no query to count
            keys = rank_metrics(t2v, "t2v_") | rank_metrics(v2t, "v2t_")
            values = {k: float("nan") for k in keys}
        out.update({k if name == protocol else f"{name}_{k}": v for k, v in values.items()})
    return out


def _top_k(sim: torch.Tensor, records: Sequence, video_of: torch.Tensor,
           caption_no: torch.Tensor, t2v: torch.Tensor, v2t: torch.Tensor,
           root: Path) -> dict[str, list]:
    """The JSON-ready top-k lists of every query (see the module docstring)."""
    names = [_relative(r.path, root) for r in records]
    texts = [records[int(v)].captions[int(c)] for v, c in zip(video_of, caption_no)]
    k_t, k_v = min(TOP_K, sim.shape[1]), min(TOP_K, sim.shape[0])
    t_scores, t_top = sim.topk(k_t, dim=1) if sim.numel() else (sim, sim.long())
    v_scores, v_top = sim.t().topk(k_v, dim=1) if sim.numel() else (sim.t(), sim.t().long())
    t2v_rows = [{"caption": texts[q], "video": names[int(video_of[q])], "rank": int(t2v[q]),
                 "top": [[names[int(v)], round(float(s), 5)]
                         for v, s in zip(t_top[q], t_scores[q])]} for q in range(len(texts))]
    v2t_rows = [{"video": names[v], "rank": int(v2t[v]),
                 "top": [[texts[int(q)], names[int(video_of[q])], round(float(s), 5)]
                         for q, s in zip(v_top[v], v_scores[v])]} for v in range(len(names))]
    return {"t2v": t2v_rows, "v2t": v2t_rows}


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:  # the annotation gave an absolute path elsewhere
        return str(path)


def evaluate_retrieval(accelerator, model, loader, name: str, root: str | Path,
                       out_dir: Path | None = None, max_batches: int | None = None,
                       protocol: str = "vlcofit") -> dict[str, float]:
    """Retrieval evaluation of one caption dataset; collective (every process calls it and
    gets the metrics); only the main process writes to ``out_dir``."""
    feats = extract_pairs(accelerator, model, loader, max_batches, desc=f"eval {name}")
    return retrieval_report(name, feats, loader.dataset.records, root,
                            out_dir if accelerator.is_main_process else None, protocol)
