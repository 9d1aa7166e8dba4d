"""Feature cache: per-video embeddings stored once, so re-scoring needs no video decoding.

Scoring a dataset against a new prompt file or template set only needs the video embeddings
``[N, V, E]`` (N videos, V = test clips x crops) and the text tower, so the embeddings of an
evaluation pass are stored under a key of everything they depend on:

- the model: a SHA-256 of the tensors that produce video embeddings (image tower, temporal
  module; not the text tower, heads or logit scale) and the model config. Hashing the weights
  themselves rather than a file name means a re-trained checkpoint at the same path, another
  pretrained tag or another random init can never hit an old entry.
- the videos: their paths (absolute, in order) and count;
- decoding and sampling: ``num_frames``, ``sampling``, ``frame_stride``, ``test_clips``,
  ``test_crops``, ``decoder``; preprocessing: image size, mean, std; and ``max_batches``;
- the numerics: the mixed precision of the pass (``no``, ``bf16``, ``fp16``), so bf16
  embeddings are never reused by an fp32 run.

An entry is ``<folder>/<dataset>-<digest>.safetensors`` (``emb`` [N, V, E] float32, ``valid``
[N] bool) plus ``<dataset>-<digest>.json`` (the full key, paths, label ids of the pass). It is
used only when the stored key equals the current key field by field, not just the digest.
Both files are written to a temporary name and moved into place; the JSON goes last, so a
killed writer leaves no entry that looks complete. Labels are not cached: they come from the
current annotation and prompt file, so a new prompt file with other class indices still hits.

Not detected: a video file replaced in place under the same path. Delete the folder (or pass
another one) after changing videos.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config.schema import DataConfig, DatasetCard, ModelConfig
from ..data.loading import build_loader
from .classification import extract_embeddings

logger = logging.getLogger(__name__)

FORMAT = 2  # bump when the stored layout or the meaning of the key changes
_SKIP_PREFIXES = ("linear.", "box_head.", "logit_scale", "logit_bias")  # do not change video embeddings
DECODE_FIELDS = ("num_frames", "sampling", "frame_stride", "test_clips", "test_crops", "decoder")


def default_cache_dir(run_dir: str | Path | None = None) -> Path:
    """``<run>/features`` for a run's checkpoint, else ``$VLCOFIT_CACHE`` or
    ``$XDG_CACHE_HOME/vlcofit`` (``~/.cache/vlcofit``) + ``/features``."""
    if run_dir is not None:
        return Path(run_dir) / "features"
    root = os.environ.get("VLCOFIT_CACHE")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlcofit")
    return Path(root) / "features"


def _hash_tensor(h: "hashlib._Hash", name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach()
    if hasattr(t, "full_tensor"):  # an FSDP 2 shard (DTensor): the whole tensor, a collective
        t = t.full_tensor()
    t = t.cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: torch.nn.Module, model_cfg: ModelConfig) -> str:
    """SHA-256 of the video-encoding weights and the model config (see the module docstring).
    Under FSDP a collective (each sharded tensor is gathered): call on every process."""
    text_ids = {id(p) for p in model.backbone.text_parameters()}
    h = hashlib.sha256()
    cfg = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k != "cache_dir"}
    h.update(json.dumps(cfg, sort_keys=True).encode())
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        if id(tensor) in text_ids or name.startswith(_SKIP_PREFIXES):
            continue
        _hash_tensor(h, name, tensor)
    return h.hexdigest()


def feature_key(model_id: str, dataset, mean: tuple[float, ...], std: tuple[float, ...],
                max_batches: int | None = None, precision: str = "no") -> dict[str, Any]:
    """The cache key of ``dataset``'s embeddings (a ClassificationDataset in evaluation mode);
    ``mean``/``std``: the model's image normalisation; ``precision``: Accelerate's
    mixed_precision of the pass."""
    card: DatasetCard = dataset.card
    paths = [os.path.abspath(r.path) for r in dataset.records]
    transform = dataset.transform
    return {
        "format": FORMAT,
        "model": model_id,
        "videos": hashlib.sha256("\n".join(paths).encode()).hexdigest(),
        "num_videos": len(paths),
        "decode": {f: getattr(card, f) for f in DECODE_FIELDS},
        "image": {"size": transform.image_size, "crops": getattr(transform, "crops", 1),
                  "mean": list(mean), "std": list(std)},
        "max_batches": max_batches,
        "precision": str(precision),
    }


def _file_state(path: str) -> list[int] | None:
    """(size, mtime_ns) of a file, or None if it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


class FeatureCache:
    """A folder of cached embeddings (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _stem(self, key: dict[str, Any], name: str) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "data"
        return self.folder / f"{safe}-{digest}"

    def load(self, key: dict[str, Any], name: str) -> dict[str, torch.Tensor] | None:
        """``{"emb": [N, V, E], "valid": [N]}`` if an entry with exactly ``key`` exists, else None."""
        stem = self._stem(key, name)
        meta_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("key") != key:  # a digest collision or an entry from another format
            logger.warning("%s: feature cache key differs; not used", meta_path)
            return None
        try:
            tensors = load_file(str(tensor_path))
        except (OSError, SafetensorError) as err:
            logger.warning("%s: unreadable cache entry (%s); recomputing", tensor_path, err)
            return None
        emb, valid = tensors.get("emb"), tensors.get("valid")
        changed = [p for p, state in meta.get("unreadable", {}).items() if _file_state(p) != state]
        if changed:  # e.g. a missing video downloaded since: compute again
            logger.info("%s: %d unreadable videos changed since caching (e.g. %s); recomputing",
                        meta_path, len(changed), changed[0])
            return None
        n = key["num_videos"] if key["max_batches"] is None else meta.get("count")
        if emb is None or valid is None or emb.shape[0] != n or valid.shape[0] != n:
            logger.warning("%s: cache entry has the wrong shape; recomputing", tensor_path)
            return None
        logger.info("feature cache hit: %s", tensor_path)
        return {"emb": emb, "valid": valid.bool()}

    def save(self, key: dict[str, Any], name: str, feats: dict[str, torch.Tensor],
             paths: list[str]) -> Path:
        """Store ``feats`` (``emb`` [N, V, E], ``valid`` [N], ``label`` [N]) under ``key``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = self._stem(key, name)
        tensor_path, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
        suffix = f".tmp{os.getpid()}"
        tmp = tensor_path.with_name(tensor_path.name + suffix)
        save_file({"emb": feats["emb"].float().contiguous(),
                   "valid": feats["valid"].to(torch.uint8).contiguous()}, str(tmp))
        os.replace(tmp, tensor_path)
        bad = [p for p, ok in zip(paths, feats["valid"].tolist()) if not ok]
        meta = {"key": key, "count": int(feats["emb"].shape[0]), "paths": paths,
                "labels": feats["label"].tolist(),
                "unreadable": {p: _file_state(p) for p in bad}}
        tmp = meta_path.with_name(meta_path.name + suffix)
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
        logger.info("feature cache: wrote %s", tensor_path)
        return tensor_path


@dataclasses.dataclass
class CacheInfo:
    """Where a feature pass came from: ``hit`` (loaded) or computed; ``path`` of the entry."""
    hit: bool
    path: str | None


def cached_features(accelerator, model, dataset, batch_size: int, num_workers: int,
                    cache: FeatureCache | None, model_id: str = "",
                    max_batches: int | None = None, desc: str = "features",
                    stall_timeout: float = DataConfig.stall_timeout
                    ) -> tuple[dict[str, torch.Tensor], CacheInfo]:
    """Embeddings of every video of ``dataset`` (evaluation views), from ``cache`` if it holds
    them, else by an evaluation pass (then stored). Collective: call on every process.
    ``model_id``: :func:`model_fingerprint` of the model (required with a cache).

    Returns ``({"emb": [N, V, E], "label": [N], "valid": [N]}, CacheInfo)``; labels always come
    from ``dataset.records`` (the current annotation and prompt file).
    """
    base = accelerator.unwrap_model(model)
    key = name = None
    if cache is not None:
        if not model_id:
            raise ValueError("cached_features: pass model_id=model_fingerprint(model, cfg)")
        key = feature_key(model_id, dataset, base.backbone.mean, base.backbone.std, max_batches,
                          accelerator.mixed_precision)
        name = dataset.card.name
        hit = cache.load(key, name)
        if hit is not None:
            labels = torch.tensor([r.label for r in dataset.records[:hit["emb"].shape[0]]],
                                  dtype=torch.long)
            return {**hit, "label": labels}, CacheInfo(True, str(cache._stem(key, name)))
    loader = accelerator.prepare(build_loader(dataset, batch_size, False, num_workers,
                                             stall_timeout))
    feats = extract_embeddings(accelerator, model, loader, max_batches, desc=desc)
    expected = torch.tensor([r.label for r in dataset.records[:feats["emb"].shape[0]]],
                            dtype=torch.long)
    if not torch.equal(feats["label"], expected):  # would mean the pass reordered videos
        raise RuntimeError("feature pass returned videos out of dataset order")
    path = None
    if cache is not None:
        if accelerator.is_main_process:
            paths = [os.path.abspath(r.path) for r in dataset.records[:feats["emb"].shape[0]]]
            path = str(cache.save(key, name, feats, paths))
        accelerator.wait_for_everyone()
    return feats, CacheInfo(False, path)

