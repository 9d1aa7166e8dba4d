"""Non-binary transfer knobs (Plested et al. 2021): parameter depths per backbone, layer decay,
regex multipliers, freezing, re-initialising blocks, L2-SP (arithmetic, resume), bad input."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vlcofit.train.loop as train_mod
from vlcofit.config.schema import ModelConfig, TrainConfig
from vlcofit.experiment import load_experiment
from vlcofit.errors import InputError
from vlcofit.models.video import build_model
from vlcofit.train.optim import (
    apply_freeze, apply_l2sp, attach_l2sp, build_optimizer, depth_of, param_groups,
)
from vlcofit.train.loop import train

MODELS = {"open_clip": "tiny", "hf": "tiny_hf.json"}
# the same tensors of the same architecture under both backends' names
SAME = {"open_clip": {"conv": "backbone.clip.visual.conv1.weight",
                      "pos": "backbone.clip.visual.positional_embedding",
                      "cls": "backbone.clip.visual.class_embedding",
                      "block1": "backbone.clip.visual.transformer.resblocks.1.mlp.c_fc.weight",
                      "head": "backbone.clip.visual.proj",
                      "text0": "backbone.clip.token_embedding.weight",
                      "text1": "backbone.clip.transformer.resblocks.0.ln_1.weight",
                      "text_head": "backbone.clip.text_projection"},
        "hf": {"conv": "backbone.clip.vision_model.embeddings.patch_embedding.weight",
               "pos": "backbone.clip.vision_model.embeddings.position_embedding.weight",
               "cls": "backbone.clip.vision_model.embeddings.class_embedding",
               "block1": "backbone.clip.vision_model.encoder.layers.1.mlp.fc1.weight",
               "head": "backbone.clip.visual_projection.weight",
               "text0": "backbone.clip.text_model.embeddings.token_embedding.weight",
               "text1": "backbone.clip.text_model.encoder.layers.0.layer_norm1.weight",
               "text_head": "backbone.clip.text_projection.weight"}}


def tiny(backbone: str, train_text: bool = False):
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone=backbone, name=MODELS[backbone], train_text=train_text),
                       ["a", "b"], [("{}",)] * 2)


def groups_by_param(model, cfg: TrainConfig) -> dict[str, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g for g in param_groups(model, model.new_parameter_names(), cfg)
            for p in g["params"]}


@pytest.mark.parametrize("backbone", ["open_clip", "hf"])
def test_every_parameter_has_a_declared_depth(backbone):
    model = tiny(backbone)
    s = SAME[backbone]
    expect = {"conv": ("image", 0), "pos": ("image", 0), "cls": ("image", 0),
              "block1": ("image", 2), "head": ("image", 3), "text0": ("text", 0),
              "text1": ("text", 1), "text_head": ("text", 3)}
    for key, (tower, d) in expect.items():
        assert depth_of(model, s[key]) == (tower, d, 2), key
    for name, _ in model.named_parameters():  # no tensor of either tower is left undeclared
        assert depth_of(model, name) is not None, name
    assert depth_of(model, "temporal.out.weight") == ("new", 1, 0)  # depth L + 1


def test_open_clip_and_hf_versions_get_the_same_groups():
    cfg = TrainConfig(layer_decay=0.5, weight_decay=0.1, lr=1e-3, lr_new=1e-2)
    tables = {}
    for backbone in MODELS:
        model = tiny(backbone, train_text=True)
        groups = param_groups(model, model.new_parameter_names(), cfg)
        tables[backbone] = sorted((g["name"], g["lr"], g["weight_decay"], g["l2sp"])
                                  for g in groups)
        by = groups_by_param(model, cfg)
        s = SAME[backbone]
        # weight decay by kind: conv patch embedding decays; position/class/token embeddings do not
        assert by[s["conv"]]["weight_decay"] == 0.1 and by[s["head"]]["weight_decay"] == 0.1
        assert all(by[s[k]]["weight_decay"] == 0.0 for k in ("pos", "cls", "text0", "text1"))
        assert by["logit_scale"]["weight_decay"] == 0.0
    assert tables["open_clip"] == tables["hf"]


@pytest.mark.parametrize("backbone", ["open_clip", "hf"])
def test_layer_decay_rate_per_depth(backbone):
    model = tiny(backbone)
    by = groups_by_param(model, TrainConfig(layer_decay=0.5, lr=1.0, lr_new=10.0))
    s = SAME[backbone]
    assert by[s["conv"]]["lr"] == pytest.approx(0.5 ** 3)  # depth 0 of L = 2
    assert by[s["block1"]]["lr"] == pytest.approx(0.5)  # block 1: depth 2
    assert by[s["head"]]["lr"] == pytest.approx(1.0)  # final norm / projection: L + 1
    assert by["temporal.out.weight"]["lr"] == pytest.approx(10.0)  # outside the backbone: L + 1
    # default: no layer decay, the four groups of before
    names = {g["name"] for g in param_groups(model, model.new_parameter_names(), TrainConfig())}
    assert names == {"pretrained", "pretrained_no_decay", "new", "new_no_decay"}



@pytest.mark.parametrize("backbone", ["open_clip", "hf"])
def test_towers_of_different_depths(backbone, tmp_path):
    """Each tower counts its own depth: a 3-block image tower beside a 1-block text tower."""
    if backbone == "open_clip":
        spec = json.loads(Path("configs/models/tiny.json").read_text())
        spec["vision_cfg"]["layers"], spec["text_cfg"]["layers"] = 3, 1
    else:
        spec = json.loads(Path("configs/models/tiny_hf.json").read_text())
        spec["vision_config"]["num_hidden_layers"], spec["text_config"]["num_hidden_layers"] = 3, 1
    path = tmp_path / "asym.json"
    path.write_text(json.dumps(spec))
    model = build_model(ModelConfig(backbone=backbone, name=str(path), train_text=True),
                        ["a", "b"], [("{}",)] * 2)
    s = SAME[backbone]
    assert depth_of(model, s["conv"]) == ("image", 0, 3)
    assert depth_of(model, s["head"]) == ("image", 4, 3)
    assert depth_of(model, s["text1"]) == ("text", 1, 1)
    assert depth_of(model, s["text_head"]) == ("text", 2, 1)
    by = groups_by_param(model, TrainConfig(layer_decay=0.5, lr=1.0, lr_new=1.0))
    assert by[s["conv"]]["lr"] == pytest.approx(0.5 ** 4)
    assert by[s["text0"]]["lr"] == pytest.approx(0.5 ** 2)
    assert by[s["text_head"]]["lr"] == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"'text:2' is deeper than the text tower \(1 blocks\)"):
        apply_freeze(model, ("text:2",))
    assert s["text1"] in apply_freeze(model, ("image:3", "text:1"))
    with pytest.raises(InputError, match=r"'text:1': the text tower is frozen already \(model."
                                         r"train_text: false\)"):
        apply_freeze(tiny(backbone), ("text:1",))

def test_an_undeclared_tower_is_an_error_naming_it():
    model = tiny("open_clip")
    model.backbone.image.depth_of = lambda name: None  # an image tower declaring no depths
    with pytest.raises(InputError, match=r"train.layer_decay: backbone.clip.visual.\S+ is in no "
                                         r"tower whose depths the OpenCLIPBackbone"):
        param_groups(model, model.new_parameter_names(), TrainConfig(layer_decay=0.8))
    param_groups(model, model.new_parameter_names(), TrainConfig())  # no depth needed: fine


def test_regex_multipliers_first_match_wins():
    model = tiny("open_clip")
    cfg = TrainConfig(lr=1.0, lr_new=10.0, weight_decay=0.1,
                      lr_mults={r"temporal\.out": 3.0, "temporal": 2.0},
                      wd_mults={r"visual\.proj": 0.5})
    by = groups_by_param(model, cfg)
    assert by["temporal.out.weight"]["lr"] == pytest.approx(30.0)
    assert by["temporal.norm_in.weight"]["lr"] == pytest.approx(20.0)
    assert by["backbone.clip.visual.proj"]["weight_decay"] == pytest.approx(0.05)
    assert by["backbone.clip.visual.conv1.weight"]["weight_decay"] == pytest.approx(0.1)
    with pytest.raises(InputError, match=r"train.lr_mults: 'nothing_here' matches no trainable"):
        param_groups(model, set(), TrainConfig(lr_mults={"nothing_here": 2.0}))
    with pytest.raises(InputError, match=r"train.wd_mults: '\(' is not a regular expression"):
        param_groups(model, set(), TrainConfig(wd_mults={"(": 2.0}))
    with pytest.raises(InputError, match=r"train.l2sp_mults\['x'\] must be > 0"):
        load_experiment("demo", ["train.l2sp_mults={x: 0.0}"])


def test_freeze_blocks_and_regexes():
    model = tiny("open_clip")
    frozen = apply_freeze(model, ("image:1", r"temporal\.out\."))
    grad = {n: p.requires_grad for n, p in model.named_parameters()}
    conv = "backbone.clip.visual.conv1.weight"
    assert conv in frozen and not grad[conv]
    assert not grad["backbone.clip.visual.transformer.resblocks.0.attn.in_proj_weight"]
    assert grad["backbone.clip.visual.transformer.resblocks.1.attn.in_proj_weight"]
    assert not grad["temporal.out.weight"] and grad["temporal.norm_in.weight"]
    in_optimizer = {id(p) for g in build_optimizer(model, set(), TrainConfig()).param_groups
                    for p in g["params"]}
    assert all(id(p) not in in_optimizer for n, p in model.named_parameters() if n in frozen)
    with pytest.raises(InputError, match=r"train.freeze: 'image:3' is deeper than the image tower "
                                         r"\(2 blocks\)"):
        apply_freeze(tiny("hf"), ("image:3",))
    with pytest.raises(InputError, match=r"train.freeze: 'nope' matches no trainable"):
        apply_freeze(tiny("hf"), ("nope",))


@pytest.mark.parametrize("backbone", ["open_clip", "hf"])
def test_reinit_last_blocks(backbone):
    model = tiny(backbone)
    with pytest.raises(InputError, match="model.reinit_last=1: the model has no pretrained start"):
        model.reinit_last(1)
    model.mark_loaded(n for n, _ in model.named_parameters())  # as after model.init_from
    with pytest.raises(InputError, match="model.reinit_last=3: the image tower has only 2 blocks"):
        model.reinit_last(3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = model.reinit_last(1)
    after = dict(model.named_parameters())
    assert names and all(depth_of(model, n)[:2] == ("image", 2) for n in names)
    assert any(not torch.equal(before[n], after[n]) for n in names if after[n].ndim == 2)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in names)
    assert set(names) <= model.new_parameter_names() and not set(names) & model.loaded_names



@pytest.mark.parametrize("backbone", ["open_clip", "hf"])
def test_reinit_matches_the_architectures_own_init(backbone):
    """Each re-initialised matrix has the spread a freshly built model gives that tensor (HF
    CLIP's per-kind stds, not the generic std 1.0 rule; open_clip's PyTorch defaults)."""
    model = tiny(backbone)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # a "trained" start far from any init
    model.mark_loaded(n for n, _ in model.named_parameters())
    names = model.reinit_last(1)
    torch.manual_seed(1)
    fresh = dict(tiny(backbone).named_parameters())
    params = dict(model.named_parameters())
    matrices = [n for n in names if params[n].ndim == 2]
    assert matrices
    for n in matrices:
        ratio = params[n].std().item() / fresh[n].std().item()
        assert 0.8 < ratio < 1.25, (n, ratio)


def _l2sp_model(**cfg):
    model = tiny("open_clip")
    model.mark_loaded(n for n, _ in model.named_parameters() if n.startswith("backbone."))
    optimizer = build_optimizer(model, model.new_parameter_names(), TrainConfig(**cfg))
    attach_l2sp(optimizer)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # w != w0
            p.grad = torch.zeros_like(p)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    apply_l2sp(optimizer)
    return model, w0, w


def test_l2sp_and_l2_arithmetic_with_zero_gradients():
    lr, alpha, wd = 0.01, 0.3, 0.2
    model, w0, w = _l2sp_model(lr=lr, lr_new=lr, l2sp=alpha, weight_decay=0.0)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        moved = w[n] - lr * alpha * (w[n] - w0[n]) if n.startswith("backbone.") else w[n]
        torch.testing.assert_close(p.detach(), moved, rtol=1e-6, atol=1e-7)
    model, _, w = _l2sp_model(lr=lr, lr_new=lr, l2sp=0.0, weight_decay=wd)
    p = dict(model.named_parameters())
    for n in ("backbone.clip.visual.conv1.weight", "temporal.out.weight"):
        torch.testing.assert_close(p[n].detach(), w[n] - lr * wd * w[n], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(p["temporal.out.bias"].detach(), w["temporal.out.bias"])  # no decay



def test_l2sp_and_l2_with_adam_and_real_gradients():
    """Both decays beside a real AdamW step, first step in closed form: AdamW decays and steps
    (w1 = w - lr*wd*w - lr*g/(|g|+eps)), then L2-SP pulls w1 toward w0 by lr*alpha (documented
    order: apply_l2sp runs right after optimizer.step())."""
    lr, alpha, wd = 0.01, 0.3, 0.2
    model = tiny("open_clip")
    model.mark_loaded(n for n, _ in model.named_parameters() if n.startswith("backbone."))
    optimizer = build_optimizer(model, model.new_parameter_names(),
                                TrainConfig(lr=lr, lr_new=lr, l2sp=alpha, weight_decay=wd))
    attach_l2sp(optimizer)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
            p.grad = torch.randn_like(p)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    by = groups_by_param(model, TrainConfig(lr=lr, lr_new=lr, l2sp=alpha, weight_decay=wd))
    optimizer.step()
    apply_l2sp(optimizer)
    eps = optimizer.param_groups[0]["eps"]
    checked = 0
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        g = p.grad
        decay, sp = by[n]["weight_decay"], by[n]["l2sp"]
        w1 = w[n] - lr * decay * w[n] - lr * g / (g.abs() + eps)
        expect = w1 - lr * sp * (w1 - w0[n])
        torch.testing.assert_close(p.detach(), expect, rtol=1e-5, atol=1e-6)
        checked += decay > 0 and sp > 0
    assert checked  # some tensors had both decays

def test_l2sp_needs_transferred_weights():
    with pytest.raises(InputError, match=r"train.l2sp=0.1: the model holds no transferred weights"):
        param_groups(tiny("hf"), set(), TrainConfig(l2sp=0.1))


# --------------------------------------------------------------------------- through train()

@pytest.fixture(scope="module")
def demo_data(demo_videos) -> Path:
    return demo_videos(4, 2)


def small_config(data: Path, out: Path, *extra: str):
    return load_experiment("demo", [
        f"datasets.demo.root={data}", f"output_dir={out}", "model.name=tiny", "train.steps=4",
        "train.batch_size=4", "train.num_workers=0", "train.log_every=1", "train.save_every=2",
        "train.warmup_steps=1", "train.eval_every=0", "eval.batch_size=8", "eval.max_batches=1",
        *extra])


@pytest.fixture(scope="module")
def start(demo_data, tmp_path_factory) -> Path:
    """A trained run: the starting weights (``model.init_from``) of the runs below."""
    run = tmp_path_factory.mktemp("start") / "run"
    train(small_config(demo_data, run))
    return run


def _weights(run: Path, step: int) -> dict:
    return load_file(run / "checkpoints" / f"step_{step:06d}" / "model.safetensors")


def test_frozen_weights_stay_bitwise_and_reinit_blocks_differ(demo_data, start, tmp_path):
    run = tmp_path / "run"
    train(small_config(demo_data, run, f"model.init_from={start}", "model.reinit_last=1",
                       "train.freeze=[image:1]", "train.lr=1e-2", "train.lr_new=1e-2"))
    a, b = _weights(start, 4), _weights(run, 4)
    frozen = [k for k in a if k.startswith(("backbone.clip.visual.transformer.resblocks.0.",
                                            "backbone.clip.visual.conv1"))]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    block = "backbone.clip.visual.transformer.resblocks.1.mlp.c_fc.weight"
    assert not torch.equal(a[block], b[block])
    table = json.loads((run / "param_groups.json").read_text())
    listed = {n: g for g in table for n in g["parameters"]}
    assert not set(frozen) & set(listed)
    assert listed[block]["group"].startswith("new")  # re-initialised: a new parameter
    assert listed["temporal.out.weight"]["group"] == "pretrained"  # loaded by init_from: not new


def _killed_after_two_steps(monkeypatch, cfg) -> None:
    """Train ``cfg`` until a kill during its third step (checkpoint at step 2 kept)."""
    real_step = train_mod._optimizer_step
    calls = {"n": 0}

    def killed(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_optimizer_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(train_mod, "_optimizer_step", real_step)


def test_resume_with_l2sp_equals_uninterrupted(demo_data, start, tmp_path, monkeypatch):
    extra = (f"model.init_from={start}", "train.l2sp=5.0", "train.lr=1e-2",
             "train.l2sp_mults={'resblocks\\.1\\.': 2.0}")
    train(small_config(demo_data, tmp_path / "full", *extra))
    train(small_config(demo_data, tmp_path / "none", *extra, "train.l2sp=0"))
    off = _weights(tmp_path / "none", 4)
    table = json.loads((tmp_path / "full" / "param_groups.json").read_text())
    assert {g["l2sp"] for g in table} == {5.0, 10.0}  # everything was loaded: all transferred

    _killed_after_two_steps(monkeypatch, small_config(demo_data, tmp_path / "part", *extra))
    train(small_config(demo_data, tmp_path / "part", *extra), resume="latest")
    a, b = _weights(tmp_path / "full", 4), _weights(tmp_path / "part", 4)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    block = "backbone.clip.visual.transformer.resblocks.1.mlp.c_fc.weight"
    start_w = _weights(start, 4)[block]
    assert (a[block] - start_w).norm() < 0.9 * (off[block] - start_w).norm()  # L2-SP pulled back
    # w0 is not in the checkpoint: the optimizer file holds AdamW's state only
    saved = torch.load(tmp_path / "part" / "checkpoints" / "step_000004" / "optimizer.bin",
                       weights_only=True)
    assert all(not isinstance(v, (torch.Tensor, list)) or k == "params"
               for g in saved["param_groups"] for k, v in g.items())


@pytest.mark.parametrize("item, message", [
    ("train.lr_mults={temporal: 0}", r"train.lr_mults\['temporal'\] must be > 0, got 0"),
    ("train.layer_decay=0", "train.layer_decay must be in (0, 1], got 0"),
    ("train.l2sp=-1", "train.l2sp must be >= 0, got -1"),
    ("model.reinit_last=-1", "model.reinit_last must be >= 0, got -1"),
])
def test_bad_values_name_the_key(demo_data, tmp_path, item, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("]", r"\]")
                       if "[" not in message else message):
        small_config(demo_data, tmp_path / "x", item)


def test_l2sp_with_random_init_is_refused_by_train(demo_data, tmp_path):
    with pytest.raises(InputError, match="train.l2sp=0.1: the model holds no transferred weights"):
        train(small_config(demo_data, tmp_path / "x", "train.l2sp=0.1"))


@pytest.mark.parametrize("backbone", ["open_clip", "hf"])
def test_weights_from_a_file_are_transferred(backbone, tmp_path):
    """Decided where the weights are loaded: a local weights file / folder makes the backbone
    transferred (L2-SP applies), a random-init one does not; new modules stay new."""
    random_init = tiny(backbone)
    assert not random_init.loaded_names
    if backbone == "open_clip":
        import open_clip
        file = tmp_path / "tiny.pt"
        torch.save(open_clip.create_model("tiny").state_dict(), file)
        cfg = ModelConfig(name="tiny", pretrained=str(file))
    else:
        from transformers import CLIPModel
        CLIPModel(random_init.backbone.clip.config).save_pretrained(tmp_path / "hf")
        cfg = ModelConfig(backbone="hf", name=str(tmp_path / "hf"))
    model = build_model(cfg, ["a", "b"], [("{}",)] * 2)
    assert model.loaded_names == model.base_names == {n for n, _ in model.named_parameters()
                                                      if n.startswith("backbone.")}
    by = groups_by_param(model, TrainConfig(l2sp=0.1))
    assert by[SAME[backbone]["conv"]]["l2sp"] == 0.1 and by["temporal.out.weight"]["l2sp"] == 0.0


def test_loss_weight_scales_the_l2sp_step_too():
    from vlcofit.config.schema import ExperimentConfig
    from vlcofit.train.loop import _optimizer_step
    from vlcofit.train.accelerator import make_accelerator

    lr, alpha = 0.01, 0.5
    cfg = TrainConfig(lr=lr, lr_new=lr, l2sp=alpha, weight_decay=0.0, clip_grad=None)
    model = tiny("open_clip")
    model.mark_loaded(n for n, _ in model.named_parameters() if n.startswith("backbone."))
    accelerator = make_accelerator(ExperimentConfig(train=cfg), None)
    optimizer = build_optimizer(model, model.new_parameter_names(), cfg)
    attach_l2sp(optimizer)
    name = "backbone.clip.visual.conv1.weight"
    p = dict(model.named_parameters())[name]
    w0 = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)

    class ZeroLoss:  # every parameter gets a zero gradient: only the decays move weights
        @staticmethod
        def loss(m, batch, rows, t):
            return sum((q * 0).sum() for q in m.parameters() if q.requires_grad)

    w = p.detach().clone()
    batches = iter(lambda: {"bad": []}, None)
    _optimizer_step(accelerator, model, optimizer, batches, None, ZeroLoss, cfg, lambda b: None,
                    loss_weight=0.5)
    torch.testing.assert_close(p.detach(), w - 0.5 * lr * alpha * (w - w0), rtol=1e-6, atol=1e-7)
    assert [g["lr"] for g in optimizer.param_groups] == [lr] * len(optimizer.param_groups)


def test_resume_loads_the_recorded_start_not_what_init_from_names_now(demo_data, start, tmp_path,
                                                                      monkeypatch):
    """A run's ``latest`` moves on; a resumed fine-tune keeps the start it began from, and
    refuses it once it is changed or gone (it decides what is new; L2-SP pulls toward it)."""
    import shutil
    src = tmp_path / "start"
    shutil.copytree(start, src)
    extra = (f"model.init_from={src}", "train.l2sp=5.0", "train.lr=1e-2")
    train(small_config(demo_data, tmp_path / "full", *extra))
    _killed_after_two_steps(monkeypatch, small_config(demo_data, tmp_path / "part", *extra))
    recorded = json.loads((tmp_path / "part" / "start.json").read_text())
    first = src / "checkpoints" / "step_000004"
    assert Path(recorded["checkpoint"]) == first.resolve()
    # the start run moves on: its latest now names other weights
    moved = src / "checkpoints" / "step_000008"
    shutil.copytree(first, moved)
    weights = load_file(moved / "model.safetensors")
    from safetensors.torch import save_file
    save_file({k: v + 1 for k, v in weights.items()}, moved / "model.safetensors")
    (src / "checkpoints" / "latest").write_text("step_000008")
    cfg = small_config(demo_data, tmp_path / "part", *extra)
    train(cfg, resume="latest")
    a, b = _weights(tmp_path / "full", 4), _weights(tmp_path / "part", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)

    save_file({k: v + 1 for k, v in weights.items()}, first / "model.safetensors")
    with pytest.raises(InputError, match=r"model.init_from: .*step_000004/model.safetensors "
                                         r"changed since this run started"):
        train(cfg, resume=str(tmp_path / "part" / "checkpoints" / "step_000002"))
    shutil.rmtree(first)
    with pytest.raises(InputError, match=r"started from .*step_000004/model.safetensors, which "
                                         r"is gone"):
        train(cfg, resume=str(tmp_path / "part" / "checkpoints" / "step_000002"))
