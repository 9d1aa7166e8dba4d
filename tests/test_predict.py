"""`vlcofit predict`: a user's own mp4 (written here) against a label file, a checkpoint's own
classes, person boxes of a localisation model, and bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from vlcofit.cli.main import main
from vlcofit.config.schema import DatasetCard, ModelConfig
from vlcofit.experiment import load_experiment
from vlcofit.config.loading import save_experiment
from vlcofit.data.box_transforms import BoxEvalTransform
from vlcofit.data.sampling import tsn_indices
from vlcofit.data.synthetic.clips import render_clip, write_video
from vlcofit.data.transforms import build_transform
from vlcofit.data.video import open_video, read_clip_at
from vlcofit.errors import InputError
from vlcofit.experiment import build_labels, build_video_model
from vlcofit.models.video import build_model
from vlcofit.protocols.predict import (
    Predictor, load_predictor, predict_boxes, predict_videos, read_boxes_csv,
)

TINY = ModelConfig(name="tiny", temporal="mean")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("videos")
    paths = []
    for i, label in enumerate(("moving left", "growing")):
        frames = render_clip(label, np.random.default_rng(i), size=64, num_frames=12)
        write_video(folder / f"clip{i}.mp4", np.concatenate([frames, frames[:, :16]], axis=1))
        paths.append(folder / f"clip{i}.mp4")  # 80 x 64: not square, so the centre crop matters
    return paths


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "mine.txt"
    path.write_text("moving left\ngrowing\nshrinking\njuggling\n")
    return path


def _expected(model, video: Path, names: list[str], templates: list[str]) -> torch.Tensor:
    """Probabilities computed by hand: 8 TSN centre frames, centre crop, softmax over names."""
    with open_video(video) as reader:
        frames = reader.read(tsn_indices(reader.num_frames, 8, train=False)[0])
    b = model.backbone
    clip = build_transform(False, b.image_size)(frames)  # [1, T, 3, S, S]
    with torch.no_grad():
        emb, _ = model.encode_video(clip)
        return model.score(emb, model.embed_texts(names, templates)).softmax(-1)[0]


def test_predict_own_videos_with_a_label_file(videos, labels, capsys):
    predictor = load_predictor(model_cfg=TINY)
    out = predict_videos(predictor, videos, str(labels), top_k=4)
    names = labels.read_text().split("\n")[:4]
    for entry, video in zip(out, videos):
        assert entry["video"] == str(video) and "error" not in entry
        probs = [t["prob"] for t in entry["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
        expected = _expected(predictor.model, video, names, ["a video of a person {}."])
        got = {t["label"]: t["prob"] for t in entry["top"]}
        assert [got[n] for n in names] == pytest.approx(expected.tolist(), abs=1e-5)

    args = ["predict", *map(str, videos), "--model", "tiny", "--pretrained", "none",
            "--labels", str(labels), "--top-k", "2"]
    assert main(args + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [[t["label"] for t in e["top"]] for e in printed] == \
        [[t["label"] for t in e["top"][:2]] for e in out]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert str(videos[0]) in table and table.count(" %  ") == 4


def fake_run(run: Path, config: str) -> None:
    """A run folder with config.yaml and one checkpoint (no training needed)."""
    cfg = load_experiment(config, [f"output_dir={run}", "model.name=tiny"])
    model = build_video_model(cfg, build_labels(cfg))
    with torch.no_grad():
        model.logit_scale.fill_(2.0)  # a "trained" value that must be loaded, not re-initialised
    (run / "checkpoints" / "step_000001").mkdir(parents=True)
    save_model(model, str(run / "checkpoints" / "step_000001" / "model.safetensors"))
    (run / "checkpoints" / "latest").write_text("step_000001")
    save_experiment(cfg, run / "config.yaml")


def test_predict_with_a_checkpoint_uses_its_classes(videos, tmp_path):
    run = tmp_path / "run"
    fake_run(run, "demo")

    predictor = load_predictor(str(run), num_frames=4)
    assert predictor.model.logit_scale.item() == 2.0 and len(predictor.classes) == 8
    out = predict_videos(predictor, videos[:1], top_k=8)
    assert sorted(t["label"] for t in out[0]["top"]) == sorted(predictor.classes.names)
    # a label file reuses the run's templates (text4vis for the demo card)
    again = predict_videos(predictor, videos[:1], labels="demo", top_k=8)
    assert [t["label"] for t in again[0]["top"]] == [t["label"] for t in out[0]["top"]]
    assert [t["prob"] for t in again[0]["top"]] == pytest.approx([t["prob"] for t in out[0]["top"]])


def test_bad_input_gives_clear_errors(videos, labels, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    args = ["predict", "--model", "tiny", "--pretrained", "none", "--labels", str(labels)]
    assert main(args + [str(videos[0]), str(broken), str(tmp_path / "missing.mp4")]) == 2
    captured = capsys.readouterr()
    assert "vlcofit: error: 2 of 3 videos could not be read" in captured.err
    assert f"{broken}\n    error: cannot open" in captured.out
    assert f"{tmp_path / 'missing.mp4'}\n    error: no such file" in captured.out
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["predict", str(videos[0]), "--model", "tiny", "--pretrained", "none",
                 "--labels", str(empty)]) == 2
    assert capsys.readouterr().err.strip() == f"vlcofit: error: {empty}: file is empty"
    assert main(["predict", str(videos[0]), "--model", "tiny", "--pretrained", "none"]) == 2
    assert "--labels: give a label file" in capsys.readouterr().err
    with pytest.raises(InputError, match="--boxes needs a localisation model"):
        predict_boxes(load_predictor(model_cfg=TINY), tmp_path / "boxes.csv")


def test_predict_boxes_per_person(videos, labels, tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(TINY, [], [], with_boxes=True).eval()  # a (fresh) box head
    predictor = Predictor(model, DatasetCard(name="clips", prompts="-"), box_card=DatasetCard(
        name="loc", prompts="demo", task="localization", num_frames=4, frame_stride=2))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"video_path,time_sec,x1,y1,x2,y2\n{videos[0].name},0.5,0.0,0.0,0.5,1.0\n"
                     f"{videos[0]},0.5,0.5,0.0,1.0,1.0\n{videos[1]},1.0,0.1,0.2,0.6,0.9\n"
                     f"{tmp_path / 'gone.mp4'},1.0,0.1,0.2,0.6,0.9\n")
    (tmp_path / videos[0].name).write_bytes(videos[0].read_bytes())  # relative to the CSV
    out = predict_boxes(predictor, boxes, str(labels), top_k=3)
    assert [e["time"] for e in out] == [0.5, 0.5, 1.0, 1.0] and out[1]["box"] == [0.5, 0, 1, 1]
    for entry in out[:3]:
        probs = [t["prob"] for t in entry["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < probs[-1] < 1
    assert out[0]["top"] != out[1]["top"]  # two persons in one frame score differently
    # by hand: 4 frames 2 apart around 0.5 s, the frame squashed to the model's size
    clip = read_clip_at(videos[0], 0.5, 4, 2)
    model.cpu()  # predict_boxes moved it to the GPU where there is one
    b = model.backbone
    video, kept, _ = BoxEvalTransform(b.image_size)(clip, torch.tensor([[0.5, 0, 1, 1.0]]))
    with torch.no_grad():
        emb, tokens = model.encode_video(video[None])
        text = model.embed_texts(labels.read_text().splitlines(), ["a video of a person {}."])
        expected = model.box_logits(tokens, kept, torch.zeros(1, dtype=torch.long), text=text,
                                    context=emb).sigmoid()[0]
    got = {t["label"]: t["prob"] for t in out[1]["top"]}
    assert got == pytest.approx({n: float(expected[i]) for i, n in
                                 enumerate(labels.read_text().splitlines()) if n in got}, abs=1e-5)
    assert out[3]["error"] == "no such file"

    bad = tmp_path / "bad_boxes.csv"
    bad.write_text(f"{videos[0]},0.5,0.6,0.0,0.5,1.0\n")
    with pytest.raises(InputError, match=rf"{bad}:1: need 0 <= x1 < x2 <= 1"):
        read_boxes_csv(bad)
    bad.write_text(f"{videos[0]},0.5,0.1\n")
    with pytest.raises(InputError, match=rf"{bad}:1: expected video_path,time_sec,x1,y1,x2,y2"):
        read_boxes_csv(bad)


def test_localisation_checkpoint_scores_boxes_from_the_cli(videos, tmp_path, capsys):
    run = tmp_path / "ava_run"
    fake_run(run, "demo_ava")
    predictor = load_predictor(str(run))
    assert predictor.box_card.name == "demo_ava" and predictor.model.box_head is not None
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(f"{videos[1]},1.0,0.1,0.2,0.6,0.9\n")
    assert main(["predict", "--checkpoint", str(run), "--boxes", str(boxes), "--json",
                 "--top-k", "9"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    actions = [line.split(": ", 1)[1] for line in
               Path(predictor.box_labels[0].path).read_text().splitlines()]
    assert entry["box"] == [0.1, 0.2, 0.6, 0.9] and sorted(t["label"] for t in entry["top"]) == \
        sorted(actions)  # the run's own action names by default
    assert main(["predict", str(videos[0]), "--checkpoint", str(run), "--boxes", str(boxes)]) == 2
    assert "give no VIDEO arguments" in capsys.readouterr().err
