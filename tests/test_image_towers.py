"""Image towers beyond open_clip's own ViT: timm towers inside open_clip (a SigLIP-shaped ViT
with attention pooling and a logit bias, ConvNeXt, EVA-02) and Hugging Face ``SiglipModel``,
on tiny random configs: each builds, encodes ``[B, T, 3, H, W]`` into an embedding and a token
map, declares a depth for every tensor, trains a step, checkpoints activations on request;
SigLIP models train with the sigmoid loss; loading folders keeps their bias and statistics."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vlcofit.cli.main import main
from vlcofit.config.schema import ModelConfig, TrainConfig
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.errors import InputError
from vlcofit.models.losses import label_loss
from vlcofit.models.video import build_model
from vlcofit.train.optim import depth_of, param_groups

MODELS = Path(__file__).parents[1] / "configs" / "models"
NAMES = ["moving left", "moving right", "growing"]
TEMPLATES = ("a video of {}.",)
# (backbone, name, expected token-grid side, sigmoid loss by default)
FAMILIES = [("open_clip", "tiny_timm_vit", 4, True), ("open_clip", "tiny_convnext", 2, False),
            ("open_clip", "tiny_eva", 4, False), ("hf", "tiny_hf_siglip.json", 4, True)]
QUICK = ["train.steps=2", "train.batch_size=4", "train.num_workers=0", "train.log_every=1",
         "train.warmup_steps=1", "train.eval_every=0", "train.save_every=2", "eval.batch_size=8"]


def _build(backbone: str, name: str, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=backbone, name=name, **kw), NAMES,
                       [TEMPLATES] * len(NAMES))


@pytest.mark.parametrize("backbone,name,grid,sigmoid", FAMILIES)
def test_family_encodes_declares_depths_and_trains_a_step(backbone, name, grid, sigmoid):
    model = _build(backbone, name)
    b = model.backbone
    assert model.sigmoid is sigmoid and (model.logit_bias is not None) is sigmoid
    video = torch.rand(2, 3, 3, b.image_size, b.image_size)
    emb, token_map = model.encode_video(video)
    assert emb.shape == (2, b.embed_dim)
    assert token_map.shape == (2, b.width, 3, grid, grid)
    # every tensor has a depth (layer decay, freezing), the image tower's blocks are counted
    assert all(depth_of(model, n) is not None for n, _ in model.named_parameters())
    layers = b.num_layers("image")
    depths = {depth_of(model, n)[1] for n, _ in model.named_parameters()
              if depth_of(model, n)[0] == "image"}
    assert depths == set(range(layers + 2))  # embeddings 0, blocks 1..L, head L + 1
    groups = param_groups(model, model.new_parameter_names(),
                          TrainConfig(layer_decay=0.5, lr=1.0, lr_new=1.0))
    assert len({g["lr"] for g in groups}) > layers  # one rate per depth
    # one optimizer step moves the image tower and lowers nothing to NaN
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    labels = torch.tensor([0, 2])
    loss = label_loss(model.classify(emb), labels, model.sigmoid)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("backbone.") and depth_of(model, n)[0] == "image" for n in moved)
    assert not any(depth_of(model, n)[0] == "text" for n in moved)  # frozen text tower


@pytest.mark.parametrize("backbone,name,grid,sigmoid", FAMILIES)
def test_grad_checkpointing_gives_the_same_gradients(backbone, name, grid, sigmoid):
    grads = []
    for checkpointing in (False, True):
        model = _build(backbone, name, grad_checkpointing=checkpointing).eval()  # no dropout
        video = torch.rand(2, 2, 3, model.backbone.image_size, model.backbone.image_size,
                           generator=torch.Generator().manual_seed(1))
        model.classify(model.encode_video(video)[0]).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backbone,name", [f[:2] for f in FAMILIES] + [
    ("open_clip", "tiny"), ("hf", "tiny_hf.json")])  # open_clip's own ViT, Hugging Face CLIP
def test_every_attention_layer_runs_scaled_dot_product_attention(backbone, name, monkeypatch):
    """Fused attention (PyTorch's SDPA: flash / memory-efficient kernels on a GPU) in every
    image-tower block and text-tower block, in training, where the unfused path would keep
    the [heads, N, N] attention matrix for backward."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model = _build(backbone, name, train_text=True, temporal="mean").train()
    size = model.backbone.image_size
    video = torch.randint(0, 256, (2, 2, 3, size, size), dtype=torch.uint8)
    model.encode_video(video)
    image = len(calls)
    model.backbone.encode_text(model.backbone.tokenize(["a red square"]))
    cnn = name == "tiny_convnext"  # no attention in its image tower
    assert image == 0 if cnn else image >= model.backbone.num_layers("image")
    assert len(calls) - image >= model.backbone.num_layers("text")


def test_compiled_image_blocks_give_the_same_outputs_and_gradients():
    """model.compile: each image block compiled in place (inductor, CPU here); the state-dict
    names stay, so checkpoints load either way. One family: compiling takes ~30 s on 2 cores."""
    runs = []
    for compiled in (False, True):
        model = _build("open_clip", "tiny", compile=compiled).eval()
        size = model.backbone.image_size
        video = torch.randint(0, 256, (2, 2, 3, size, size), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(1))
        out = model.classify(model.encode_video(video)[0])
        out.square().sum().backward()
        runs.append((model, out.detach(),
                     {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain, a, ga), (comp, b, gb) = runs
    assert plain.state_dict().keys() == comp.state_dict().keys()
    assert all(hasattr(block, "_compiled_call_impl") and block._compiled_call_impl is not None
               for block in comp.backbone.image_blocks())
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert ga.keys() == gb.keys() and ga
    for n in ga:  # inductor reorders float32 sums: error relative to the largest gradient
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-3,
                                   atol=1e-4 * float(ga[n].abs().max()) + 1e-12)


def test_reinit_last_resets_the_last_timm_blocks_only():
    model = _build("open_clip", "tiny_timm_vit")
    model.mark_loaded({n for n, _ in model.named_parameters() if n.startswith("backbone.")})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = set(model.reinit_last(1))
    layers = model.backbone.num_layers("image")
    assert names and all(depth_of(model, n)[1] == layers for n in names)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    weights = {n for n in names if n.endswith("weight") and "norm" not in n}
    assert weights <= changed <= names  # only the last block moved; its matrices redrawn
    assert names <= model.new_parameter_names()


def test_sigmoid_label_loss_is_siglip_one_vs_rest():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 1.0, 4.0]])
    labels = torch.tensor([0, 2])
    sign = 2 * F.one_hot(labels, 3).float() - 1
    want = -F.logsigmoid(sign * logits).sum() / 2
    assert float(label_loss(logits, labels, sigmoid=True)) == pytest.approx(float(want))
    assert float(label_loss(logits, labels)) == pytest.approx(float(F.cross_entropy(logits, labels)))


def test_loss_choice_and_probabilities():
    clip = _build("open_clip", "tiny", loss="sigmoid")  # a CLIP trained with SigLIP's loss
    assert clip.sigmoid and float(clip.logit_bias.detach()) == -10.0
    siglip = _build("open_clip", "tiny_timm_vit", loss="softmax")  # its bias kept, softmax loss
    assert not siglip.sigmoid and siglip.logit_bias is not None
    logits = torch.tensor([[3.0, 0.0, -3.0]])
    assert clip.probabilities(logits).tolist() == torch.sigmoid(logits).tolist()
    assert siglip.probabilities(logits).sum().item() == pytest.approx(1.0)
    emb = torch.randn(2, clip.backbone.embed_dim)
    text = F.normalize(torch.randn(3, clip.backbone.embed_dim), dim=-1)
    want = clip.logit_scale.exp() * F.normalize(emb, dim=-1) @ text.t() + clip.logit_bias
    torch.testing.assert_close(clip.score(emb, text), want)


def test_open_clip_local_dir_keeps_bias_and_image_statistics(tmp_path):
    """A downloaded open_clip SigLIP folder (open_clip_config.json with its preprocess_cfg, and
    open_clip_model.safetensors) loads with its bias, weights and normalisation."""
    spec = json.loads((MODELS / "tiny_timm_vit.json").read_text())
    spec["vision_cfg"]["image_size"] = 160  # the timm model's own size: weights load unresized
    (tmp_path / "tiny_timm_160.json").write_text(json.dumps(spec))
    model = _build("open_clip", str(tmp_path / "tiny_timm_160.json"))
    folder = tmp_path / "siglip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": spec, "preprocess_cfg": {
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    state = {f"visual.{k}": v for k, v in model.backbone.clip.visual.state_dict().items()}
    state |= {k: v for k, v in model.backbone.clip.state_dict().items() if not k.startswith("visual.")}
    state |= {"logit_scale": torch.tensor(2.5), "logit_bias": torch.tensor(-7.5)}
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "open_clip_model.safetensors")
    loaded = build_model(ModelConfig(name=f"local-dir:{folder}"), NAMES, [TEMPLATES] * 3)
    assert loaded.backbone.mean == (0.5, 0.5, 0.5) and loaded.backbone.std == (0.5, 0.5, 0.5)
    assert float(loaded.logit_bias.detach()) == -7.5 and float(loaded.logit_scale.detach()) == 2.5
    assert loaded.sigmoid and loaded.image_tower_loaded()
    key = "backbone.clip.visual.trunk.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(loaded.state_dict()[key], model.state_dict()[key])


def _write_hf_siglip(folder: Path) -> None:
    """A random SiglipModel folder with a small WordPiece tokenizer and its image processor."""
    from transformers import BertTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *letters,
             *(f"##{c}" for c in letters)]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    spec = json.loads((MODELS / "tiny_hf_siglip.json").read_text())
    spec["text_config"]["vocab_size"] = len(vocab)
    model = SiglipModel(SiglipConfig.from_dict(spec))
    with torch.no_grad():
        model.logit_bias.fill_(-6.0)
    model.save_pretrained(folder)
    SiglipImageProcessor(image_mean=[0.4] * 3, image_std=[0.3] * 3).save_pretrained(folder)


def test_hf_siglip_folder_loads_with_its_tokenizer_bias_and_statistics(tmp_path):
    _write_hf_siglip(tmp_path / "siglip")
    model = build_model(ModelConfig(backbone="hf", name=str(tmp_path / "siglip")), NAMES,
                        [TEMPLATES] * 3)
    b = model.backbone
    assert type(b).__name__ == "HFSiglipBackbone" and b.pretrained
    assert b.mean == pytest.approx((0.4,) * 3) and b.std == pytest.approx((0.3,) * 3)
    assert float(model.logit_bias.detach()) == -6.0 and model.sigmoid
    tokens = b.tokenize(["moving left"])
    assert tokens.shape == (1, b.context_length) and int(tokens[0, 1]) != 1  # not [UNK]
    assert model.class_matrix().shape == (3, b.embed_dim)


def test_hf_siglip_folder_without_tokenizer_names_what_is_missing(tmp_path):
    _write_hf_siglip(tmp_path / "siglip")
    for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        (tmp_path / "siglip" / f).unlink(missing_ok=True)
    with pytest.raises(InputError, match="no tokenizer files.*siglip model needs its own"):
        build_model(ModelConfig(backbone="hf", name=str(tmp_path / "siglip")), NAMES, [TEMPLATES] * 3)


def test_unsupported_towers_fail_clearly(tmp_path):
    resnet = tmp_path / "tiny_rn.json"
    resnet.write_text(json.dumps({"embed_dim": 64, "vision_cfg": {
        "image_size": 64, "layers": [1, 1, 1, 1], "width": 16}, "text_cfg": {
        "context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}))
    with pytest.raises(InputError, match="ModifiedResNet is not supported"):
        _build("open_clip", str(resnet))
    other = tmp_path / "tiny_other.json"
    other.write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(InputError, match="model_type 'blip' is not supported.*clip, siglip"):
        _build("hf", str(other))


@pytest.mark.parametrize("backbone,name", [("open_clip", "tiny_timm_vit"),
                                           ("hf", "tiny_hf_siglip.json")])
def test_siglip_models_train_and_evaluate_through_the_cli(backbone, name, tmp_path):
    data = make_demo_dataset(tmp_path / "data", per_class_train=1, per_class_val=1)
    run = tmp_path / "run"
    sets = [a for s in [f"datasets.demo.root={data}", f"output_dir={run}",
                        f"model.backbone={backbone}", f"model.name={name}",
                        "model.grad_checkpointing=true", *QUICK] for a in ("--set", s)]
    assert main(["train", "demo", *sets]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics_val.json").read_text())
    assert 0 <= metrics["demo/top1"] <= 100
