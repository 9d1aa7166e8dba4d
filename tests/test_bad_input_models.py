"""Malformed model inputs get a clear error naming the file and the field, never a traceback:
table-driven CLI cases (``vlcofit train demo`` with ``model.name`` a broken model-config JSON,
a Hugging Face text-tower folder with corrupt weights, a corrupt weights file).

Each case fails while the model is built, before any training step; one tiny generated dataset
serves every case, so the card's data is never what fails.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bad_input import _sets, run_cli
from test_text_towers import write_bert, write_json


CONFIGS = Path(__file__).parents[1] / "configs" / "models"
QUICK = ("train.steps=1", "train.batch_size=2", "train.num_workers=0", "train.eval_every=0",
         "train.warmup_steps=0")


@pytest.fixture(scope="module")
def data(demo_videos) -> Path:
    return demo_videos(1, 1)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    """A tiny random BERT folder (a text tower) whose weights the cases spoil in copies."""
    return write_bert(tmp_path_factory.mktemp("bert") / "bert")


def _train(data: Path, tmp_path: Path, capsys, *items: str) -> str:
    return run_cli(["train", "demo", *_sets(f"datasets.demo.root={data}",
                                            f"output_dir={tmp_path / 'run'}", *QUICK, *items)],
                   capsys)


def _set(key: str, value):
    """An edit of a parsed JSON: ``key`` (dotted) set to ``value``."""
    def edit(spec: dict) -> None:
        *parents, last = key.split(".")
        for part in parents:
            spec = spec[part]
        spec[last] = value
    return edit


# --------------------------------------------------------------------------- model-config JSONs

# (shipped config to spoil, its backbone, edit, field named, expected message)
JSON_CASES = [
    ("tiny", "open_clip", _set("embed_dim", "sixty-four"), "embed_dim",
     "embed_dim must be a positive integer, got 'sixty-four'"),
    ("tiny", "open_clip", _set("vision_cfg", [1, 2]), "vision_cfg",
     "vision_cfg must be an object ({...}), got [1, 2]"),
    ("tiny", "open_clip", _set("vision_cfg.width", 60), "vision_cfg.width",
     "vision_cfg.width (60) must be divisible by vision_cfg.head_width (32)"),
    ("tiny", "open_clip", _set("text_cfg.heads", 3), "text_cfg.heads",
     "text_cfg.width (64) must be divisible by text_cfg.heads (3)"),
    ("tiny", "open_clip", _set("vision_cfg.mlp_ratio", "4"), "vision_cfg.mlp_ratio",
     "vision_cfg.mlp_ratio must be a positive number, got '4'"),
    ("tiny", "open_clip", _set("vision_cfg.patch_size", 0), "vision_cfg.patch_size",
     "vision_cfg.patch_size must be a positive integer or null, got 0"),
    ("tiny", "open_clip", _set("text_cfg.context_length", -1), "text_cfg.context_length",
     "text_cfg.context_length must be a positive integer, got -1"),
    ("tiny_timm_vit", "open_clip", _set("text_cfg.norm_kwargs", 1e-6), "text_cfg.norm_kwargs",
     "text_cfg.norm_kwargs must be an object ({...}) or null, got 1e-06"),
    ("tiny_hf", "hf", _set("projection_dim", "64"), "projection_dim",
     "projection_dim must be a positive integer, got '64'"),
    ("tiny_hf", "hf", _set("text_config", [1]), "text_config",
     "text_config must be an object ({...}), got [1]"),
    ("tiny_hf", "hf", _set("vision_config.num_attention_heads", 7),
     "vision_config.num_attention_heads",
     "vision_config.hidden_size (64) must be divisible by vision_config.num_attention_heads (7)"),
    ("tiny_hf", "hf", _set("vision_config.image_size", "large"), "vision_config.image_size",
     "vision_config.image_size must be a positive integer, got 'large'"),
    ("tiny_hf_siglip", "hf", _set("text_config.num_attention_heads", 3),
     "text_config.num_attention_heads",
     "text_config.hidden_size (64) must be divisible by text_config.num_attention_heads (3)"),
    ("tiny_hf_siglip", "hf", _set("text_config.hidden_size", 64.0), "text_config.hidden_size",
     "text_config.hidden_size must be a positive integer, got 64.0"),
]


@pytest.mark.parametrize("base,backbone,edit,field,message", JSON_CASES,
                         ids=[f"{c[0]}-{c[3]}" for c in JSON_CASES])
def test_malformed_model_json(data, tmp_path, capsys, base, backbone, edit, field, message):
    spec = json.loads((CONFIGS / f"{base}.json").read_text())
    edit(spec)
    path = tmp_path / f"bad_{base}.json"
    path.write_text(json.dumps(spec))
    err = _train(data, tmp_path, capsys, f"model.name={path}", f"model.backbone={backbone}")
    assert f"{path}: {message}" in err
    assert field in err


@pytest.mark.parametrize("backbone", ["open_clip", "hf"])
def test_model_json_that_is_no_object(data, tmp_path, capsys, backbone):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    err = _train(data, tmp_path, capsys, f"model.name={path}", f"model.backbone={backbone}")
    assert f"{path}: a model config must be a JSON object ({{...}}), got list" in err


def test_unknown_hf_pooler_type(data, bert, tmp_path, capsys):
    path = write_json(tmp_path / "pooler.json", str(bert))
    spec = json.loads(path.read_text())
    spec["text_cfg"]["hf_pooler_type"] = "bogus_pooler"
    path.write_text(json.dumps(spec))
    err = _train(data, tmp_path, capsys, f"model.name={path}")
    assert f"{path}: text_cfg.hf_pooler_type 'bogus_pooler' is not one of open_clip's poolers (" \
           in err
    for name in ("mean_pooler", "cls_pooler", "max_pooler"):  # open_clip's own registry
        assert name in err


# --------------------------------------------------------------------------- weights files

def _random_bytes(file: Path) -> None:
    file.write_bytes(bytes(range(256)) * 8)


def _truncated(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


@pytest.mark.parametrize("spoil", [_random_bytes, _truncated], ids=["random", "truncated"])
def test_text_tower_with_corrupt_weights(data, bert, tmp_path, capsys, spoil):
    import shutil
    folder = shutil.copytree(bert, tmp_path / "bert")
    spoil(folder / "model.safetensors")
    path = write_json(tmp_path / "text_tower.json", str(folder))
    err = _train(data, tmp_path, capsys, f"model.name={path}")
    assert f"{path}: text_cfg.hf_model_name: {folder / 'model.safetensors'} is not a readable " \
           f"safetensors file, corrupt or truncated" in err


def test_corrupt_clip_weights_file(data, tmp_path, capsys):
    weights = tmp_path / "clip.safetensors"
    _random_bytes(weights)
    err = _train(data, tmp_path, capsys, "model.name=tiny", f"model.pretrained={weights}")
    assert f"model.pretrained: {weights} is not a readable safetensors file" in err


def test_hf_clip_folder_with_truncated_weights(data, tmp_path, capsys):
    from transformers import CLIPConfig, CLIPModel
    folder = tmp_path / "clip"
    spec = json.loads((CONFIGS / "tiny_hf.json").read_text())
    CLIPModel(CLIPConfig.from_dict(spec)).save_pretrained(folder)
    _truncated(folder / "model.safetensors")
    err = _train(data, tmp_path, capsys, f"model.name={folder}", "model.backbone=hf")
    assert f"model.name: {folder}: {folder / 'model.safetensors'} is not a readable " \
           f"safetensors file" in err
