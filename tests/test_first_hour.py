"""A new user's first hour, without dead ends (issue 18 item 5): printed commands run as
printed, a dataset card trains as it is, renamed classes score zero-shot, hints name each
command's own flags, ava-eval and eval agree in one unit, progress over many runs, and no
misleading notices where a checkpoint loads."""
import io
import json
import logging
import pickle
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from vlcofit.cli.main import main
from vlcofit.experiment import load_experiment
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.data.synthetic.ava import make_demo_ava

REPO = Path(__file__).resolve().parents[1]
QUICK = ["train.steps=2", "train.batch_size=4", "train.num_workers=0", "train.log_every=1",
         "train.warmup_steps=1", "train.eval_every=0", "train.save_every=2", "eval.batch_size=8"]
NEW_NAMES = ["drifting left", "drifting right", "rising", "sinking", "turning clockwise",
             "turning anticlockwise", "getting bigger", "getting smaller"]  # the demo's, renamed


def _sets(items):
    return [a for s in items for a in ("--set", s)]


def _json_out(text: str):
    """The indented JSON document at the end of ``text`` (its first line is "{")."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A working folder holding the demo data where the shipped demo card looks for it
    (runs/demo/data/demo) and a 2-step run of the demo config (runs/first)."""
    base = tmp_path_factory.mktemp("first_hour")
    data = make_demo_dataset(base / "runs" / "demo" / "data" / "demo", per_class_train=2,
                             per_class_val=1)
    assert main(["train", "demo", *_sets([f"datasets.demo.root={data}", "model.temporal=mean",
                                          f"output_dir={base / 'runs' / 'first'}", *QUICK])]) == 0
    return base


# --------------------------------------------------------------------------- a. advise

def test_advise_prints_a_train_command_that_runs_as_printed(base, tmp_path, capsys):
    data, run = base / "runs" / "demo" / "data" / "demo", base / "runs" / "first"
    user = [f"datasets.demo.root={data}", f"model.init_from={run}", "model.temporal=mean",
            f"output_dir={tmp_path / 'advised run'}", *QUICK]
    capsys.readouterr()
    assert main(["advise", "demo", *_sets(user), "--out", str(tmp_path / "advice")]) == 0
    printed = capsys.readouterr().out
    command = printed[printed.index("vlcofit train"):printed.index("\n\nadvice:")]
    argv = shlex.split(command.replace("\\\n", ""))  # as the shell joins continued lines
    advice = json.loads((tmp_path / "advice" / "advice.json").read_text())
    assert argv[:3] == ["vlcofit", "train", "demo"]
    assert f"model.init_from={run}" in argv and argv[-2:] == ["--set", advice["set"][-1]]
    assert main(argv[1:]) == 0  # pasted, it trains
    assert json.loads((tmp_path / "advised run" / "run.json").read_text())["end_time"]


# --------------------------------------------------------------------------- b. cards

def _card(path: Path, root: Path, **extra) -> Path:
    card = {"name": "mydata", "task": "classification", "format": "csv", "root": str(root),
            "train": "train.csv", "val": "val.csv", "prompts": "demo", "hflip": False, **extra}
    path.write_text(yaml.safe_dump(card))
    return path


def test_train_and_eval_accept_a_dataset_card(base, tmp_path, monkeypatch):
    data = base / "runs" / "demo" / "data" / "demo"
    card = _card(tmp_path / "mydata.yaml", data)
    cfg = load_experiment(card, ["train.steps=20"])
    assert list(cfg.datasets) == ["mydata"] and cfg.train.datasets == ("mydata",)
    assert cfg.train.steps == 20 and cfg.output_dir == "runs/mydata"
    assert cfg.model.name == "tiny" and cfg.datasets["mydata"].hflip is False
    monkeypatch.chdir(tmp_path)  # the run goes to runs/mydata under the working directory
    assert main(["train", str(card), *_sets(QUICK)]) == 0
    assert (tmp_path / "runs" / "mydata" / "run.json").is_file()
    assert main(["eval", str(card), "--checkpoint", "runs/mydata", "--out", "ev"]) == 0
    assert "mydata/top1" in json.loads((tmp_path / "ev" / "metrics_val.json").read_text())


def test_a_missing_prompt_file_names_the_paths_it_tried(base, tmp_path, monkeypatch, capsys):
    card = _card(tmp_path / "card.yaml", base / "runs" / "demo" / "data" / "demo",
                 prompts="classes.txt")
    (tmp_path / "classes.txt").write_text("\n".join(NEW_NAMES) + "\n")  # beside the card
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", str(card), *_sets(QUICK)]) == 2
    err = capsys.readouterr().err
    assert "classes.txt: no such file, and not a shipped prompts name" in err
    assert str(elsewhere / "classes.txt") in err and str(REPO / "prompts" / "classes.txt") in err
    assert "relative to the working directory" in err


def test_docs_card_template_and_smallest_experiment_load(tmp_path, monkeypatch):
    docs = (REPO / "docs" / "datasets.md").read_text()
    section = docs[docs.index("# Adding a dataset"):]
    card_text, experiment_text = re.findall(r"```yaml\n(.*?)```", section, re.S)
    card = yaml.safe_load(card_text)
    assert "hflip" in card and "hflip" in section[section.index("Mind"):]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "datasets").mkdir(parents=True)
    (tmp_path / "configs" / "datasets" / "mydata.yaml").write_text(card_text)
    (tmp_path / "experiment.yaml").write_text(experiment_text)
    from_card = load_experiment("configs/datasets/mydata.yaml")
    written = load_experiment(tmp_path / "experiment.yaml")
    assert written.datasets == from_card.datasets and written.train == from_card.train
    assert written.output_dir == from_card.output_dir == "runs/mydata"


# --------------------------------------------------------------------------- c. --label-map

def test_zero_shot_with_renamed_classes_and_a_label_map(base, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(base)  # the shipped demo card's root: runs/demo/data/demo
    names = tmp_path / "new_names.txt"
    names.write_text("\n".join(NEW_NAMES) + "\n")
    old = (REPO / "prompts" / "demo.txt").read_text().split("\n")
    command = ["zero-shot", "--weights", "runs/first", "--data", "demo", "--prompts", str(names),
               "--workers", "0", "--json"]
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "is not in the prompt file" in err and "--label-map" in err and "indices" in err
    pairs = ",".join(f"{o}={n}" for o, n in zip(old, NEW_NAMES))
    assert main([*command, "--label-map", pairs]) == 0
    by_pairs = _json_out(capsys.readouterr().out)["metrics"]
    assert by_pairs["demo/count"] == 8
    mapping = tmp_path / "map.txt"
    mapping.write_text("# old=new\n" + "".join(f"{o}={n}\n" for o, n in zip(old, NEW_NAMES)))
    assert main([*command, "--label-map", str(mapping)]) == 0
    assert _json_out(capsys.readouterr().out)["metrics"] == by_pairs
    # the same videos labelled by index into the new file: the same scores
    rows = (base / "runs/demo/data/demo/val.csv").read_text().splitlines()[1:]
    manifest = tmp_path / "val_index.csv"
    manifest.write_text("path,label\n" + "".join(
        f"{base / 'runs/demo/data/demo' / r.split(',')[0]},{old.index(r.split(',')[1])}\n"
        for r in rows))
    assert main([*command[:4], str(manifest), *command[5:]]) == 0
    by_index = _json_out(capsys.readouterr().out)["metrics"]
    assert by_index["val_index/top1"] == by_pairs["demo/top1"]
    assert main([*command, "--label-map", "moving left=gliding"]) == 2
    assert "'gliding' is not in the prompt file" in capsys.readouterr().err


# --------------------------------------------------------------------------- d. hints

def test_offline_weights_hint_names_each_commands_own_flag(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    (tmp_path / "v.csv").write_text("path,label\nv.mp4,0\n")
    bare = ["--model", "ViT-B-16", "--pretrained", "openai"]
    for command in (["predict", str(tmp_path / "v.mp4"), *bare],
                    ["zero-shot", *bare, "--data", str(tmp_path / "v.csv"), "--prompts", "demo"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "--pretrained /path/to/open_clip_model.safetensors" in err, command[0]
        assert "--set" not in err
    # config commands take --set: their hint is unchanged
    from vlcofit.config.schema import ModelConfig
    from vlcofit.errors import InputError
    from vlcofit.models.backbones.factory import build_backbone
    with pytest.raises(InputError, match="--set model.pretrained=/path/to/open_clip") as err:
        build_backbone(ModelConfig(name="ViT-B-16", pretrained="openai"))
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)


# --------------------------------------------------------------------------- e. AVA units

def test_ava_eval_with_the_cards_exclusions_reproduces_eval(tmp_path, capsys):
    ava = make_demo_ava(tmp_path / "ava", num_train_videos=2, num_val_videos=2, seconds=4)
    run = tmp_path / "run"
    assert main(["train", "demo_ava", *_sets([f"datasets.demo_ava.root={ava}",
                                              f"output_dir={run}", "model.name=tiny",
                                              *QUICK, "train.batch_size=2"])]) == 0
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "ev")]) == 0
    reported = json.loads((tmp_path / "ev" / "metrics_val.json").read_text())["demo_ava/mAP"]
    files = ["--labelmap", str(ava / "labelmap.pbtxt"), "--groundtruth", str(ava / "val.csv"),
             "--detections", str(tmp_path / "ev" / "demo_ava_detections.csv")]
    capsys.readouterr()
    assert main(["ava-eval", *files, "--exclusions",
                 str(ava / "val_excluded_timestamps.csv")]) == 0
    official = _json_out(capsys.readouterr().out)
    assert official["unit"] == "percent" and official["protocol"] == "current"
    assert official["mAP"] == pytest.approx(reported, abs=1e-9)
    assert all(0 <= ap <= 100 for ap in official["per_class"].values())
    assert main(["ava-eval", *files]) == 0  # the card's exclusions are what made the gap
    assert _json_out(capsys.readouterr().out)["mAP"] != pytest.approx(reported, abs=1e-9)


# --------------------------------------------------------------------------- f. progress

def test_sweep_and_few_shot_show_run_i_of_n_without_cursor_escapes(base, tmp_path, capsys):
    data = base / "runs" / "demo" / "data" / "demo"
    capsys.readouterr()
    assert main(["sweep", "demo", "--grid", "train.lr=1e-3,1e-2", "--seeds", "0", "--out",
                 str(tmp_path / "sweep"), *_sets([f"datasets.demo.root={data}",
                                                  "model.temporal=mean", *QUICK])]) == 0
    err = capsys.readouterr().err  # not a terminal, like a log file
    assert re.search(r"run 1 of 2 \(lr=1e-3, seed 0\): elapsed 0:00:\d\d, ETA \?", err)
    assert re.search(r"run 2 of 2 \(lr=1e-2, seed 0\): elapsed \d:\d\d:\d\d, ETA \d:", err)
    assert "2 of 2 runs done in" in err and "\x1b[A" not in err
    assert main(["few-shot", "demo", "--shots", "1", "--seeds", "2", "--out",
                 str(tmp_path / "fewshot"), *_sets([f"datasets.demo.root={data}",
                                                    "model.temporal=mean", *QUICK])]) == 0
    err = capsys.readouterr().err
    assert "run 2 of 2 (K=1, seed 1): elapsed" in err and "\x1b[A" not in err


def test_training_with_evaluations_writes_no_cursor_escapes_to_a_file(base, tmp_path, capsys):
    """The evaluation bar opens while training's is open: into a file it must not nest."""
    data = base / "runs" / "demo" / "data" / "demo"
    capsys.readouterr()
    quick = [s for s in QUICK if not s.startswith("train.eval_every")]
    assert main(["train", "demo", *_sets([f"datasets.demo.root={data}", "model.temporal=mean",
                                          f"output_dir={tmp_path / 'run'}", "train.eval_every=1",
                                          *quick])]) == 0
    err = capsys.readouterr().err
    assert "eval demo" in err  # the evaluation bar was shown
    assert "\x1b[A" not in err


def test_run_progress_on_a_terminal_is_a_bar():
    from vlcofit.utils.progress import RunProgress

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    screen = Terminal()
    with RunProgress(2, stream=screen) as progress:
        progress.start("a")
        progress.start("b")
    assert "run 2 of 2 (b)" in screen.getvalue() and "2/2" in screen.getvalue()
    quiet = io.StringIO()
    with RunProgress(2, enabled=False, stream=quiet) as progress:
        progress.start("a")
    assert quiet.getvalue() == ""


# --------------------------------------------------------------------------- g. notices

RANDOM_INIT = "No pretrained weights loaded for model"


def test_no_random_init_notice_where_a_checkpoint_loads(base, tmp_path, caplog):
    from vlcofit.config.schema import ModelConfig
    from vlcofit.models.video import build_model
    with caplog.at_level(logging.WARNING):
        assert main(["eval", "--checkpoint", str(base / "runs" / "first"), "--out",
                     str(tmp_path / "ev")]) == 0
        assert main(["predict", str(next((base / "runs/demo/data/demo/val").glob("*.mp4"))),
                     "--checkpoint", str(base / "runs" / "first")]) == 0
    assert not [r for r in caplog.records if RANDOM_INIT in r.getMessage()]
    with caplog.at_level(logging.WARNING):  # a random model that stays random: still said
        build_model(ModelConfig(name="tiny"), ["a"], [["{}"]])
    assert [r for r in caplog.records if RANDOM_INIT in r.getMessage()]


def _bert(folder: Path, extra: dict | None = None) -> Path:
    """A tiny BERT saved with its pooler (as MiniLM's checkpoint is), plus ``extra`` tensors."""
    from safetensors.torch import load_file, save_file
    from transformers import BertConfig, BertModel
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True}))
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=True).save_pretrained(folder)
    weights = folder / "model.safetensors"
    save_file({**load_file(weights), **(extra or {})}, weights, metadata={"format": "pt"})
    spec = {"embed_dim": 48, "vision_cfg": {"image_size": 64, "layers": 1, "width": 64,
                                             "head_width": 32, "patch_size": 16},
            "text_cfg": {"hf_model_name": str(folder), "hf_tokenizer_name": str(folder),
                         "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear",
                         "context_length": 16}}
    path = folder.parent / f"{folder.name}.json"
    path.write_text(json.dumps(spec))
    return path


def test_hf_load_report_quiet_only_for_the_unbuilt_pooler(tmp_path):
    from vlcofit.config.schema import ModelConfig
    from vlcofit.models.backbones.factory import build_backbone

    class Reports(logging.Handler):
        def __init__(self):
            super().__init__()
            self.seen = []

        def emit(self, record):
            self.seen.append(record.getMessage())
    reports, logger = Reports(), logging.getLogger("transformers.modeling_utils")
    logger.addHandler(reports)  # sees what the logger's filters let through
    try:
        build_backbone(ModelConfig(name=str(_bert(tmp_path / "minilm_like"))))
        assert not [m for m in reports.seen if "LOAD REPORT" in m]
        build_backbone(ModelConfig(name=str(_bert(tmp_path / "odd", {
            "encoder.extra.weight": torch.zeros(2)}))))
        news = [m for m in reports.seen if "LOAD REPORT" in m]
        assert len(news) == 1 and "encoder.extra.weight" in news[0]
    finally:
        logger.removeHandler(reports)
