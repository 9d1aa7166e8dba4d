"""Text classifiers: class-name embeddings under prompt templates (Text4Vis / CLIP zero-shot)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .backbones.base import Backbone


def class_embeddings(backbone: Backbone, names: Sequence[str], templates: Sequence[str],
                     batch_size: int = 512) -> torch.Tensor:
    """Class-embedding matrix [C, E]:
    normalise(mean over templates of normalise(encode_text(template.format(name)))).

    Equal to open_clip's ``build_zero_shot_classifier`` (which returns the transpose [E, C]).
    Gradients flow when the text tower is trainable; wrap in ``torch.no_grad()`` otherwise.
    """
    texts = [t.format(n) for n in names for t in templates]
    device = next(backbone.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = backbone.tokenize(texts[start:start + batch_size]).to(device)
        chunks.append(F.normalize(backbone.encode_text(tokens), dim=-1))
    emb = torch.cat(chunks).reshape(len(names), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)
