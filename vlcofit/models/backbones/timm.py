"""A timm image tower inside open_clip (``vision_cfg.timm_model_name``: the SigLIP / SigLIP 2
family, EVA, ConvNeXt, ...) as a per-frame video backbone.

One pass of the trunk gives both outputs: ``forward_features`` is the token map (a ViT's
tokens after its final norm, prefix tokens dropped; a CNN's last feature map, flattened), and
``forward_head`` on it, then open_clip's adapter head, the pooled embedding open_clip itself
computes. Depths for layer decay, freezing and re-initialising blocks come from the model's
own ``group_matcher`` (as timm's layer decay takes them): group 0 the stem and embeddings,
then one group per block, the last group the final norm and pooling; open_clip's adapter head
on top is depth L + 1 too.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

# timm's names of position / class / register tokens (no weight decay, as timm's no_weight_decay)
_EMBEDDINGS = ("pos_embed", "cls_token", "reg_token", "dist_token", "pos_embed_window")


class TimmImage:
    """open_clip's ``TimmModel`` (``visual``): geometry, encoding, depths. Names are within
    ``visual`` (``trunk.*`` is timm's model, ``head.*`` open_clip's projection)."""

    def __init__(self, visual: nn.Module):
        from timm.models import group_parameters

        self.visual = visual
        trunk = visual.trunk
        self.image_size = int(visual.image_size[0])
        embed = getattr(trunk, "patch_embed", None)
        built = getattr(embed, "img_size", None)
        if built is not None and tuple(built) != tuple(visual.image_size):
            # open_clip records vision_cfg.image_size but builds the trunk at timm's default size;
            # resize (position embeddings resampled) so the config's size is the one used
            logger.info("timm tower %s: input size %s -> %s", type(trunk).__name__,
                        tuple(built), tuple(visual.image_size))
            trunk.set_input_size(img_size=tuple(visual.image_size))
        self.width = int(trunk.num_features)
        info = getattr(trunk, "feature_info", None)
        self.patch_size = int(info[-1]["reduction"]) if info else 0  # 0: not stated by the model
        groups = group_parameters(trunk, trunk.group_matcher(coarse=False))
        self._depth = {f"trunk.{n}": int(g) for g, names in groups.items() for n in names}
        self._layers = max(groups) - 1  # groups 1..L are blocks; the last group is the head
        self.embeddings = tuple(f"trunk.{n}" for n, _ in trunk.named_parameters()
                                if n.split(".")[-1] in _EMBEDDINGS)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        trunk = self.visual.trunk
        feats = trunk.forward_features(x)
        pooled = self.visual.head(trunk.forward_head(feats))
        return pooled, _token_map(feats, int(getattr(trunk, "num_prefix_tokens", 0)))

    def depth_of(self, name: str) -> int | None:
        if name in self._depth:
            return self._depth[name]
        return self._layers + 1 if name.startswith("head.") else None

    def num_layers(self) -> int:
        return self._layers

    def blocks(self) -> list[nn.Module]:
        """Per block (depth 1..L), the modules whose own parameters all have its depth (so a
        shared final norm of another depth is left alone)."""
        blocks: list[list[nn.Module]] = [[] for _ in range(self._layers)]
        for prefix, module in self.visual.trunk.named_modules():
            own = [f"trunk.{prefix}.{k}" if prefix else f"trunk.{k}"
                   for k, _ in module.named_parameters(recurse=False)]
            depths = {self._depth.get(k) for k in own}
            if own and len(depths) == 1 and 1 <= (d := depths.pop()) <= self._layers:
                blocks[d - 1].append(module)
        return [nn.ModuleList(b) for b in blocks]


def _token_map(feats: torch.Tensor, prefix: int) -> torch.Tensor | None:
    """A trunk's features -> patch tokens [N, h*w, C] on a square grid; None if it has none."""
    if feats.ndim == 4:  # a CNN: [N, C, h, w]
        tokens = feats.flatten(2).transpose(1, 2)
    elif feats.ndim == 3:  # a ViT: [N, prefix + h*w, C]
        tokens = feats[:, prefix:]
    else:
        return None
    side = math.isqrt(tokens.shape[1])
    return tokens if side * side == tokens.shape[1] and side > 0 else None
