"""CLIP backbones (open_clip, Hugging Face transformers) behind one small interface.

A backbone encodes frames into projected embeddings plus patch tokens, and tokenizes and
encodes text. Everything model-specific (where the projection lives, how text is pooled,
which normalisation the images need) stays in this file.
"""
from __future__ import annotations

import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torchvision.transforms.v2 import functional as TF

from .. import resources
from ..config import ModelConfig
from ..errors import InputError
from .model_json import check_open_clip_json, check_safetensors, read_model_json
from .notices import WeightsUnavailable

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TowerDepth:
    """How one tower's parameter names map to depth: ``embed`` (names or module prefixes) at 0,
    block i (``block``: a regex whose group 1 is i) at i + 1, ``final`` (the norm after the
    last block) at L with it, ``head`` (projection, pooler) at L + 1. timm's rule
    (``param_groups_layer_decay``: its ``group_matcher`` merges the final norm into the last
    block's group), so every tower, open_clip's and HF's included, decays as timm's would."""
    embed: tuple[str, ...]
    block: str
    head: tuple[str, ...]
    final: tuple[str, ...] = ()


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def spec_depth(spec: TowerDepth, name: str, num_layers) -> int | None:
    """``name``'s depth under ``spec`` (``num_layers()``: the tower's L, asked only for the
    head); None: ``spec`` does not declare it."""
    found = re.match(spec.block, name)
    if found:
        return int(found.group(1)) + 1
    if _under(name, spec.embed):
        return 0
    if _under(name, spec.final):
        return num_layers()
    return num_layers() + 1 if _under(name, spec.head) else None


class Backbone(nn.Module):
    """Interface: image tower per frame, text tower, tokenizer, preprocessing constants, and
    each parameter's depth (``towers``: for layer decay, freezing and re-initialising blocks).

    Attributes: ``embed_dim`` (joint space), ``width`` (patch-token channels), ``image_size``,
    ``patch_size``, ``mean``/``std`` (RGB, for inputs scaled to [0, 1]), ``logit_scale_init``,
    ``pretrained`` (whether the weights were loaded from a tag, file or folder, not random),
    ``logit_bias_init`` (a SigLIP model's sigmoid-loss bias; None: a softmax-trained CLIP).
    ``encode_frames`` returns patch tokens None where the image tower has no token map.
    """
    embed_dim: int
    width: int
    image_size: int
    patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    logit_scale_init: float
    logit_bias_init: float | None = None
    pretrained: bool = False
    towers: dict[str, TowerDepth] = {}  # "image" / "text" -> its depth map (names in this module)
    embeddings: tuple[str, ...] = ()  # position / class / token embedding tensors (no decay)

    def _take_scales(self, model: nn.Module) -> None:
        """Keep ``model``'s logit scale (and SigLIP bias) as initial values and remove them: the
        video model owns its own learnable ones."""
        self.logit_scale_init = float(model.logit_scale.detach().reshape(()))
        del model.logit_scale
        if getattr(model, "logit_bias", None) is not None:
            self.logit_bias_init = float(model.logit_bias.detach().reshape(()))
            del model.logit_bias

    def depth_of(self, name: str) -> tuple[str, int] | None:
        """A parameter name (within this module) -> (tower, depth in 0..L+1); None: no tower
        declares it (e.g. a timm or HF text tower inside open_clip)."""
        for tower, spec in self.towers.items():
            depth = spec_depth(spec, name, lambda tower=tower: self.num_layers(tower))
            if depth is not None:
                return tower, depth
        return None

    def num_layers(self, tower: str) -> int:
        """L: the transformer blocks of ``tower`` ("image" or "text")."""
        raise NotImplementedError

    def tower_names(self) -> tuple[str, ...]:
        """The towers whose depths this backbone declares."""
        return tuple(self.towers)

    def is_embedding(self, name: str) -> bool:
        return name in self.embeddings

    def reinit_last(self, n: int) -> list[str]:
        """Re-initialise the last ``n`` image-tower blocks as the architecture initialises them;
        returns the names (within this module) of the re-initialised parameters."""
        blocks = self.image_blocks()[len(self.image_blocks()) - n:]
        # the blocks' own tensors: the final norm shares the last block's depth, not its init
        own = {id(p) for block in blocks for p in block.parameters()}
        names = [k for k, p in self.named_parameters() if id(p) in own]
        with torch.no_grad():
            for block in blocks:
                self._init_block(block)
        return names

    def image_blocks(self) -> list[nn.Module]:
        """The image tower's transformer (or CNN stage) blocks, in order (``reinit_last``,
        ``model.compile``, FSDP wrapping)."""
        raise NotImplementedError

    def _init_block(self, block: nn.Module) -> None:
        """PyTorch's own init, children before parents (as construction runs them)."""
        for m in reversed(list(block.modules())):
            reset = getattr(m, "reset_parameters", None) or getattr(m, "_reset_parameters", None)
            if reset is not None:
                reset()

    def encode_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[N, 3, H, W] -> (pooled embedding [N, E], patch tokens [N, h*w, width] or None)."""
        raise NotImplementedError

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (the data pipeline's) -> float32 scaled to [0, 1] and normalised with
        ``mean``/``std``, on their device (the GPU: a quarter of the bytes cross from the host).
        Float frames are taken as already normalised."""
        if frames.dtype != torch.uint8:
            return frames
        # mean / std on the device once: TF.normalize would copy them from lists at every call,
        # and a host-to-device copy from pageable memory makes the host wait for the GPU
        stats = vars(self).setdefault("_pixel_stats", {})
        if frames.device not in stats:
            stats[frames.device] = tuple(torch.tensor(v, device=frames.device).view(-1, 1, 1)
                                         for v in (self.mean, self.std))
        mean, std = stats[frames.device]
        return TF.to_dtype(frames, torch.float32, scale=True).sub_(mean).div_(std)  # as TF.normalize

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in the towers' blocks (``model.grad_checkpointing``)."""
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

class OpenCLIPImage:
    """open_clip's own ViT image tower (``visual.transformer.resblocks``): per-frame geometry,
    encoding, depths. :class:`vlcofit.models.timm_tower.TimmImage` is the same interface for a
    timm image tower. Names are within ``visual``."""
    depth = TowerDepth(("conv1", "class_embedding", "positional_embedding", "ln_pre"),
                       r"transformer\.resblocks\.(\d+)\.", ("proj",), final=("ln_post",))
    embeddings = ("class_embedding", "positional_embedding")

    def __init__(self, visual: nn.Module):
        if not hasattr(visual, "transformer"):
            raise InputError(f"model: the open_clip image tower {type(visual).__name__} is not "
                             f"supported (ViT towers, or timm towers: SigLIP, EVA, ConvNeXt, ...)")
        visual.output_tokens = True
        self.visual = visual
        self.width = int(visual.conv1.out_channels)
        self.image_size = int(visual.image_size[0])
        self.patch_size = int(visual.patch_size[0])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.visual(x)
        return pooled, tokens

    def depth_of(self, name: str) -> int | None:
        return spec_depth(self.depth, name, self.num_layers)

    def num_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    def blocks(self) -> list[nn.Module]:
        """What to re-initialise for each block, in order."""
        return list(self.visual.transformer.resblocks)


def image_tower(visual: nn.Module):
    """The adapter of an open_clip image tower: open_clip's ViT or a timm model."""
    from open_clip.timm_model import TimmModel
    if isinstance(visual, TimmModel):
        from .timm_tower import TimmImage
        return TimmImage(visual)
    return OpenCLIPImage(visual)


class OpenCLIPBackbone(Backbone):
    """An open_clip CLIP (or SigLIP: ``logit_bias``): image tower through :func:`image_tower`,
    open_clip's own text transformer (:mod:`vlcofit.models.hf_text`: a Hugging Face one)."""
    # open_clip's text transformer: at the top of CLIP, under ``text`` in CustomTextCLIP
    # (``custom_text``, e.g. SigLIP); the HF text tower subclass replaces both
    towers = {
        "text": TowerDepth(("clip.token_embedding", "clip.positional_embedding"),
                           r"clip\.transformer\.resblocks\.(\d+)\.",
                           ("clip.text_projection",), final=("clip.ln_final",)),
    }
    embeddings = ("clip.positional_embedding", "clip.token_embedding.weight")

    def __init__(self, model: nn.Module, tokenizer, image_mean, image_std,
                 pretrained: bool = False):
        super().__init__()
        self.pretrained = pretrained
        self.clip = model
        self.tokenizer = tokenizer
        self.image = image_tower(model.visual)
        if hasattr(getattr(getattr(model, "text", None), "transformer", None), "resblocks"):
            self.towers = {"text": TowerDepth(
                ("clip.text.token_embedding", "clip.text.positional_embedding", "clip.text.cls_emb"),
                r"clip\.text\.transformer\.resblocks\.(\d+)\.",
                ("clip.text.text_projection",), final=("clip.text.ln_final",))}
            self.embeddings = ("clip.text.positional_embedding", "clip.text.token_embedding.weight",
                               "clip.text.cls_emb")
        proj = getattr(model, "text_projection", None)  # None: a Hugging Face text tower
        self.embed_dim = int(model.text.output_dim) if proj is None else int(
            proj.shape[1]) if isinstance(proj, nn.Parameter) else int(proj.out_features)
        self.width, self.image_size = self.image.width, self.image.image_size
        self.patch_size = self.image.patch_size
        self.mean = tuple(float(v) for v in image_mean)
        self.std = tuple(float(v) for v in image_std)
        self._take_scales(model)

    def depth_of(self, name: str) -> tuple[str, int] | None:
        if name.startswith("clip.visual."):
            depth = self.image.depth_of(name[len("clip.visual."):])
            return None if depth is None else ("image", depth)
        return super().depth_of(name)

    def tower_names(self) -> tuple[str, ...]:
        return ("image", *self.towers)

    def is_embedding(self, name: str) -> bool:
        return name in self.embeddings or (name.startswith("clip.visual.") and name[
            len("clip.visual."):] in self.image.embeddings)

    def encode_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.image.encode(x)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    def text_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.clip.named_parameters() if not n.startswith("visual.")]

    def num_layers(self, tower: str) -> int:
        if tower == "image":
            return self.image.num_layers()
        text = getattr(self.clip, "text", self.clip)  # CustomTextCLIP: under .text
        if not hasattr(getattr(text, "transformer", None), "resblocks"):  # an HF text tower
            raise InputError("the text tower of this open_clip model is not open_clip's own "
                             "transformer: OpenCLIPBackbone.towers declares no depths for it")
        return len(text.transformer.resblocks)

    def image_blocks(self) -> list[nn.Module]:
        return self.image.blocks()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.clip.set_grad_checkpointing(enable)  # both towers (timm and HF ones included)


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
        from . import hf_text
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
    elif name.startswith("hf-hub:") and not _hub_reachable():
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
        from .hf_clip import build_hf
        return build_hf(cfg)
    raise InputError(f"model.backbone: unknown backbone {cfg.backbone!r} (open_clip, hf)")
