"""BoxHead (RoIAlign pooling into the text space) and the multi-label losses."""
import math

import pytest
import torch
import torch.nn.functional as F

from vlcofit.config.schema import ModelConfig
from vlcofit.errors import InputError
from vlcofit.models.losses import multilabel_loss
from vlcofit.models.boxes import MAX_SCALE, BoxHead
from vlcofit.models.video import build_model


def _inputs(b=2, d=16, t=3, hw=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    token_map = torch.randn(b, d, t, hw, hw, generator=g)
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.9, 0.8]])
    box_batch = torch.tensor([0, 1, 1])
    return token_map, boxes, box_batch


def test_shapes_and_initial_prior():
    torch.manual_seed(0)
    head = BoxHead(16, 8, context=False)
    token_map, boxes, box_batch = _inputs()
    emb = head(token_map, boxes, box_batch)
    assert emb.shape == (3, 8)
    text = torch.randn(5, 8)
    logits = head.logits(emb, text)
    assert logits.shape == (3, 5)
    assert torch.sigmoid(head.logit_bias).item() == pytest.approx(0.02, rel=1e-5)
    assert head.logit_scale.exp().item() == pytest.approx(10.0, rel=1e-5)
    # logits = scale * cos + bias, cos within [-1, 1]
    assert ((logits - head.logit_bias).abs() <= 10.0 + 1e-4).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 logits under mixed precision
        low = head.logits(head(token_map.bfloat16(), boxes, box_batch), text)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, logits, atol=0.15, rtol=0)


def test_gradients_reach_token_map_and_head():
    torch.manual_seed(0)
    head = BoxHead(16, 8)
    token_map, boxes, box_batch = _inputs()
    token_map.requires_grad_(True)
    context = torch.randn(2, 8, requires_grad=True)
    logits = head.logits(head(token_map, boxes, box_batch, context), torch.randn(5, 8))
    multilabel_loss(logits, (torch.rand(3, 5) > 0.7).float()).backward()
    assert token_map.grad is not None and token_map.grad.abs().sum() > 0
    assert context.grad.abs().sum() > 0
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("hw,atol", [(4, 0.05), (14, 1e-5)])
def test_whole_frame_box_pools_the_map_mean(hw, atol):
    head = BoxHead(16, 8)
    token_map, _, _ = _inputs(hw=hw)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    feats = head.roi_features(token_map, boxes, torch.tensor([0, 1]))
    torch.testing.assert_close(feats, token_map.mean(dim=(2, 3, 4)), atol=atol, rtol=0)


def test_box_pools_its_own_region_and_time_average():
    head = BoxHead(16, 8)
    token_map, _, _ = _inputs(hw=14)
    # right half columns, top half rows: tokens [0:7, 7:14], one RoIAlign sample per token
    feats = head.roi_features(token_map, torch.tensor([[0.5, 0.0, 1.0, 0.5]]), torch.tensor([1]))
    torch.testing.assert_close(feats[0], token_map[1, :, :, :7, 7:].mean(dim=(1, 2, 3)),
                               atol=1e-5, rtol=0)
    # RoIAlign is linear: pooling the time average == averaging the per-frame pooling
    boxes = torch.tensor([[0.13, 0.21, 0.58, 0.93]])
    per_frame = [head.roi_features(token_map[:, :, t:t + 1], boxes, torch.tensor([0]))
                 for t in range(token_map.shape[2])]
    torch.testing.assert_close(head.roi_features(token_map, boxes, torch.tensor([0])),
                               torch.stack(per_frame).mean(0), atol=1e-5, rtol=0)


def test_temporal_transformer_starts_as_mean_and_sees_frame_order():
    torch.manual_seed(0)
    token_map, boxes, box_batch = _inputs(t=4, hw=7)
    head = BoxHead(16, 8, temporal="transformer")
    mean = BoxHead(16, 8).roi_features(token_map, boxes, box_batch)
    torch.testing.assert_close(head.roi_features(token_map, boxes, box_batch), mean,
                               atol=1e-5, rtol=0)  # fresh: exactly the time-averaged pooling
    with torch.no_grad():  # a trained module: reversing the frames now changes the features
        head.temporal.out.weight.normal_(std=0.5)
    forward = head.roi_features(token_map, boxes, box_batch)
    backward = head.roi_features(token_map.flip(2), boxes, box_batch)
    assert not torch.allclose(forward, backward, atol=1e-3)
    # each box is pooled on its own clip's frames
    alone = head.roi_features(token_map[1:], boxes[1:], torch.tensor([0, 0]))
    torch.testing.assert_close(forward[1:], alone)
    token_map.requires_grad_(True)
    head(token_map, boxes, box_batch, torch.randn(2, 8)).sum().backward()
    assert token_map.grad.abs().sum() > 0 and head.temporal.pos.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temporal"):
        BoxHead(16, 8, temporal="lstm")


def test_box_batch_is_respected():
    head = BoxHead(16, 8)
    token_map, boxes, box_batch = _inputs()
    feats = head.roi_features(token_map, boxes, box_batch)
    alone = head.roi_features(token_map[1:], boxes[1:], torch.tensor([0, 0]))
    torch.testing.assert_close(feats[1:], alone)
    # swapping the two clips and the owners gives the same boxes' features
    swapped = head.roi_features(token_map.flip(0), boxes, 1 - box_batch)
    torch.testing.assert_close(swapped, feats)
    assert not torch.allclose(head.roi_features(token_map, boxes, 1 - box_batch), feats)


def test_context_is_taken_from_each_box_clip():
    head = BoxHead(16, 8)
    with torch.no_grad():  # no RoI branch: only the clip context is left
        head.proj.weight.zero_()
        head.proj.bias.zero_()
    token_map, boxes, box_batch = _inputs()
    context = torch.randn(2, 8)
    emb = head(token_map, boxes, box_batch, context)
    torch.testing.assert_close(emb, F.normalize(context, dim=-1)[box_batch])
    with pytest.raises(ValueError, match="context"):
        head(token_map, boxes, box_batch)


def test_max_pool_and_bad_arguments():
    token_map, boxes, box_batch = _inputs()
    head = BoxHead(16, 8, pool="max", context=False)
    feats = head.roi_features(token_map, boxes, box_batch)
    avg = BoxHead(16, 8).roi_features(token_map, boxes, box_batch)
    assert (feats >= avg - 1e-6).all() and (feats > avg + 1e-3).any()
    assert (feats[1] <= token_map[1].amax(dim=(1, 2, 3)) + 1e-5).all()
    with pytest.raises(ValueError):
        BoxHead(16, 8, pool="median")
    with pytest.raises(ValueError):
        head(token_map, boxes, box_batch[:2])


def test_with_tiny_video_clip():
    torch.manual_seed(0)
    names = ["stand", "sit", "walk"]
    model = build_model(ModelConfig(name="tiny"), names, [("a person {}.",)] * 3)
    model.box_head = BoxHead(model.backbone.width, model.backbone.embed_dim)
    video = torch.randn(2, 2, 3, 64, 64)
    boxes, box_batch = torch.tensor([[0.1, 0.1, 0.5, 0.9], [0.4, 0.2, 0.9, 1.0]]), torch.tensor([0, 1])
    emb, token_map = model.encode_video(video)
    logits = model.box_head.logits(model.box_head(token_map, boxes, box_batch, emb),
                                   model.class_matrix())
    assert logits.shape == (2, 3)
    multilabel_loss(logits, torch.tensor([[1.0, 0, 0], [0, 1, 1]])).backward()
    visual = [p for n, p in model.named_parameters() if n.startswith("backbone.clip.visual.")]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in visual)
    assert all(n.startswith(("box_head.", "temporal.", "logit_scale"))
               for n in model.new_parameter_names())
    assert "box_head.logit_bias" in model.new_parameter_names()


def test_box_scale_learns_at_its_cap_and_is_clamped_after_the_step():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny"), ["stand", "sit", "walk"], [("a person {}.",)] * 3,
                        with_boxes=True)
    head = model.box_head
    with torch.no_grad():  # a scale just above the cap (as OpenAI's clip scale is)
        head.logit_scale.fill_(math.log(MAX_SCALE) + 1e-4)
    token_map, boxes, box_batch = _inputs(d=model.backbone.width, hw=4)
    text = torch.randn(4, model.backbone.embed_dim)
    emb = head(token_map, boxes, box_batch, torch.randn(2, model.backbone.embed_dim))
    cos = F.normalize(emb, dim=-1) @ F.normalize(text, dim=-1).t()
    # positives where the cosine is lowest: the loss wants a lower scale
    targets = (cos == cos.min(dim=1, keepdim=True).values).float()
    multilabel_loss(head.logits(emb, text), targets).backward()
    assert head.logit_scale.grad.item() > 0  # a clamp in logits() gave exactly 0
    torch.optim.AdamW([head.logit_scale], lr=1e-3, weight_decay=0.0).step()
    model.clamp_logit_scales()  # the trainer's post-step call reaches the box head
    assert head.logit_scale.item() < math.log(MAX_SCALE) - 5e-4
    with torch.no_grad():
        head.logit_scale.fill_(5.0)
    model.clamp_logit_scales()
    assert head.logit_scale.item() == torch.tensor(math.log(MAX_SCALE)).item()


# ------------------------------------------------------------------------------------ losses

def _sp(x):  # softplus = -log(sigmoid(-x))
    return math.log1p(math.exp(x))


LOGITS = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
TARGETS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
# BCE per element: target 1 -> softplus(-x), target 0 -> softplus(x)
BCE = [[_sp(-0.0), _sp(2.0)], [_sp(-1.0), _sp(-3.0)]]


def test_bce_hand_values_and_reductions():
    mean = multilabel_loss(LOGITS, TARGETS, "bce")
    assert mean.item() == pytest.approx(sum(map(sum, BCE)) / 4, rel=1e-6)
    per_box = multilabel_loss(LOGITS, TARGETS, "bce", reduction="box")
    assert per_box.item() == pytest.approx((sum(BCE[0]) + sum(BCE[1])) / 2, rel=1e-6)


def test_focal_hand_values():
    def focal(x, y, gamma=2.0, alpha=0.25):
        p = 1 / (1 + math.exp(-x))
        p_t = p if y else 1 - p
        a_t = alpha if y else 1 - alpha
        return a_t * (1 - p_t) ** gamma * (_sp(-x) if y else _sp(x))
    want = sum(focal(x, y) for x, y in zip(LOGITS.flatten().tolist(), TARGETS.flatten().tolist())) / 4
    assert multilabel_loss(LOGITS, TARGETS, "focal").item() == pytest.approx(want, rel=1e-6)
    # gamma 0 without class weighting is plain BCE
    assert multilabel_loss(LOGITS, TARGETS, "focal", gamma=0.0, alpha=-1).item() == \
        pytest.approx(multilabel_loss(LOGITS, TARGETS, "bce").item(), rel=1e-6)


def test_loss_errors_and_empty():
    with pytest.raises(InputError, match="hinge"):
        multilabel_loss(LOGITS, TARGETS, "hinge")
    with pytest.raises(InputError, match="reduction"):
        multilabel_loss(LOGITS, TARGETS, reduction="sum")
    with pytest.raises(ValueError):
        multilabel_loss(LOGITS, TARGETS[:1])
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = multilabel_loss(empty, torch.zeros(0, 3))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None
