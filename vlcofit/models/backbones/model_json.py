"""Model-config JSONs are user input: read one and check the types and shapes of the fields the
model builders read, before anything is built. A wrong value then names its file and field
instead of failing deep inside open_clip or transformers (a ``TypeError`` from ``torch.randn``,
a ``KeyError`` from a registry).

Two formats: open_clip's (``embed_dim``, ``vision_cfg``, ``text_cfg``: ``model.backbone:
open_clip``) and a transformers ``CLIPConfig`` / ``SiglipConfig`` dict (``text_config``,
``vision_config``: ``model.backbone: hf``). Fields absent from the tables are left to the
libraries; absent fields take the libraries' defaults, which the shape checks read from them.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

from safetensors import SafetensorError

from ...errors import InputError


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is no size


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# kind -> (test, what the value must be). A kind ending in "?" also takes null.
_KINDS = {
    "size": (lambda v: _int(v) and v > 0, "a positive integer"),
    "index": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "sizes": (lambda v: (_int(v) and v > 0) or (isinstance(v, list) and bool(v) and all(
        _int(x) and x > 0 for x in v)), "a positive integer (or a list of them)"),
    "number": (_number, "a number"),
    "positive": (lambda v: _number(v) and v > 0, "a positive number"),
    "rate": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "object": (lambda v: isinstance(v, dict), "an object ({...})"),
}

# open_clip: CLIP / CustomTextCLIP arguments, CLIPVisionCfg, CLIPTextCfg (open_clip/model.py);
# every config open_clip ships passes (its ResNets: layers a list, patch_size null)
OPEN_CLIP_TOP = {"embed_dim": "size", "vision_cfg": "object", "text_cfg": "object",
                 "quick_gelu": "bool", "custom_text": "bool", "init_logit_scale": "number",
                 "init_logit_bias": "number?"}
OPEN_CLIP_VISION = {
    "layers": "sizes", "width": "size", "head_width": "size", "mlp_ratio": "positive",
    "patch_size": "size?", "image_size": "sizes", "ls_init_value": "number?",
    "patch_dropout": "rate",
    "attentional_pool": "bool", "attn_pooler_queries": "size", "attn_pooler_heads": "size",
    "no_ln_pre": "bool", "final_ln_after_pool": "bool", "output_tokens": "bool",
    "pos_embed_type": "str", "pool_type": "str", "block_type": "str?",
    "act_kwargs": "object?", "norm_kwargs": "object?",
    "timm_model_name": "str?", "timm_model_pretrained": "bool", "timm_pool": "str?",
    "timm_proj": "str?", "timm_proj_bias": "bool", "timm_drop": "rate", "timm_drop_path": "rate?"}
OPEN_CLIP_TEXT = {
    "context_length": "size", "vocab_size": "size", "width": "size", "heads": "size",
    "layers": "size", "mlp_ratio": "positive", "ls_init_value": "number?", "embed_cls": "bool",
    "pad_id": "index", "eos_id": "index", "no_causal_mask": "bool", "final_ln_after_pool": "bool",
    "pool_type": "str", "proj_bias": "bool", "proj_type": "str?", "output_tokens": "bool",
    "act_kwargs": "object?", "norm_kwargs": "object?", "tokenizer_mode": "str?",
    "tokenizer_kwargs": "object?", "hf_model_name": "str?", "hf_tokenizer_name": "str?",
    "hf_model_pretrained": "bool", "hf_pooler_type": "str?", "hf_proj_type": "str?"}

# transformers: CLIPConfig / SiglipConfig and their text / vision sub-configs
HF_TOP = {"model_type": "str", "projection_dim": "size", "logit_scale_init_value": "number",
          "text_config": "object", "vision_config": "object"}
_HF_TOWER = {"hidden_size": "size", "intermediate_size": "size", "num_hidden_layers": "size",
             "num_attention_heads": "size", "projection_dim": "size", "layer_norm_eps": "positive",
             "attention_dropout": "rate", "hidden_act": "str"}
HF_TEXT = {**_HF_TOWER, "vocab_size": "size", "max_position_embeddings": "size",
           "projection_size": "size?", "pad_token_id": "index?", "bos_token_id": "index?",
           "eos_token_id": "index?"}
HF_VISION = {**_HF_TOWER, "image_size": "size", "patch_size": "size", "num_channels": "size"}


def read_model_json(path: Path) -> dict:
    """The JSON object in model-config file ``path``."""
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: invalid model-config JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the model-config JSON: {e}") from None
    if not isinstance(spec, dict):
        raise InputError(f"{path}: a model config must be a JSON object ({{...}}), got "
                         f"{type(spec).__name__}")
    return spec


def check_fields(values: dict, table: dict[str, str], where: str, prefix: str = "") -> None:
    """Each field of ``table`` present in ``values`` has its kind; ``prefix``: the path of
    ``values`` in the file (``vision_cfg.``)."""
    for key, kind in table.items():
        if key not in values or (kind.endswith("?") and values[key] is None):
            continue
        test, must = _KINDS[kind.rstrip("?")]
        if not test(values[key]):
            must += " or null" if kind.endswith("?") else ""
            raise InputError(f"{where}: {prefix}{key} must be {must}, got {_show(values[key])}")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _divisible(values: dict, key: str, by: str, defaults: dict, where: str, prefix: str) -> None:
    """``values[key]`` a multiple of ``values[by]`` (absent: the library's default)."""
    a, b = values.get(key, defaults[key]), values.get(by, defaults[by])
    if a % b:
        shown = [f"{prefix}{k} ({v}{'' if k in values else ', the default'})"
                 for k, v in ((key, a), (by, b))]
        raise InputError(f"{where}: {shown[0]} must be divisible by {shown[1]}")


def check_open_clip_json(spec: dict, path: Path) -> None:
    """Types, open_clip's poolers and attention-head shapes of an open_clip model config."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in spec]
    if missing:
        hint = ("; a Hugging Face CLIP/SigLIP config needs model.backbone=hf"
                if "text_config" in spec or "vision_config" in spec else "")
        raise InputError(f"{path}: {', '.join(missing)} missing (an open_clip model config has "
                         f"embed_dim, vision_cfg and text_cfg){hint}")
    check_fields(spec, OPEN_CLIP_TOP, str(path))
    vision, text = spec["vision_cfg"], spec["text_cfg"]
    check_fields(vision, OPEN_CLIP_VISION, str(path), "vision_cfg.")
    check_fields(text, OPEN_CLIP_TEXT, str(path), "text_cfg.")
    # open_clip's own ViT (no timm trunk, no ResNet): heads = width // head_width
    if not vision.get("timm_model_name") and not isinstance(vision.get("layers"), list):
        _divisible(vision, "width", "head_width", vars(CLIPVisionCfg), str(path), "vision_cfg.")
    if text.get("hf_model_name"):
        _check_pooler(text.get("hf_pooler_type"), path)
    else:
        _divisible(text, "width", "heads", vars(CLIPTextCfg), str(path), "text_cfg.")


def _check_pooler(pooler: str | None, path: Path) -> None:
    """An ``hf_pooler_type`` open_clip registers (its ``@register_pooler`` classes)."""
    from open_clip.hf_model import _POOLERS

    if pooler is not None and pooler not in _POOLERS:
        raise InputError(f"{path}: text_cfg.hf_pooler_type {pooler!r} is not one of open_clip's "
                         f"poolers ({', '.join(_POOLERS)}; null: the architecture's default)")


def check_hf_json(spec: dict, path: Path, sub_configs: dict) -> None:
    """Types and attention-head shapes of a transformers CLIP / SigLIP config dict;
    ``sub_configs``: the config class's (``CLIPConfig.sub_configs``), for the defaults."""
    if ("vision_cfg" in spec or "text_cfg" in spec) and not (
            "vision_config" in spec or "text_config" in spec):
        raise InputError(f"{path}: an open_clip model config (vision_cfg, text_cfg), not a "
                         f"Hugging Face CLIP/SigLIP one: use model.backbone=open_clip")
    check_fields(spec, HF_TOP, str(path))
    for key, table in (("text_config", HF_TEXT), ("vision_config", HF_VISION)):
        tower = spec.get(key) or {}
        check_fields(tower, table, str(path), f"{key}.")
        defaults = _init_defaults(sub_configs[key], ("hidden_size", "num_attention_heads"))
        _divisible(tower, "hidden_size", "num_attention_heads", defaults, str(path), f"{key}.")


def _init_defaults(cls, names: tuple[str, ...]) -> dict:
    """The defaults of ``cls.__init__``'s arguments ``names`` (no instance: transformers logs
    warnings about a default config's token ids)."""
    params = inspect.signature(cls.__init__).parameters
    return {n: params[n].default for n in names}


def check_safetensors(file: Path, field: str) -> None:
    """Read the header of a .safetensors file (cheap; safetensors also checks that the data
    covers what the header declares): a corrupt or truncated file is an InputError naming it."""
    from safetensors import safe_open
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise InputError(f"{field}: {file} is not a readable safetensors file, corrupt or "
                         f"truncated ({err})") from None
