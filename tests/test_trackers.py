"""Trackers through Accelerate (train.trackers): TensorBoard by default with the run's config
as hyperparameters; Weights & Biases and MLflow offline where installed (optional extras); a
tracker that is not installed, or not one of them, is a clear error."""
import importlib.util

import pytest
import yaml

from vlcofit.experiment import load_experiment
from vlcofit.errors import InputError
from vlcofit.train.trackers import hyperparameters, store_uri
from vlcofit.train.loop import train


@pytest.fixture(scope="module")
def data(demo_videos):
    return demo_videos(1, 1)


def _cfg(data, out, *extra):
    return load_experiment("demo", [
        f"datasets.demo.root={data}", f"output_dir={out}", "train.steps=2", "train.batch_size=4",
        "train.num_workers=0", "train.log_every=1", "train.save_every=2", "train.eval_every=0",
        "train.warmup_steps=1", "eval.batch_size=8", *extra])


def test_hyperparameters_are_flat_scalars(data, tmp_path):
    flat = hyperparameters(_cfg(data, tmp_path / "r", "train.lr=3e-4"))
    assert flat["train.lr"] == 3e-4 and flat["model.name"] == "tiny"
    assert flat["datasets.demo.num_frames"] == 8 and flat["train.datasets"] == "['demo']"
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_tensorboard_by_default_with_the_config_as_hyperparameters(data, tmp_path):
    train(_cfg(data, tmp_path / "run"))
    board = tmp_path / "run" / "tensorboard"
    assert list(board.glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(board)).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    saved = yaml.safe_load(next(board.glob("*/hparams.yml")).read_text())
    assert saved["train.steps"] == 2 and saved["model.name"] == "tiny"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb extra not installed")
def test_wandb_offline(data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(_cfg(data, tmp_path / "run", "train.trackers=[tensorboard, wandb]"))
    (log,) = (tmp_path / "run" / "wandb").glob("offline-run-*/*.wandb")
    records = log.read_bytes()  # the run's protobuf records: config keys and metric names in it
    assert b"train.steps" in records and b"train/loss" in records


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow extra not installed")
def test_mlflow_local_store(data, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train(_cfg(data, tmp_path / "run", "train.trackers=[mlflow]"))
    import mlflow
    client = mlflow.tracking.MlflowClient(store_uri(tmp_path / "run"))
    exp = client.get_experiment_by_name("vlcofit")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.params["train.steps"] == "2" and "train/loss" in run.data.metrics
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_unknown_or_missing_trackers_are_clear_errors(data, tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"train.trackers\[0\].*must be one of tensorboard, "
                                         r"wandb, mlflow; got 'comet'"):
        _cfg(data, tmp_path / "r", "train.trackers=[comet]")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(InputError, match=r'^train.trackers: wandb is not installed: pip install '
                                         r'-e "\.\[wandb\]"'):  # the message itself, unwrapped
        train(_cfg(data, tmp_path / "r2", "train.trackers=[wandb]"))
