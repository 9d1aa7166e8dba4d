"""One depth rule for every tower: timm's. The open_clip ViT's layer-decay multipliers and
weight-decay flags equal timm's ``param_groups_layer_decay`` on the same network, its tensors
renamed by timm's own open_clip -> timm mapping (``_convert_openai_clip``)."""
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer, _convert_openai_clip
from timm.optim import param_groups_layer_decay

from vlcofit.config.schema import ModelConfig, TrainConfig
from vlcofit.models.video import build_model
from vlcofit.train.optim import depth_of, param_groups

DECAY, WD = 0.65, 0.05


def _timm_name(clip_name: str, tensor: torch.Tensor) -> str:
    """timm's name of one open_clip ``visual.*`` tensor, by timm's converter."""
    converted = _convert_openai_clip({f"visual.{clip_name}": tensor}, None)
    return next(k for k in converted if k != "head.bias")  # head.bias: timm adds a zero bias


@pytest.mark.parametrize("layers", [2, 3])
def test_open_clip_vit_decays_as_timm_on_the_same_network(layers, tmp_path):
    spec = (f'{{"embed_dim": 32, "vision_cfg": {{"image_size": 32, "layers": {layers}, '
            f'"width": 64, "head_width": 32, "patch_size": 16}}, "text_cfg": {{"context_length": '
            f'16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}}')
    (tmp_path / "vit.json").write_text(spec)
    model = build_model(ModelConfig(name=str(tmp_path / "vit.json")), ["a", "b"], [("{}",)] * 2)
    ours = {id(p): g for g in param_groups(model, model.new_parameter_names(),
                                           TrainConfig(layer_decay=DECAY, lr=1.0, lr_new=1.0,
                                                       weight_decay=WD))
            for p in g["params"]}
    timm_vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=64, depth=layers,
                                 num_heads=2, pre_norm=True, num_classes=32, global_pool="token")
    theirs = {}
    for g in param_groups_layer_decay(timm_vit, weight_decay=WD, layer_decay=DECAY,
                                      no_weight_decay_list=timm_vit.no_weight_decay()):
        names = {id(p): n for n, p in timm_vit.named_parameters()}
        theirs.update({names[id(p)]: g for p in g["params"]})
    visual = dict(model.backbone.clip.visual.named_parameters())
    assert len(visual) == len(theirs) - 1  # all but timm's added head.bias
    for name, p in visual.items():
        mine, timm_group = ours[id(p)], theirs[_timm_name(name, p)]
        assert mine["lr"] == timm_group["lr_scale"], name
        assert mine["weight_decay"] == timm_group["weight_decay"], name
    # the final norm sits with the last block (depth L); the projection above it (L + 1)
    assert depth_of(model, "backbone.clip.visual.ln_post.weight") == ("image", layers, layers)
    assert depth_of(model, "backbone.clip.visual.proj") == ("image", layers + 1, layers)
    assert depth_of(model, "backbone.clip.visual.ln_pre.weight") == ("image", 0, layers)


def test_every_backend_puts_its_final_norms_with_the_last_block():
    for backbone, final in (("open_clip", ("backbone.clip.visual.ln_post.weight",
                                           "backbone.clip.ln_final.weight")),
                            ("hf", ("backbone.clip.vision_model.post_layernorm.weight",
                                    "backbone.clip.text_model.final_layer_norm.weight"))):
        model = build_model(ModelConfig(backbone=backbone, name="tiny" if backbone == "open_clip"
                                        else "tiny_hf.json", train_text=True),
                            ["a", "b"], [("{}",)] * 2)
        for name in final:
            tower, d, layers = depth_of(model, name)
            assert d == layers == 2, (backbone, name)
