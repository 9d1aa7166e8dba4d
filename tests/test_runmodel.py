"""Models rebuilt from a run's own config: every head and temporal module loads, other label
spaces are scored, and a contradicting architecture is an error naming both."""
import shutil

import pytest
import torch

from vlcofit.cli.main import main
from vlcofit.experiment import load_experiment
from vlcofit.errors import InputError
from vlcofit.run.model import load_run_model
from vlcofit.train.loop import train


@pytest.fixture(scope="module")
def data(demo_videos):
    return demo_videos(1, 1)


def _run(data, out, *extra):
    cfg = load_experiment("demo", [f"datasets.demo.root={data}", f"output_dir={out}",
                                   "train.steps=1", "train.batch_size=4", "train.num_workers=0",
                                   "train.warmup_steps=0", "train.eval_every=0",
                                   "eval.batch_size=8", *extra])
    train(cfg)
    return out


def test_linear_head_scores_its_own_classes_in_any_order(data, tmp_path):
    run = _run(data, tmp_path / "lin", "model.head=linear")
    full = load_run_model(run).model.eval()
    names = list(full.class_names)
    picked = load_run_model(run, class_names=[names[5], names[2]],
                            class_templates=[("{}",)] * 2).model.eval()
    video = torch.rand(2, 8, 3, full.backbone.image_size, full.backbone.image_size)
    with torch.no_grad():
        emb, _ = full.encode_video(video)
        torch.testing.assert_close(picked.classify(emb), full.classify(emb)[:, [5, 2]])
    with pytest.raises(InputError, match="linear head.*no row for a new name"):
        load_run_model(run, class_names=["a new name"], class_templates=[("{}",)])


def test_text_head_scores_new_names(data, tmp_path):
    run = _run(data, tmp_path / "txt", "model.temporal=transformer")
    model = load_run_model(run, class_names=["alpha", "beta", "gamma"],
                           class_templates=[("a video of {}.",)] * 3).model.eval()
    with torch.no_grad():
        emb, _ = model.encode_video(torch.rand(1, 8, 3, model.backbone.image_size, model.backbone.image_size))
        assert model.classify(emb).shape == (1, 3)


def test_eval_takes_the_run_architecture_and_refuses_contradicting_flags(data, tmp_path, capsys,
                                                                         caplog):
    run = _run(data, tmp_path / "mean", "model.temporal=mean")
    root = f"datasets.demo.root={data}"
    code = main(["eval", "demo", "--checkpoint", str(run), "--set", root,
                 "--set", "model.temporal=transformer"])
    err = capsys.readouterr().err
    assert code == 2 and "model.temporal: 'transformer' in --set" in err
    assert "'mean' in the run" in err and "Traceback" not in err
    # the config file's own model section (temporal: transformer) gives way to the run's
    assert main(["eval", "demo", "--checkpoint", str(run), "--set", root, "--out",
                 str(tmp_path / "ev0")]) == 0
    assert "using the run's model.temporal='mean'" in caplog.text
    # without a config the run's own is used
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "ev")]) == 0


def test_eval_of_a_loose_checkpoint_needs_its_config(data, tmp_path, capsys):
    run = _run(data, tmp_path / "r", "model.temporal=mean")
    loose = tmp_path / "loose"
    shutil.copytree(run / "checkpoints" / "step_000001", loose)
    assert main(["eval", "--checkpoint", str(loose)]) == 2
    assert "pass the config it was trained with" in capsys.readouterr().err
    assert main(["eval", str(run / "config.yaml"), "--checkpoint", str(loose), "--out",
                 str(tmp_path / "ev")]) == 0
