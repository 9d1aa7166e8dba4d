import time

import open_clip
import pytest
import torch

from vlcofit.config import ModelConfig
from vlcofit.errors import InputError
from vlcofit.models.backbones import build_backbone
from vlcofit.models.text import class_embeddings
from vlcofit.models.video import build_model

NAMES = ["moving left", "moving right", "growing", "spinning"]
TEMPLATES = ("a video of a person {}.", "a clip of {}.", "{}")


@pytest.fixture(scope="module")
def tiny_open_clip():
    torch.manual_seed(0)
    return build_backbone(ModelConfig(backbone="open_clip", name="tiny"))


def test_text_classifier_equals_open_clip_builder(tiny_open_clip):
    ours = class_embeddings(tiny_open_clip, NAMES, TEMPLATES)
    ref = open_clip.build_zero_shot_classifier(tiny_open_clip.clip, tiny_open_clip.tokenizer, NAMES,
                                               TEMPLATES, num_classes_per_batch=3)
    assert ours.shape == (len(NAMES), 64)
    torch.testing.assert_close(ours, ref.t(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(NAMES)))


@pytest.mark.parametrize("backbone,name", [("open_clip", "tiny"), ("hf", "tiny_hf.json")])
@pytest.mark.parametrize("temporal", ["mean", "transformer"])
def test_video_model_shapes_and_gradients(backbone, name, temporal):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, name=name, temporal=temporal)
    model = build_model(cfg, NAMES, [TEMPLATES] * len(NAMES))
    video = torch.randn(2, 4, 3, 64, 64)
    emb, token_map = model.encode_video(video)
    assert emb.shape == (2, 64)
    assert token_map.shape == (2, 64, 4, 4, 4)  # [B, D, T, h, w]
    logits = model(video, torch.tensor([1, 3]))
    assert logits.shape == (2, 2)
    logits.sum().backward()
    visual = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    assert visual and all(p.grad is not None for p in visual[:3])
    # frozen text tower (Text4Vis default): no gradient, no trainable parameter
    assert all(not p.requires_grad for p in model.backbone.text_parameters())


def test_temporal_transformer_starts_as_mean_pooling():
    torch.manual_seed(0)
    mean = build_model(ModelConfig(name="tiny", temporal="mean"), NAMES, [TEMPLATES] * 4)
    trans = build_model(ModelConfig(name="tiny", temporal="transformer"), NAMES, [TEMPLATES] * 4)
    trans.backbone.load_state_dict(mean.backbone.state_dict())
    video = torch.randn(2, 4, 3, 64, 64)
    torch.testing.assert_close(trans.encode_video(video)[0], mean.encode_video(video)[0])


def test_trainable_text_tower_gets_gradients():
    model = build_model(ModelConfig(name="tiny", train_text=True), NAMES, [TEMPLATES] * 4)
    model.train()
    model(torch.randn(1, 2, 3, 64, 64)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.text_parameters())


def test_linear_head():
    model = build_model(ModelConfig(name="tiny", head="linear"), NAMES, [TEMPLATES] * 4)
    assert model(torch.randn(2, 2, 3, 64, 64)).shape == (2, 4)
    assert "linear.weight" in model.new_parameter_names()


def test_open_clip_local_weights_file(tmp_path, tiny_open_clip):
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in tiny_open_clip.clip.state_dict().items()}
    state["logit_scale"] = torch.tensor(2.5)
    save_file(state, tmp_path / "tiny.safetensors")
    loaded = build_backbone(ModelConfig(name="tiny", pretrained=str(tmp_path / "tiny.safetensors")))
    assert loaded.logit_scale_init == pytest.approx(2.5)
    for k, v in loaded.clip.state_dict().items():
        torch.testing.assert_close(v, tiny_open_clip.clip.state_dict()[k])


def test_hf_local_folder(tmp_path):
    src = build_backbone(ModelConfig(backbone="hf", name="tiny_hf.json"))
    src.clip.logit_scale = torch.nn.Parameter(torch.tensor(1.5))  # removed by the backbone; restore to save
    src.clip.save_pretrained(tmp_path / "clip")
    loaded = build_backbone(ModelConfig(backbone="hf", name=str(tmp_path / "clip")))
    assert loaded.logit_scale_init == pytest.approx(1.5)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded.encode_frames(x)[0], src.encode_frames(x)[0])
    tokens = loaded.tokenize(["a video of a person dancing."])
    assert tokens.shape == (1, 32) and tokens[0, 0] == 49406  # CLIP start-of-text


def test_missing_weights_fail_fast_with_advice(tmp_path):
    start = time.perf_counter()
    with pytest.raises(InputError, match="--set model.pretrained=/path/to/"):
        build_backbone(ModelConfig(name="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path)))
    with pytest.raises(InputError, match="does not exist"):
        build_backbone(ModelConfig(name="tiny", pretrained=str(tmp_path / "missing.safetensors")))
    with pytest.raises(InputError, match="huggingface.co cannot be reached"):
        build_backbone(ModelConfig(backbone="hf", name="openai/clip-vit-base-patch16"))
    with pytest.raises(InputError, match="neither a file nor a pretrained tag"):
        build_backbone(ModelConfig(name="ViT-B-16", pretrained="no-such-tag"))
    assert time.perf_counter() - start < 10.0
