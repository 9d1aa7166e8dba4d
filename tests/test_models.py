import math
import time

import open_clip
import pytest
import torch

from vlcofit.config.schema import ModelConfig
from vlcofit.errors import InputError
from vlcofit.models.backbones.factory import build_backbone
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


OPENAI_SCALE = 4.6052  # OpenAI's stored logit_scale: exp = 100.0026 > 100
LN100 = torch.tensor(math.log(100.0)).item()  # as stored in float32


def _scale_step(model, emb, wrong: bool):
    """One AdamW step of the clip scale on cross-entropy toward the least (``wrong``) or most
    similar class, then the post-step clamp; returns the scale's gradient."""
    rows = torch.arange(len(NAMES))
    with torch.no_grad():
        model.logit_scale.fill_(OPENAI_SCALE)
        cos = model.classify(emb, rows)
    opt = torch.optim.AdamW([model.logit_scale], lr=1e-3, weight_decay=0.0)
    labels = cos.argmin(1) if wrong else cos.argmax(1)
    torch.nn.functional.cross_entropy(model.classify(emb, rows), labels).backward()
    grad = model.logit_scale.grad.clone()
    opt.step()
    model.clamp_logit_scales()
    return grad


def test_logit_scale_learns_from_the_openai_value():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny"), NAMES, [TEMPLATES] * 4)
    emb = torch.randn(6, 64)
    # wrong labels: the loss wants a lower scale; the old forward clamp gave exactly 0 here
    grad = _scale_step(model, emb, wrong=True)
    assert grad.item() > 0
    assert model.logit_scale.item() < LN100 - 5e-4  # moved by the step, below the cap
    model.logit_scale.grad = None
    # right labels: the loss wants a higher scale; the clamp after the step caps it at ln 100
    grad = _scale_step(model, emb, wrong=False)
    assert grad.item() < 0 and model.logit_scale.item() == LN100


def test_logit_scale_clamped_at_build_and_load(tmp_path, tiny_open_clip):
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in tiny_open_clip.clip.state_dict().items()}
    state["logit_scale"] = torch.tensor(OPENAI_SCALE)
    save_file(state, tmp_path / "openai_like.safetensors")
    cfg = ModelConfig(name="tiny", pretrained=str(tmp_path / "openai_like.safetensors"))
    model = build_model(cfg, NAMES, [TEMPLATES] * 4)
    assert model.logit_scale.item() == LN100
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved["logit_scale"] = torch.tensor(OPENAI_SCALE)  # e.g. a checkpoint of the old code
    model.load_state_dict(saved)
    assert model.logit_scale.item() == LN100


def test_checkpoints_with_scalar_scales_still_load(tmp_path):
    """The scales and biases became one-element vectors (FSDP 2 cannot shard a 0-d parameter);
    a model.safetensors written before, holding them as scalars, still fits and loads."""
    from safetensors.torch import save_file

    from vlcofit.run.checkpoint import check_fits, load_matching
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny", loss="sigmoid"), NAMES, [TEMPLATES] * 4,
                        with_boxes=True)
    vectors = [k for k, v in model.state_dict().items() if v.shape == (1,)]
    assert {"logit_scale", "logit_bias", "box_head.logit_scale", "box_head.logit_bias"} <= set(vectors)
    assert not [k for k, v in model.state_dict().items() if v.ndim == 0]
    old = {k: (v.reshape(()) + 0.25 if k in vectors else v).contiguous()
           for k, v in model.state_dict().items()}
    save_file(old, tmp_path / "model.safetensors")
    torch.manual_seed(1)
    fresh = build_model(ModelConfig(name="tiny", loss="sigmoid"), NAMES, [TEMPLATES] * 4,
                        with_boxes=True)
    check_fits(fresh, tmp_path / "model.safetensors")  # no error: () and (1,) fit
    assert load_matching(fresh, tmp_path) == []
    for k in vectors:
        assert fresh.state_dict()[k].shape == (1,)
        assert fresh.state_dict()[k].item() == pytest.approx(
            min(old[k].item(), LN100) if k == "logit_scale" else old[k].item())


# ------------------------------------------------------------------ trained text tower

ROW_TEMPLATES = [TEMPLATES, ("{} in a video.", "a person {}."), TEMPLATES, ("a clip of {}.",)]


def _text_model(monkeypatch, with_boxes=False):
    """Tiny model training its text tower; returns it and the list of encode_text batch sizes."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny", train_text=True), NAMES, ROW_TEMPLATES,
                        with_boxes=with_boxes).train()
    calls, encode = [], model.backbone.encode_text
    monkeypatch.setattr(model.backbone, "encode_text",
                        lambda tokens: calls.append(len(tokens)) or encode(tokens))
    return model, calls


def test_trained_text_encodes_only_the_step_rows(monkeypatch):
    model, calls = _text_model(monkeypatch, with_boxes=True)
    video, rows = torch.randn(2, 2, 3, 64, 64), torch.tensor([3, 1])
    logits = model(video, rows)
    assert calls == [2] and logits.shape == (2, 2)  # 2 sequences, not 4 classes x templates
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    text = model.backbone.text_parameters()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in text)
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.9], [0.4, 0.2, 0.9, 1.0], [0.0, 0.0, 1.0, 1.0]])
    box_logits = model(video, head=lambda m, emb, tokens: m.box_logits(
        tokens, boxes, torch.tensor([0, 1, 1]), [0, 2, 3], context=emb))
    assert calls == [2, 3] and box_logits.shape == (3, 3)  # rows as a list work too
    model.zero_grad()
    box_logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in text)


def _single_template_embeddings(model, row):
    return torch.cat([class_embeddings(model.backbone, [NAMES[row]], [t])
                      for t in ROW_TEMPLATES[row]])


def test_trained_text_draws_one_of_each_row_templates(monkeypatch):
    model, calls = _text_model(monkeypatch)
    rows = torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad():
        singles = {r: _single_template_embeddings(model, r) for r in range(len(NAMES))}
        chosen = {r: set() for r in range(len(NAMES))}
        for _ in range(20):
            text = model.class_matrix(rows)
            assert text.shape == (5, 64)
            for i, r in enumerate(rows.tolist()):
                dist = (singles[r] - text[i]).norm(dim=-1)
                assert dist.min() < 1e-5, (r, dist)
                chosen[r].add(int(dist.argmin()))
        # seeded per step (the trainer: seed, step, process): the same draws whatever the
        # global RNG did in between (a resumed run), and the global RNG untouched
        model.seed_text_draws(0, 5, 0)
        first, state = model.class_matrix(rows), torch.get_rng_state()
        assert torch.equal(torch.get_rng_state(), state)
        torch.rand(3)
        model.seed_text_draws(0, 5, 0)
        torch.testing.assert_close(model.class_matrix(rows), first, rtol=0, atol=0)
        others = [model.seed_text_draws(0, step, 0) or model.class_matrix(rows)
                  for step in range(6)]
        assert any(not torch.equal(o, first) for o in others)
    assert chosen[0] == {0, 1, 2} and chosen[1] == {0, 1} and chosen[3] == {0}


def test_eval_text_is_the_cached_template_ensemble(monkeypatch):
    model, calls = _text_model(monkeypatch)
    model.eval()
    rows = torch.tensor([3, 1])
    with torch.no_grad():
        want = torch.cat([class_embeddings(model.backbone, [NAMES[r]], ROW_TEMPLATES[r])
                          for r in range(len(NAMES))])
    n = len(calls)
    torch.testing.assert_close(model.class_matrix(), want)
    torch.testing.assert_close(model.class_matrix(rows), want[rows])
    model.class_matrix(rows)
    assert len(calls) - n == 3  # one batch per template group (3 groups), then cached
    assert model(torch.randn(1, 2, 3, 64, 64), rows).shape == (1, 2)
    assert len(calls) - n == 3


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
