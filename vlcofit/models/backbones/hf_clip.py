"""Hugging Face transformers dual encoders as backbones: ``CLIPModel`` and ``SiglipModel``
(``model.backbone: hf``), from a hub id, a local folder, or a config JSON (random weights).

The architecture is the folder's (or JSON's) ``model_type``; each one's tower depths, pooling
and image statistics are declared in its class below. SigLIP 2 (``siglip2``: variable-size
patch inputs with attention masks) is not among them: use open_clip's timm-based SigLIP 2.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError

from ...config.schema import ModelConfig
from ...errors import InputError
from ...utils import resources
from ..notices import WeightsUnavailable
from .base import OPENAI_MEAN, OPENAI_STD, Backbone, TowerDepth, hub_reachable
from .model_json import check_hf_json, check_safetensors, read_model_json

logger = logging.getLogger(__name__)

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class HFCLIPBackbone(Backbone):
    towers = {
        "image": TowerDepth(("clip.vision_model.embeddings", "clip.vision_model.pre_layrnorm"),
                            r"clip\.vision_model\.encoder\.layers\.(\d+)\.",
                            ("clip.visual_projection",),
                            final=("clip.vision_model.post_layernorm",)),
        "text": TowerDepth(("clip.text_model.embeddings",),
                           r"clip\.text_model\.encoder\.layers\.(\d+)\.",
                           ("clip.text_projection",),
                           final=("clip.text_model.final_layer_norm",)),
    }
    embeddings = ("clip.vision_model.embeddings.class_embedding",
                  "clip.vision_model.embeddings.position_embedding.weight",
                  "clip.text_model.embeddings.position_embedding.weight",
                  "clip.text_model.embeddings.token_embedding.weight")
    default_stats = (OPENAI_MEAN, OPENAI_STD)

    def __init__(self, model: nn.Module, tokenizer, image_mean, image_std,
                 pretrained: bool = False):
        super().__init__()
        self.pretrained = pretrained
        self.clip = model
        self.tokenizer = tokenizer
        vcfg = model.config.vision_config
        self.embed_dim = self._embed_dim(model.config)
        self.width = int(vcfg.hidden_size)
        self.image_size = int(vcfg.image_size)
        self.patch_size = int(vcfg.patch_size)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.mean = tuple(float(v) for v in image_mean)
        self.std = tuple(float(v) for v in image_std)
        self._take_scales(model)

    @staticmethod
    def _embed_dim(config) -> int:
        return int(config.projection_dim)

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

    def image_blocks(self) -> list[nn.Module]:
        return list(self.clip.vision_model.encoder.layers)

    def _init_block(self, block: nn.Module) -> None:
        """transformers' own init (``_init_weights``), children before parents as transformers
        applies it: the generic ``nn.Linear`` rule runs first and the attention / MLP rules then
        set their own stds."""
        for p in block.parameters():
            p._is_hf_initialized = False  # else transformers' init skips loaded tensors
        for m in reversed(list(block.modules())):  # every descendant before its ancestors
            self.clip._init_weights(m)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # non-reentrant: frozen inputs (a locked text tower) still work; transformers 5 renamed it
        on = getattr(self.clip, "activation_checkpointing_enable", None) or \
            self.clip.gradient_checkpointing_enable
        off = getattr(self.clip, "activation_checkpointing_disable", None) or \
            self.clip.gradient_checkpointing_disable
        if enable:
            on({"use_reentrant": False})
        else:
            off()


class HFSiglipBackbone(HFCLIPBackbone):
    """``SiglipModel``: no class token and no projections; the image embedding is the vision
    tower's attention-pooling head (``pooler_output``), the text embedding its last-token head;
    the patch tokens are every output token (after ``post_layernorm``)."""
    towers = {
        "image": TowerDepth(("clip.vision_model.embeddings",),
                            r"clip\.vision_model\.encoder\.layers\.(\d+)\.",
                            ("clip.vision_model.head",),
                            final=("clip.vision_model.post_layernorm",)),
        "text": TowerDepth(("clip.text_model.embeddings",),
                           r"clip\.text_model\.encoder\.layers\.(\d+)\.",
                           ("clip.text_model.head",),
                           final=("clip.text_model.final_layer_norm",)),
    }
    embeddings = ("clip.vision_model.embeddings.position_embedding.weight",
                  "clip.vision_model.head.probe",
                  "clip.text_model.embeddings.position_embedding.weight",
                  "clip.text_model.embeddings.token_embedding.weight")
    default_stats = (SIGLIP_MEAN, SIGLIP_STD)

    @staticmethod
    def _embed_dim(config) -> int:
        image = int(config.vision_config.hidden_size)
        text = int(getattr(config.text_config, "projection_size", None) or
                   config.text_config.hidden_size)
        if image != text:
            raise InputError(f"model: SigLIP vision width {image} != text projection size {text}")
        return image

    def encode_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.clip.vision_model(pixel_values=x)
        tokens = out.last_hidden_state  # post_layernorm already applied: [N, h*w, width]
        pooled = out.pooler_output if out.pooler_output is not None else tokens.mean(1)
        return pooled, tokens

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.text_model(input_ids=tokens).pooler_output

    def text_parameters(self) -> list[nn.Parameter]:
        return list(self.clip.text_model.parameters())


# model_type -> (config class, model class, backbone): the architectures ``hf`` builds
def _architectures() -> dict:
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel
    return {"clip": (CLIPConfig, CLIPModel, HFCLIPBackbone),
            "siglip": (SiglipConfig, SiglipModel, HFSiglipBackbone)}


def _architecture(model_type: str | None, where: str):
    known = _architectures()
    if not isinstance(model_type, str) or model_type not in known:
        raise InputError(f"{where}: model_type {model_type!r} is not supported by backbone hf "
                         f"(supported: {', '.join(known)})")
    return known[model_type]


def _clip_tokenizer(context_length: int, vocab_size: int, where: str):
    """CLIP's BPE tokenizer from open_clip (the shared vocabulary of CLIP checkpoints)."""
    import open_clip
    if vocab_size < 49408:
        raise InputError(f"{where}: text vocab_size {vocab_size} < 49408, the size of CLIP's BPE "
                         f"vocabulary (the tokenizer used when no tokenizer files are given)")
    return open_clip.get_tokenizer("ViT-B-32", context_length=context_length)


def _from_json(name: str) -> Backbone:
    """A config JSON: a randomly initialised model (tests, custom sizes)."""
    from huggingface_hub.errors import StrictDataclassError

    path = resources.find("models", name)
    spec = read_model_json(path)
    config_cls, model_cls, backbone_cls = _architecture(spec.get("model_type", "clip"), str(path))
    check_hf_json(spec, path, config_cls.sub_configs)  # user input: before transformers reads it
    try:
        config = config_cls.from_dict(spec)
    except (TypeError, ValueError, StrictDataclassError) as e:
        raise InputError(f"{path}: not a valid {config_cls.__name__} JSON: {e}") from None
    model = model_cls(config)
    if getattr(model, "logit_bias", None) is not None:
        # transformers initialises scale 1 and bias 0; SigLIP trains from log 10 and -10
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
    tcfg = config.text_config
    tokenizer = _clip_tokenizer(tcfg.max_position_embeddings, tcfg.vocab_size, str(path))
    return backbone_cls(model, tokenizer, *backbone_cls.default_stats)


def build_hf(cfg: ModelConfig) -> Backbone:
    from transformers import AutoConfig

    name = cfg.name
    if name.endswith(".json"):
        return _from_json(name)
    local = Path(name).expanduser()
    if not local.is_dir() and (local.exists() or name.startswith((".", "/", "~"))):
        raise InputError(f"model.name: {name} is not a folder with a Hugging Face CLIP or SigLIP model")
    if not local.is_dir() and not hub_reachable():
        raise WeightsUnavailable(
            f"model.name: {name} is not a local folder and huggingface.co cannot be reached. "
            f"Download it on a machine with network (huggingface-cli download {name} --local-dir DIR) "
            f"and pass it", "name", "DIR")
    source = str(local) if local.is_dir() else name
    for file in sorted(local.glob("*.safetensors")) if local.is_dir() else ():
        check_safetensors(file, f"model.name: {name}")  # names the file, unlike transformers
    try:
        model_type = AutoConfig.from_pretrained(source, cache_dir=cfg.cache_dir).model_type
        _, model_cls, backbone_cls = _architecture(model_type, f"model.name: {name}")
        model = model_cls.from_pretrained(source, cache_dir=cfg.cache_dir)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise InputError(f"model.name: cannot load a CLIP or SigLIP model from {name}: {e}") from None
    tokenizer = _hf_tokenizer(source, local, cfg.cache_dir)
    if tokenizer is None:
        # CLIP checkpoints share one BPE vocabulary; a folder saved without tokenizer files works
        if model_type != "clip":
            raise InputError(f"model.name: {name} has no tokenizer files (tokenizer.json, "
                             f"spiece.model): a {model_type} model needs its own tokenizer")
        logger.warning("%s has no tokenizer files; using CLIP's BPE tokenizer from open_clip", name)
        tcfg = model.config.text_config
        tokenizer = _clip_tokenizer(tcfg.max_position_embeddings, tcfg.vocab_size, name)
    mean, std = _hf_image_stats(source, cfg.cache_dir, backbone_cls.default_stats)
    return backbone_cls(model, tokenizer, mean, std, pretrained=True)


def _hf_tokenizer(source: str, local: Path, cache_dir: str | None):
    from transformers import AutoTokenizer
    files = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
    if local.is_dir() and not any((local / f).is_file() for f in files):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
    except (OSError, ValueError):
        return None
    return tokenizer if len(tokenizer) > 32 else None  # transformers may build an empty one


def _hf_image_stats(source: str, cache_dir: str | None, default: tuple) -> tuple:
    try:
        from transformers import AutoImageProcessor
        proc = AutoImageProcessor.from_pretrained(source, cache_dir=cache_dir)
        return tuple(proc.image_mean), tuple(proc.image_std)
    except (OSError, ValueError, AttributeError):
        return default
