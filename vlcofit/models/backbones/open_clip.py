"""CLIP backbones (open_clip, Hugging Face transformers) behind one small interface.

A backbone encodes frames into projected embeddings plus patch tokens, and tokenizes and
encodes text. Everything model-specific (where the projection lives, how text is pooled,
which normalisation the images need) stays in this file.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ...errors import InputError
from .base import Backbone, TowerDepth, spec_depth
from .timm import TimmImage

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- open_clip

class OpenCLIPImage:
    """open_clip's own ViT image tower (``visual.transformer.resblocks``): per-frame geometry,
    encoding, depths. :class:`vlcofit.models.backbones.timm.TimmImage` is the same interface for a
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
        return TimmImage(visual)
    return OpenCLIPImage(visual)


class OpenCLIPBackbone(Backbone):
    """An open_clip CLIP (or SigLIP: ``logit_bias``): image tower through :func:`image_tower`,
    open_clip's own text transformer (:mod:`vlcofit.models.backbones.hf_text`: a Hugging Face one)."""
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


