"""The backbone interface: per-frame image tower, text tower, preprocessing constants and each
parameter's depth (layer decay, freezing, re-initialising blocks).
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.nn as nn
from torchvision.transforms.v2 import functional as TF

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


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One quick TCP probe, so a machine without network fails in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
