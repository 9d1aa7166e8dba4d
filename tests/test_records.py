"""The run records (run.json, config.yaml, metrics.jsonl, ...) survive a crash as the weights do:
written atomically, read back tolerating a torn last line, never rewritten by a resume that
fails, and logging the same losses after a resume as the uninterrupted run."""
import json
import logging
import resource
import shutil
import signal
import textwrap
from pathlib import Path

import pytest

from vlcofit.cli.main import main
from vlcofit.experiment import load_experiment
from vlcofit.config.loading import save_experiment
from vlcofit.errors import InputError
from vlcofit.run.records import MetricsLog, finish_run_json, learning_curve_figure, read_metrics
from vlcofit.train.loop import train
from test_transfer_resume import _killed_after  # noqa: E402 (the one kill-at-step helper)

RECORDS = ("config.yaml", "run.json", "metrics.jsonl")


@pytest.fixture(scope="module")
def data(demo_videos) -> Path:
    return demo_videos(2, 1)


def _config(tmp_path: Path, data: Path, out: str, *overrides: str):
    """Co-finetuning on two datasets (so per-dataset losses are logged); the loss window of
    step 6's log row (log_every=3) spans the checkpoint at step 4 (save_every=4)."""
    path = tmp_path / "two.yaml"
    path.write_text(textwrap.dedent(f"""\
        model: {{name: tiny, train_text: false}}
        datasets:
          a: {{card: demo, root: {data}}}
          b: {{card: demo, root: {data}}}
        train: {{datasets: [a, b], sampling: uniform, schedule: cofinetune, steps: 6,
                batch_size: 4, num_workers: 0, log_every: 3, save_every: 4, eval_every: 0,
                warmup_steps: 2, lr: 1.0e-3, lr_new: 1.0e-3}}
        eval: {{batch_size: 8, max_batches: 1, datasets: [a]}}
        output_dir: {tmp_path / out}
        """))
    return load_experiment(path, list(overrides))


def _train_rows(run: Path) -> list[dict]:
    """Logged training rows, less what measures wall time."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("train/clips_per_s", "train/peak_mem_gib")}
            for r in rows if "train/loss" in r]


def test_logged_losses_after_a_resume_equal_the_uninterrupted_run(tmp_path, data, monkeypatch):
    train(_config(tmp_path, data, "full"))
    restore = _killed_after(monkeypatch, 5)  # dies in step 6; step 4 was checkpointed
    part = _config(tmp_path, data, "part")
    with pytest.raises(KeyboardInterrupt):
        train(part)
    restore()
    # killed while appending a row: a torn last line that the resume must drop, not glue onto
    with (tmp_path / "part" / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "train/lo')
    old = tmp_path / "old"  # the same, as a checkpoint from before the window was saved
    shutil.copytree(tmp_path / "part", old)
    state = old / "checkpoints" / "step_000004" / "state.json"
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items()
                                 if k == "step" or k == "phase" or k == "bad_videos"}))
    train(part, resume="latest")
    full, resumed = _train_rows(tmp_path / "full"), _train_rows(tmp_path / "part")
    assert [r["step"] for r in full] == [3, 6]
    assert "train/a/loss" in full[1] and "train/lr/pretrained" in full[1]
    assert resumed == full  # exactly: losses, per-dataset losses, lr, logit scale
    train(_config(tmp_path, data, "old"), resume="latest")  # an old checkpoint still resumes
    assert [r["step"] for r in _train_rows(old)] == [3, 6]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data) -> Path:
    """A finished two-dataset run (kept pristine: tests copy it)."""
    tmp = tmp_path_factory.mktemp("finished")
    train(_config(tmp, data, "run"))
    return tmp


def _copy(finished: Path, tmp_path: Path, data: Path) -> Path:
    shutil.copytree(finished / "run", tmp_path / "run")
    _config(tmp_path, data, "run")  # writes tmp_path/two.yaml, naming the copy
    return tmp_path / "run"


@pytest.mark.parametrize("damage", ["run.json", "metrics.jsonl"])
def test_a_failed_resume_rewrites_nothing_and_names_the_file(finished, tmp_path, data, capsys,
                                                              damage):
    run = _copy(finished, tmp_path, data)
    if damage == "run.json":
        text = (run / "run.json").read_text()
        (run / "run.json").write_text(text[: len(text) // 2])  # half-written
        expect = f"{run / 'run.json'}: "
    else:  # a corrupt row that is not the last one
        lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
        lines[0] = lines[0][:20] + "\n"
        (run / "metrics.jsonl").write_text("".join(lines))
        expect = f"{run / 'metrics.jsonl'}:1: "
    before = {f: (run / f).read_bytes() for f in RECORDS}
    assert main(["train", str(tmp_path / "two.yaml"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err
    assert {f: (run / f).read_bytes() for f in RECORDS} == before


def test_a_resume_whose_checkpoint_fails_to_load_rewrites_nothing(finished, tmp_path, data):
    run = _copy(finished, tmp_path, data)
    optimizer = run / "checkpoints" / "step_000006" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    before = {f: (run / f).read_bytes() for f in RECORDS}
    with pytest.raises(InputError, match="optimizer.bin"):
        train(load_experiment(tmp_path / "two.yaml"), resume="latest")
    assert {f: (run / f).read_bytes() for f in RECORDS} == before


@pytest.fixture
def disk_full_after():
    """``disk_full_after(n)``: writes past byte n of any file fail (EFBIG), as on a full disk;
    ``disk_full_after(None)`` (and the test's end) undoes it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, not the process
    yield lambda n: resource.setrlimit(resource.RLIMIT_FSIZE, (soft if n is None else n, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


def test_a_write_that_fails_midway_leaves_the_old_record_whole(finished, tmp_path, data,
                                                               disk_full_after):
    run = _copy(finished, tmp_path, data)
    cfg = load_experiment(run / "config.yaml")
    rows = read_metrics(run / "metrics.jsonl")
    before = {f: (run / f).read_bytes() for f in RECORDS}
    writes = {"run.json": lambda: finish_run_json(run / "run.json", note="x" * 5000),
              "config.yaml": lambda: save_experiment(cfg, run / "config.yaml"),
              "metrics.jsonl": lambda: MetricsLog(run / "metrics.jsonl", rows * 50)}
    for name, write in writes.items():
        disk_full_after(200)
        with pytest.raises(OSError):
            write()
        disk_full_after(None)
        assert (run / name).read_bytes() == before[name], name
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no leftovers


def test_a_torn_last_line_is_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n{"step": 3, "tr')
    with caplog.at_level(logging.WARNING):
        rows = read_metrics(path)
    assert rows == [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.5}]
    assert f"{path}:3" in caplog.text
    path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "tr\n{"step": 3}\n')
    with pytest.raises(InputError, match=f"{path}:2: "):
        read_metrics(path)
    path.write_text('{"step": 1}\n[1, 2]\n{"step": 3}\n')  # JSON, but not a row
    with pytest.raises(InputError, match=f"{path}:2: "):
        read_metrics(path)


def test_learning_curves_show_each_dataset_loss_and_chance(tmp_path):
    rows = [{"step": s, "train/loss": 2.0 / s, "train/a/loss": 1.9 / s, "train/b/loss": 2.1 / s}
            for s in (1, 2, 3)]
    rows += [{"step": 3, "a/top1": 30.0, "b/top1": 40.0}]
    fig = learning_curve_figure(rows, ["a/top1", "b/top1"], {"a": 8, "b": 4})
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {"train/loss", "a/top1", "b/top1"}
    losses = {line.get_label(): line.get_ydata().tolist() for line in panels["train/loss"].lines}
    assert set(losses) == {"train/loss", "train/a/loss", "train/b/loss"}
    assert losses["train/b/loss"] == pytest.approx([2.1, 1.05, 0.7])
    for key, chance in (("a/top1", 12.5), ("b/top1", 25.0)):
        dashed = [line for line in panels[key].lines if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and set(dashed[0].get_ydata()) == {chance}
        assert "chance" in dashed[0].get_label()
