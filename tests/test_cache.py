"""Feature cache: cached embeddings equal a fresh pass; any change of checkpoint, frames, views or
videos is a miss; a broken entry is recomputed; re-scoring with a new prompt file reads the cache."""
import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from vlcofit.eval.cache import FeatureCache, cached_features, default_cache_dir, model_fingerprint
from vlcofit.config.schema import ModelConfig
from vlcofit.experiment import build_dataset
from vlcofit.text.prompts import read_class_list
from vlcofit.protocols.zeroshot import load_scoring_model, manifest_card, run_zero_shot

TINY = ModelConfig(name="tiny", temporal="transformer")


@pytest.fixture(scope="module")
def demo_data(demo_videos) -> Path:
    return demo_videos(1, 1)


@pytest.fixture(scope="module")
def setup(demo_data):
    classes = read_class_list("demo")
    model, _ = load_scoring_model(TINY, classes, ("a video of {}.",), None)
    return model, classes, manifest_card(str(demo_data / "val.csv"), 4, "demo", "text4vis")


def _features(model, card, classes, cache, model_id=None):
    ds = build_dataset(card, "val", classes, model.backbone, train=False, seed=0)
    model_id = model_id or model_fingerprint(model, TINY)
    return cached_features(Accelerator(cpu=True), model, ds, 8, 0, cache, model_id)


def test_cached_features_equal_a_fresh_pass(setup, tmp_path):
    model, classes, card = setup
    cache = FeatureCache(tmp_path / "features")
    first, info1 = _features(model, card, classes, cache)
    again, info2 = _features(model, card, classes, cache)
    fresh, info3 = _features(model, card, classes, None)
    assert not info1.hit and info2.hit and not info3.hit and info3.path is None
    assert first["emb"].shape == (8, 1, 64)
    assert torch.equal(again["emb"], first["emb"]) and torch.equal(again["valid"], first["valid"])
    assert torch.equal(again["label"], first["label"])
    torch.testing.assert_close(fresh["emb"], again["emb"], rtol=0, atol=1e-6)
    entries = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(entries) == 2 and entries[0].startswith("val-") and not any("tmp" in e for e in entries)


def test_stale_entries_are_never_used(setup, tmp_path):
    model, classes, card = setup
    cache = FeatureCache(tmp_path / "features")
    base, _ = _features(model, card, classes, cache)
    changes = {"frames": dataclasses.replace(card, num_frames=2),
               "clips": dataclasses.replace(card, test_clips=2),
               "crops": dataclasses.replace(card, test_crops=3),
               "sampling": dataclasses.replace(card, sampling="dense")}
    views = {}
    for what, changed in changes.items():
        feats, info = _features(model, changed, classes, cache)
        assert not info.hit, what
        views[what] = feats["emb"].shape[1]
    assert views == {"frames": 1, "clips": 2, "crops": 3, "sampling": 1}
    assert not torch.equal(feats["emb"], base["emb"])

    # another checkpoint: one image-tower weight changed -> miss; the text tower only -> hit
    other, _ = load_scoring_model(TINY, classes, ("a video of {}.",), None)
    other.load_state_dict(model.state_dict())
    assert _features(other, card, classes, cache)[1].hit
    with torch.no_grad():
        next(p for p in other.backbone.text_parameters()).add_(1.0)
    assert _features(other, card, classes, cache)[1].hit
    with torch.no_grad():
        other.backbone.clip.visual.conv1.weight[0, 0, 0, 0] += 1e-3
    assert model_fingerprint(other, TINY) != model_fingerprint(model, TINY)
    assert not _features(other, card, classes, cache)[1].hit
    # the same weights under another model config (e.g. temporal module settings) -> miss
    assert model_fingerprint(model, dataclasses.replace(TINY, temporal_layers=2)) != \
        model_fingerprint(model, TINY)


def test_broken_entries_and_changed_videos_are_recomputed(setup, demo_data, tmp_path):
    model, classes, _ = setup
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    card = manifest_card(str(data / "val.csv"), 4, "demo", "text4vis")
    victim = data / "val" / "000003.mp4"
    saved = victim.read_bytes()
    victim.unlink()
    cache = FeatureCache(tmp_path / "features")
    feats, _ = _features(model, card, classes, cache)
    assert feats["valid"].tolist() == [True] * 3 + [False] + [True] * 4
    assert _features(model, card, classes, cache)[1].hit
    victim.write_bytes(saved)  # the missing video arrived: the entry is stale
    feats, info = _features(model, card, classes, cache)
    assert not info.hit and bool(feats["valid"].all())
    tensors = next((tmp_path / "features").glob("*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:100])  # truncated entry
    feats, info = _features(model, card, classes, cache)
    assert not info.hit and feats["emb"].shape == (8, 1, 64)


def test_rescoring_a_new_prompt_file_reads_the_cache(demo_data, tmp_path, monkeypatch):
    monkeypatch.setenv("VLCOFIT_CACHE", str(tmp_path / "home_cache"))
    assert default_cache_dir() == tmp_path / "home_cache" / "features"
    assert default_cache_dir(tmp_path / "run") == tmp_path / "run" / "features"
    first = run_zero_shot(TINY, str(demo_data / "val.csv"), "demo", num_workers=0)
    assert not first.info["feature_cache"]["hit"]
    assert first.info["feature_cache"]["path"].startswith(str(tmp_path / "home_cache"))
    # the same classes in another order, plus a distractor: labels follow the new file
    names = list(read_class_list("demo").names)
    prompts = tmp_path / "reordered.txt"
    prompts.write_text("\n".join(["juggling"] + names[::-1]) + "\n")
    second = run_zero_shot(TINY, str(demo_data / "val.csv"), str(prompts), "clip_kinetics",
                           num_workers=0)
    assert second.info["feature_cache"]["hit"] and second.metrics["val/count"] == 8
    off = run_zero_shot(TINY, str(demo_data / "val.csv"), str(prompts), "clip_kinetics",
                        num_workers=0, cache=None)
    assert not off.info["feature_cache"]["hit"] and off.info["feature_cache"]["path"] is None
    assert off.metrics == pytest.approx(second.metrics)
