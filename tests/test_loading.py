"""Loader workers that cannot deadlock on a decoder, and stalls that become errors.

The pattern that hung with PyAV 18 (FFmpeg 8): the main process decodes and converts a frame,
then forked loader workers do the same and wait forever on swscale's slice threads."""
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import free_port
import torch
from accelerate import Accelerator

import vlcofit.data.classification as classification
from vlcofit.eval.cache import cached_features
from vlcofit.experiment import load_experiment
from vlcofit.data.loading import StallError, make_loader, watch, worker_context
from vlcofit.data.video import read_frames
from vlcofit.experiment import build_dataset, build_labels, build_video_model
from vlcofit.protocols.predict import load_predictor, predict_videos
from vlcofit.train.loop import train
from conftest import run_group  # noqa: E402 (launches and cleans up a process group)

pytestmark = pytest.mark.timeout(200)


@pytest.fixture(scope="module")
def demo_data(demo_videos) -> Path:
    return demo_videos(1, 1)


def _config(data: Path, out: Path, *extra: str):
    return load_experiment("demo", [
        f"datasets.demo.root={data}", f"output_dir={out}", "train.steps=2", "train.batch_size=4",
        "train.log_every=1", "train.save_every=2", "train.warmup_steps=1", "train.eval_every=1",
        "eval.batch_size=4", "eval.max_batches=2", *extra])


def test_workers_never_fork_the_main_process():
    assert worker_context().get_start_method() in ("forkserver", "spawn")


def test_every_loader_decodes_in_workers_after_the_main_process_decoded(demo_data, tmp_path):
    """Training (its evaluation included), the feature cache (few-shot, fit measures, zero-shot)
    and predict, each with 2 workers started after this process decoded a video."""
    video = sorted((demo_data / "val").glob("*.mp4"))[0]
    parent = read_frames(video, [0, 3])  # decodes and converts frames: what poisoned a fork
    assert parent.shape[0] == 2
    cfg = _config(demo_data, tmp_path / "run", "train.num_workers=2")
    final = train(cfg)
    assert "demo/top1" in final
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2]

    labels = build_labels(cfg)
    model = build_video_model(cfg, labels)
    ds = build_dataset(cfg.datasets["demo"], "val", labels.classes["demo"], model.backbone,
                       train=False, seed=0)
    feats, _ = cached_features(Accelerator(cpu=True), model, ds, 4, 2, None, max_batches=2)
    assert feats["valid"].all() and feats["emb"].shape[0] == 8

    predictor = load_predictor(str(tmp_path / "run"))
    out = predict_videos(predictor, [video, video], num_workers=2)
    assert [len(o["top"]) for o in out] == [5, 5]


class _Blocking(torch.utils.data.Dataset):
    """Item 2 blocks (a hung network mount, a decoder deadlock) for far longer than the test."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 2:
            time.sleep(120)
        return torch.tensor(i)

    def source(self, i: int) -> str:
        return f"/videos/clip_{i}.mp4"


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stalled_loader_is_an_error_naming_what_it_was_reading(workers):
    loader = make_loader(_Blocking(), num_workers=workers, stall_timeout=3,
                         collate_fn=torch.stack, batch_size=1)
    seen, start = [], time.monotonic()
    with pytest.raises(StallError) as err:
        for batch in watch(loader, "evaluation"):
            seen.append(int(batch))
    assert seen == [0, 1]
    assert time.monotonic() - start < 60
    message = str(err.value)
    assert "evaluation stalled" in message and "'_Blocking'" in message
    assert "/videos/clip_2.mp4 (item 2)" in message and "data.stall_timeout" in message
    assert ("worker" if workers else "main process") in message


def test_a_training_stall_names_the_dataset_and_video(demo_data, tmp_path, monkeypatch):
    real = classification.ClassificationDataset._train_clip

    def hang_on_first(self, record, j, later=0):
        if j == 0:
            time.sleep(120)
        return real(self, record, j, later)

    monkeypatch.setattr(classification.ClassificationDataset, "_train_clip", hang_on_first)
    cfg = _config(demo_data, tmp_path / "run", "train.num_workers=0", "data.stall_timeout=3")
    with pytest.raises(StallError, match=r"training stalled: dataset 'demo' .* "
                                         r"main process \(pid \d+\) was reading .*\.mp4"):
        train(cfg)


def test_stall_timeout_must_be_positive(demo_data, tmp_path):
    with pytest.raises(Exception, match="data.stall_timeout"):
        _config(demo_data, tmp_path / "run", "data.stall_timeout=0")


DECODE_THEN_TRAIN = textwrap.dedent("""
    import sys
    from vlcofit.cli.main import main
    from vlcofit.data.video import read_frames

    if __name__ == "__main__":
        read_frames(sys.argv[1], [0, 3])  # each rank decodes before its loaders start workers
        sys.exit(main(sys.argv[2:]))
""")


def test_two_processes_train_and_evaluate_with_workers_after_decoding(demo_data, tmp_path,
                                                                        launch_two):
    script = tmp_path / "decode_then_train.py"
    script.write_text(DECODE_THEN_TRAIN)
    video = sorted((demo_data / "val").glob("*.mp4"))[0]
    sets = [f"datasets.demo.root={demo_data}", f"output_dir={tmp_path / 'run'}",
            "train.steps=2", "train.batch_size=2", "train.num_workers=2", "train.eval_every=1",
            "train.log_every=1", "eval.batch_size=4", "eval.max_batches=2"]
    launch_two([script, video, "train", "demo", *[a for s in sets for a in ("--set", s)]], timeout=150)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "demo/top1" in r] == [1, 2]


HANGING_RANK = textwrap.dedent("""
    import sys, time
    import vlcofit.train.loop as train_mod
    from accelerate import PartialState
    real = train_mod._optimizer_step
    def step(*args, **kwargs):
        if PartialState().process_index == 1:
            time.sleep(120)  # stuck outside any loader: only the collective timeout ends it
        return real(*args, **kwargs)
    train_mod._optimizer_step = step
    from vlcofit.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_stuck_rank_fails_the_others_with_the_collective_timeout(demo_data, tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANGING_RANK)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(script), "train", "demo",
           "--set", f"datasets.demo.root={demo_data}", "--set", f"output_dir={tmp_path / 'run'}",
           "--set", "train.steps=2", "--set", "train.batch_size=2", "--set", "train.num_workers=0",
           "--set", "train.collective_timeout=4"]
    env = {**__import__("os").environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = run_group(cmd, env, timeout=150)
    assert proc.returncode != 0
    assert time.monotonic() - start < 100  # not the 120 s the stuck rank sleeps
    assert "vlcofit: error: rank 0 of 2: a collective operation timed out" in proc.stderr
    assert "train.collective_timeout" in proc.stderr


KILLED_PARENT = textwrap.dedent("""
    import multiprocessing.forkserver as fs, os, signal, torch
    from vlcofit.data.loading import make_loader

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            return torch.tensor(i)

    if __name__ == "__main__":
        loader = make_loader(Items(), num_workers=2, stall_timeout=60, collate_fn=torch.stack,
                             batch_size=2)
        it = iter(loader)
        next(it)
        workers = [int(p) for p in loader.dataset.reading[:, 1].tolist() if p > 0]
        print(*workers, fs._forkserver._forkserver_pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup: as the OOM killer would
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_and_fork_server_end_with_a_killed_parent(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED_PARENT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    pids = [int(p) for p in proc.stdout.split()]
    assert proc.returncode == -9 and len(pids) >= 2, proc.stderr[-2000:]
    deadline = time.monotonic() + 30
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)]
