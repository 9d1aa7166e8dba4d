"""Building a backbone from model config: open_clip (its own or a timm image tower, its own or a
Hugging Face text tower) or Hugging Face CLIP / SigLIP.
"""
from __future__ import annotations

from pathlib import Path

from ...config.schema import ModelConfig
from ...errors import InputError
from ...utils import resources
from ..notices import WeightsUnavailable
from . import hf_text
from .base import OPENAI_MEAN, OPENAI_STD, Backbone, hub_reachable
from .hf_clip import build_hf
from .model_json import check_open_clip_json, check_safetensors, read_model_json
from .open_clip import OpenCLIPBackbone


def _check_open_clip_tag(arch: str, tag: str, cache_dir: str | None) -> None:
    """Fail fast with a useful message when a pretrained tag's weights cannot be had."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise InputError(f"model.pretrained: {tag!r} is neither a file nor a pretrained tag of "
                         f"{arch} (tags: {tags})")
    repo = (cfg.get("hf_hub") or "").rstrip("/")
    if repo:
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, filename, cache_dir=cache_dir), str):
                return
    if not hub_reachable():
        raise WeightsUnavailable(
            f"model: weights for {arch}/{tag} ({repo or cfg.get('url')}) are not in the local cache "
            f"and huggingface.co cannot be reached. Download them on a machine with network and pass "
            f"the file", "pretrained", "/path/to/open_clip_model.safetensors")


def _build_open_clip(cfg: ModelConfig) -> Backbone:
    import open_clip

    name = cfg.name
    # a shipped model config first: building one registers it with open_clip under its stem,
    # and a later build in the same process must still take this path (its text tower)
    if name.endswith(".json") or name in resources.list_resources("models") or (
            not name.startswith(("hf-hub:", "local-dir:")) and name not in open_clip.list_models()):
        # A model-config JSON (shipped under configs/models or a path): register it by stem.
        path = resources.find("models", name)
        spec = read_model_json(path)
        check_open_clip_json(spec, path)  # user input: types and shapes before open_clip reads it
        open_clip.add_model_config(path)
        if hf_text.is_hf_text(spec):  # a Hugging Face text encoder: resolved and checked first
            return hf_text.build_hf_text_clip(cfg, path.resolve(), spec)
        name = path.stem
    pretrained = cfg.pretrained
    if pretrained and not Path(pretrained).is_file():
        if any(ch in pretrained for ch in "/\\.") and not name.startswith("hf-hub:"):
            raise InputError(f"model.pretrained: weights file {pretrained} does not exist")
        _check_open_clip_tag(name, pretrained, cfg.cache_dir)
    elif pretrained and pretrained.endswith(".safetensors"):
        check_safetensors(Path(pretrained), "model.pretrained")
    elif name.startswith("hf-hub:") and not hub_reachable():
        raise InputError(f"model.name: {name} needs huggingface.co, which cannot be reached; "
                         f"download the repo and use local-dir:/path/to/folder")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, cache_dir=cfg.cache_dir, weights_only=True)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        raise InputError(f"model: could not build open_clip model {cfg.name!r}: {e}") from None
    try:  # SigLIP names and hf_tokenizer_name fetch their tokenizer from the hub
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cfg.cache_dir)
    except (ImportError, OSError, RuntimeError, ValueError) as e:
        raise WeightsUnavailable(
            f"model: could not build the tokenizer of open_clip model {cfg.name!r} "
            f"({type(e).__name__}: {e}); offline, pass a downloaded model folder", "name",
            "local-dir:/path/to/folder") from None
    normalize = [t for t in getattr(preprocess, "transforms", []) if hasattr(t, "mean")]
    mean, std = (normalize[-1].mean, normalize[-1].std) if normalize else (OPENAI_MEAN, OPENAI_STD)
    loaded = bool(pretrained) or name.startswith(("hf-hub:", "local-dir:"))
    return OpenCLIPBackbone(model, tokenizer, mean, std, pretrained=loaded)


def build_backbone(cfg: ModelConfig) -> Backbone:
    """Build the backbone ``cfg`` names; errors about missing weights say what to pass instead."""
    if cfg.backbone == "open_clip":
        return _build_open_clip(cfg)
    if cfg.backbone == "hf":
        return build_hf(cfg)
    raise InputError(f"model.backbone: unknown backbone {cfg.backbone!r} (open_clip, hf)")
