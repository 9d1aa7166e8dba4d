"""CLIP backbones (open_clip, Hugging Face transformers) behind one small interface.

A backbone encodes frames into projected embeddings plus patch tokens, and tokenizes and
encodes text. Everything model-specific (where the projection lives, how text is pooled,
which normalisation the images need) stays in this file.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .. import resources
from ..config import ModelConfig
from ..errors import InputError

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TowerDepth:
    """How one tower's parameter names map to depth: ``embed`` (names or module prefixes) at 0,
    block i (``block``: a regex whose group 1 is i) at i + 1, ``head`` at L + 1."""
    embed: tuple[str, ...]
    block: str
    head: tuple[str, ...]


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class Backbone(nn.Module):
    """Interface: image tower per frame, text tower, tokenizer, preprocessing constants, and
    each parameter's depth (``towers``: for layer decay, freezing and re-initialising blocks).

    Attributes: ``embed_dim`` (joint space), ``width`` (patch-token channels), ``image_size``,
    ``patch_size``, ``mean``/``std`` (RGB, for inputs scaled to [0, 1]), ``logit_scale_init``,
    ``pretrained`` (whether the weights were loaded from a tag, file or folder, not random).
    """
    embed_dim: int
    width: int
    image_size: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale_init: float
    pretrained: bool = False
    towers: dict[str, TowerDepth] = {}  # "image" / "text" -> its depth map (names in this module)
    embeddings: tuple[str, ...] = ()  # position / class / token embedding tensors (no decay)

    def depth_of(self, name: str) -> tuple[str, int] | None:
        """A parameter name (within this module) -> (tower, depth in 0..L+1); None: no tower
        declares it (e.g. a timm or HF text tower inside open_clip)."""
        for tower, spec in self.towers.items():
            found = re.match(spec.block, name)
            if found:
                return tower, int(found.group(1)) + 1
            if _under(name, spec.embed):
                return tower, 0
            if _under(name, spec.head):
                return tower, self.num_layers(tower) + 1
        return None

    def num_layers(self, tower: str) -> int:
        """L: the transformer blocks of ``tower`` ("image" or "text")."""
        raise NotImplementedError

    def is_embedding(self, name: str) -> bool:
        return name in self.embeddings

    def reinit_last(self, n: int) -> list[str]:
        """Re-initialise the last ``n`` image-tower blocks as the architecture initialises them;
        returns the names (within this module) of the re-initialised parameters."""
        depths = {("image", d) for d in range(self.num_layers("image") - n + 1,
                                              self.num_layers("image") + 1)}  # block i: i + 1
        names = [k for k, _ in self.named_parameters() if self.depth_of(k) in depths]
        with torch.no_grad():
            for block in self._image_blocks()[len(self._image_blocks()) - n:]:
                self._init_block(block)
        return names

    def _image_blocks(self) -> list[nn.Module]:
        raise NotImplementedError

    def _init_block(self, block: nn.Module) -> None:
        """PyTorch's own init, children before parents (as construction runs them)."""
        for m in reversed(list(block.modules())):
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if reset is not None:
                reset()

    def encode_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, H, W] -> (pooled embedding [N, E], patch tokens [N, h*w, width])."""
        raise NotImplementedError

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Texts -> token ids [N, context_length]."""
        raise NotImplementedError

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [N, L] -> unnormalised text embeddings [N, E]."""
        raise NotImplementedError

    def text_parameters(self) -> list[nn.Parameter]:
        """Parameters used only by the text tower (frozen unless model.train_text)."""
        raise NotImplementedError

    def loaded_parameter_names(self) -> set[str]:
        """Names (within this module) whose values were read from a tag, file or folder."""
        return {n for n, _ in self.named_parameters()} if self.pretrained else set()

    def random_head_names(self) -> set[str]:
        """Randomly initialised tensors on top of loaded ones (they train at ``train.lr_new``)."""
        return set()


# --------------------------------------------------------------------------- open_clip

class OpenCLIPBackbone(Backbone):
    towers = {
        "image": TowerDepth(("clip.visual.conv1", "clip.visual.class_embedding",
                             "clip.visual.positional_embedding", "clip.visual.ln_pre"),
                            r"clip\.visual\.transformer\.resblocks\.(\d+)\.",
                            ("clip.visual.ln_post", "clip.visual.proj")),
        "text": TowerDepth(("clip.token_embedding", "clip.positional_embedding"),
                           r"clip\.transformer\.resblocks\.(\d+)\.",
                           ("clip.ln_final", "clip.text_projection")),
    }
    embeddings = ("clip.visual.class_embedding", "clip.visual.positional_embedding",
                  "clip.positional_embedding", "clip.token_embedding.weight")

    def __init__(self, model: nn.Module, tokenizer, image_mean, image_std,
                 pretrained: bool = False):
        super().__init__()
        self.pretrained = pretrained
        self.clip = model
        self.tokenizer = tokenizer
        visual = model.visual
        visual.output_tokens = True
        proj = getattr(model, "text_projection", None)  # None: a Hugging Face text tower
        self.embed_dim = int(model.text.output_dim) if proj is None else int(
            proj.shape[1]) if isinstance(proj, nn.Parameter) else int(proj.out_features)
        self.width = int(visual.conv1.out_channels)
        self.image_size = int(visual.image_size[0])
        self.patch_size = int(visual.patch_size[0])
        self.mean = tuple(float(v) for v in image_mean)
        self.std = tuple(float(v) for v in image_std)
        self.logit_scale_init = float(model.logit_scale.detach())
        del model.logit_scale  # the video model owns its own learnable scale

    def encode_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.clip.visual(x)
        return pooled, tokens

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    def text_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.clip.named_parameters() if not n.startswith("visual.")]

    def num_layers(self, tower: str) -> int:
        blocks = getattr(self.clip.visual if tower == "image" else self.clip, "transformer", None)
        if not hasattr(blocks, "resblocks"):  # a timm image tower, an HF text tower
            raise InputError(f"the {tower} tower of this open_clip model is not open_clip's own "
                             f"transformer: OpenCLIPBackbone.towers declares no depths for it")
        return len(blocks.resblocks)

    def _image_blocks(self) -> list[nn.Module]:
        return list(self.clip.visual.transformer.resblocks)


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One quick TCP probe, so a machine without network fails in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


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
    if not _hub_reachable():
        raise InputError(
            f"model: weights for {arch}/{tag} ({repo or cfg.get('url')}) are not in the local cache "
            f"and huggingface.co cannot be reached. Download them on a machine with network and pass "
            f"the file: --set model.pretrained=/path/to/open_clip_model.safetensors")


def _build_open_clip(cfg: ModelConfig) -> Backbone:
    import open_clip

    name = cfg.name
    # a shipped model config first: building one registers it with open_clip under its stem,
    # and a later build in the same process must still take this path (its text tower)
    if name.endswith(".json") or name in resources.list_resources("models") or (
            not name.startswith(("hf-hub:", "local-dir:")) and name not in open_clip.list_models()):
        # A model-config JSON (shipped under configs/models or a path): register it by stem.
        path = resources.find("models", name)
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid model-config JSON: {e}") from None
        open_clip.add_model_config(path)
        from . import hf_text
        if hf_text.is_hf_text(spec):  # a Hugging Face text encoder: resolved and checked first
            return hf_text.build_hf_text_clip(cfg, path.resolve(), spec)
        name = path.stem
    pretrained = cfg.pretrained
    if pretrained and not Path(pretrained).is_file():
        if any(ch in pretrained for ch in "/\\.") and not name.startswith("hf-hub:"):
            raise InputError(f"model.pretrained: weights file {pretrained} does not exist")
        _check_open_clip_tag(name, pretrained, cfg.cache_dir)
    elif name.startswith("hf-hub:") and not _hub_reachable():
        raise InputError(f"model.name: {name} needs huggingface.co, which cannot be reached; "
                         f"download the repo and use local-dir:/path/to/folder")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, cache_dir=cfg.cache_dir, weights_only=True)
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        raise InputError(f"model: could not build open_clip model {cfg.name!r}: {e}") from None
    tokenizer = open_clip.get_tokenizer(name)
    normalize = [t for t in getattr(preprocess, "transforms", []) if hasattr(t, "mean")]
    mean, std = (normalize[-1].mean, normalize[-1].std) if normalize else (OPENAI_MEAN, OPENAI_STD)
    loaded = bool(pretrained) or name.startswith(("hf-hub:", "local-dir:"))
    return OpenCLIPBackbone(model, tokenizer, mean, std, pretrained=loaded)


# --------------------------------------------------------------------------- transformers

class HFCLIPBackbone(Backbone):
    towers = {
        "image": TowerDepth(("clip.vision_model.embeddings", "clip.vision_model.pre_layrnorm"),
                            r"clip\.vision_model\.encoder\.layers\.(\d+)\.",
                            ("clip.vision_model.post_layernorm", "clip.visual_projection")),
        "text": TowerDepth(("clip.text_model.embeddings",),
                           r"clip\.text_model\.encoder\.layers\.(\d+)\.",
                           ("clip.text_model.final_layer_norm", "clip.text_projection")),
    }
    embeddings = ("clip.vision_model.embeddings.class_embedding",
                  "clip.vision_model.embeddings.position_embedding.weight",
                  "clip.text_model.embeddings.position_embedding.weight",
                  "clip.text_model.embeddings.token_embedding.weight")

    def __init__(self, model: nn.Module, tokenizer, image_mean, image_std,
                 pretrained: bool = False):
        super().__init__()
        self.pretrained = pretrained
        self.clip = model
        self.tokenizer = tokenizer
        vcfg = model.config.vision_config
        self.embed_dim = int(model.config.projection_dim)
        self.width = int(vcfg.hidden_size)
        self.image_size = int(vcfg.image_size)
        self.patch_size = int(vcfg.patch_size)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.mean = tuple(float(v) for v in image_mean)
        self.std = tuple(float(v) for v in image_std)
        self.logit_scale_init = float(model.logit_scale.detach())
        del model.logit_scale

    def encode_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vision = self.clip.vision_model
        hidden = vision(pixel_values=x).last_hidden_state  # [N, 1 + h*w, width]
        # post_layernorm on the patch tokens too, as open_clip's ln_post does.
        hidden = vision.post_layernorm(hidden)
        return self.clip.visual_projection(hidden[:, 0]), hidden[:, 1:]

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        from transformers import PreTrainedTokenizerBase
        if isinstance(self.tokenizer, PreTrainedTokenizerBase):
            out = self.tokenizer(texts, padding="max_length", truncation=True,
                                 max_length=self.context_length, return_tensors="pt")
            return out["input_ids"]
        return self.tokenizer(texts)  # open_clip's CLIP BPE tokenizer (same vocabulary)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.clip.text_model(input_ids=tokens).pooler_output
        return self.clip.text_projection(pooled)

    def text_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.text_model.parameters()) + list(self.clip.text_projection.parameters())

    def num_layers(self, tower: str) -> int:
        model = self.clip.vision_model if tower == "image" else self.clip.text_model
        return len(model.encoder.layers)

    def _image_blocks(self) -> list[nn.Module]:
        return list(self.clip.vision_model.encoder.layers)

    def _init_block(self, block: nn.Module) -> None:
        """transformers' own init of CLIP (``_init_weights``), children before parents as
        transformers applies it: the generic ``nn.Linear`` rule (std = initializer_factor) runs
        first and the CLIP attention / MLP rules then set their own stds."""
        for p in block.parameters():
            p._is_hf_initialized = False  # else transformers' init skips loaded tensors
        for m in reversed(list(block.modules())):  # every descendant before its ancestors
            self.clip._init_weights(m)


def _build_hf(cfg: ModelConfig) -> Backbone:
    import open_clip
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    name = cfg.name
    if name.endswith(".json"):
        # A CLIPConfig JSON: a randomly initialised model (tests, custom sizes).
        path = resources.find("models", name)
        try:
            config = CLIPConfig.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise InputError(f"{path}: not a valid CLIPConfig JSON: {e}") from None
        model = CLIPModel(config)
        tokenizer = open_clip.get_tokenizer(
            "ViT-B-32", context_length=config.text_config.max_position_embeddings)
        return HFCLIPBackbone(model, tokenizer, OPENAI_MEAN, OPENAI_STD)
    local = Path(name).expanduser()
    if not local.is_dir() and (local.exists() or name.startswith((".", "/", "~"))):
        raise InputError(f"model.name: {name} is not a folder with a Hugging Face CLIPModel")
    if not local.is_dir() and not _hub_reachable():
        raise InputError(
            f"model.name: {name} is not a local folder and huggingface.co cannot be reached. "
            f"Download it on a machine with network (huggingface-cli download {name} --local-dir DIR) "
            f"and pass --set model.name=DIR")
    source = str(local) if local.is_dir() else name
    try:
        model = CLIPModel.from_pretrained(source, cache_dir=cfg.cache_dir)
    except (OSError, ValueError) as e:
        raise InputError(f"model.name: cannot load a CLIPModel from {name}: {e}") from None
    tokenizer = None
    if not local.is_dir() or any((local / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cfg.cache_dir)
        except (OSError, ValueError):
            tokenizer = None
    if tokenizer is None or len(tokenizer) < 1000:  # transformers may build an empty vocabulary
        # CLIP models share one BPE vocabulary; a folder saved without tokenizer files still works.
        logger.warning("%s has no tokenizer files; using CLIP's BPE tokenizer from open_clip", name)
        tokenizer = open_clip.get_tokenizer(
            "ViT-B-32", context_length=model.config.text_config.max_position_embeddings)
    mean, std = _hf_image_stats(source, cfg.cache_dir)
    return HFCLIPBackbone(model, tokenizer, mean, std, pretrained=True)


def _hf_image_stats(source: str, cache_dir: str | None) -> tuple:
    try:
        from transformers import AutoImageProcessor
        proc = AutoImageProcessor.from_pretrained(source, cache_dir=cache_dir)
        return tuple(proc.image_mean), tuple(proc.image_std)
    except (OSError, ValueError, AttributeError):
        return OPENAI_MEAN, OPENAI_STD


def build_backbone(cfg: ModelConfig) -> Backbone:
    """Build the backbone ``cfg`` names; errors about missing weights say what to pass instead."""
    if cfg.backbone == "open_clip":
        return _build_open_clip(cfg)
    if cfg.backbone == "hf":
        return _build_hf(cfg)
    raise InputError(f"model.backbone: unknown backbone {cfg.backbone!r} (open_clip, hf)")
