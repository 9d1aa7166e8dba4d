"""Dataset mixtures: sampling proportions, the sequential schedule, label union, bad configs."""
import json
import textwrap

import numpy as np
import pytest

from vlcofit.experiment import load_experiment
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.errors import InputError
from vlcofit.experiment import build_labels
from vlcofit.data.mixture import mixture_weights, plan
from vlcofit.train.loop import train


def _cfg(tmp_path, *overrides, datasets=("a", "b", "c")):
    cards = "".join(f"  {n}: {{card: demo, root: /data/{n}}}\n" for n in datasets)
    path = tmp_path / "mix.yaml"
    path.write_text(f"datasets:\n{cards}train:\n  datasets: [{', '.join(datasets)}]\n")
    return load_experiment(path, list(overrides))


SIZES = {"a": 1000, "b": 100, "c": 10}


def test_weights_per_strategy(tmp_path):
    w = mixture_weights(_cfg(tmp_path), SIZES)
    assert w == pytest.approx({"a": 1000 / 1110, "b": 100 / 1110, "c": 10 / 1110})
    assert mixture_weights(_cfg(tmp_path, "train.sampling=uniform"), SIZES) == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    w = mixture_weights(_cfg(tmp_path, "train.sampling=temperature", "train.temperature=2"), SIZES)
    z = 1000 ** 0.5 + 100 ** 0.5 + 10 ** 0.5
    assert w == pytest.approx({"a": 1000 ** 0.5 / z, "b": 10 / z, "c": 10 ** 0.5 / z})
    w = mixture_weights(_cfg(tmp_path, "train.sampling=weights", "train.weights={a: 3, b: 1, c: 0}"), SIZES)
    assert w == pytest.approx({"a": 0.75, "b": 0.25, "c": 0.0})


def test_draws_follow_the_weights(tmp_path):
    steps = 20000
    cfg = _cfg(tmp_path, "train.sampling=weights", "train.weights={a: 0.6, b: 0.3, c: 0.1}",
               f"train.steps={steps}")
    counts = plan(cfg, SIZES).counts()
    for name, p in {"a": 0.6, "b": 0.3, "c": 0.1}.items():
        # binomial: 5 standard deviations -> a false failure is ~1e-6 unlikely
        assert abs(counts[name] - p * steps) < 5 * np.sqrt(steps * p * (1 - p))
    again = plan(cfg, SIZES).schedule
    assert np.array_equal(plan(cfg, SIZES).schedule, again)  # seeded
    other = plan(_cfg(tmp_path, "train.sampling=weights", "train.weights={a: 0.6, b: 0.3, c: 0.1}",
                      f"train.steps={steps}", "train.seed=1"), SIZES).schedule
    assert not np.array_equal(other, again)


def test_step_budgets_cap_a_dataset(tmp_path):
    cfg = _cfg(tmp_path, "train.sampling=uniform", "train.steps=300", "train.step_budgets={c: 20}")
    counts = plan(cfg, SIZES).counts()
    assert counts["c"] == 20 and sum(counts.values()) == 300


def test_sequential_keeps_counts_and_puts_downstream_last(tmp_path):
    co = plan(_cfg(tmp_path, "train.steps=500", "train.sampling=uniform"), SIZES)
    seq = plan(_cfg(tmp_path, "train.steps=500", "train.sampling=uniform", "train.schedule=sequential",
                    "train.downstream=[c]"), SIZES)
    assert seq.counts() == co.counts()
    c = seq.names.index("c")
    n_down = seq.counts()["c"]
    assert (seq.schedule[-n_down:] == c).all() and (seq.schedule[:-n_down] != c).all()


@pytest.mark.parametrize("override,message", [
    ("train.weights={zzz: 1}", "train.weights names 'zzz', which is not in train.datasets"),
    ("train.loss_weights={a: -1}", "train.loss_weights.a is negative"),
    ("train.sampling=weights", "needs train.weights for every dataset"),
    ("train.schedule=sequential", "needs train.downstream"),
    ("train.sampling=best", "train.sampling must be one of"),
])
def test_bad_mixture_configs(tmp_path, override, message):
    with pytest.raises(InputError, match=message):
        _cfg(tmp_path, override)


def test_all_zero_weights_and_duplicates(tmp_path):
    with pytest.raises(InputError, match="train.weights are all zero"):
        _cfg(tmp_path, "train.sampling=weights", "train.weights={a: 0, b: 0, c: 0}")
    with pytest.raises(InputError, match="train.datasets names 'a' twice"):
        _cfg(tmp_path, "train.datasets=[a, a]", datasets=("a", "b"))
    path = tmp_path / "dup.yaml"
    path.write_text("datasets:\n  a: {card: demo}\n  a: {card: demo}\n")
    with pytest.raises(InputError, match="duplicate key 'a'"):
        load_experiment(path)
    with pytest.raises(InputError, match="same num_frames"):
        _cfg(tmp_path, "datasets.b.num_frames=4")


def test_label_union_shares_rows(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text("datasets:\n  demo: {card: demo}\n  k400: {card: kinetics400}\n"
                    "train: {datasets: [demo, k400]}\n")
    labels = build_labels(load_experiment(path))
    assert len(labels.space.names) == 8 + 400  # no demo class is a Kinetics class
    assert labels.space.index["demo"] == tuple(range(8))
    assert labels.space.index["k400"] == tuple(range(8, 408))


def test_cofinetune_two_datasets_end_to_end(tmp_path):
    data = make_demo_dataset(tmp_path / "data", per_class_train=4, per_class_val=2)
    path = tmp_path / "co.yaml"
    path.write_text(textwrap.dedent(f"""\
        model: {{name: tiny}}
        datasets:
          big: {{card: demo, root: {data}}}
          small: {{card: demo, root: {data}, val: val.csv}}
        train: {{datasets: [big, small], sampling: uniform, steps: 6, batch_size: 4, num_workers: 0,
                log_every: 3, save_every: 6, warmup_steps: 1, loss_weights: {{small: 2.0}}}}
        eval: {{batch_size: 8}}
        output_dir: {tmp_path / 'run'}
        """))
    cfg = load_experiment(path)
    final = train(cfg)
    assert {"big/top1", "small/top1"} <= set(final)
    run = tmp_path / "run"
    labels = json.loads((run / "labels.json").read_text())
    # both datasets name the same 8 classes: one shared set of rows
    assert labels["label_space"]["index"]["big"] == labels["label_space"]["index"]["small"]
    mix = json.loads((run / "mixture.json").read_text())
    assert mix["weights"] == {"big": 0.5, "small": 0.5} and sum(mix["steps"].values()) == 6
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/big/loss" in r or "train/small/loss" in r for r in rows)


SCRIPT = """
import os, sys, numpy as np
from accelerate import Accelerator
from vlcofit.experiment import load_experiment
from vlcofit.utils.distributed import end_processes
from vlcofit.data.mixture import plan
acc = Accelerator(cpu=True)
cfg = load_experiment(sys.argv[1], ["train.steps=2000", "train.sampling=temperature"])
sched = plan(cfg, {"a": 1000, "b": 100, "c": 10}).schedule
np.save(f"{sys.argv[2]}/rank{acc.process_index}.npy", sched)
open(f"{sys.argv[2]}/world{acc.process_index}.txt", "w").write(str(acc.num_processes))
end_processes()
os._exit(0)  # see launch_two in conftest.py
"""


def test_two_processes_draw_the_same_datasets(tmp_path, launch_two):
    _cfg(tmp_path)  # writes mix.yaml
    script = tmp_path / "draw.py"
    script.write_text(SCRIPT)
    launch_two([script, tmp_path / "mix.yaml", tmp_path])
    # each rank writes its own file: printed lines of two processes can interleave
    assert [(tmp_path / f"world{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]
    a, b = np.load(tmp_path / "rank0.npy"), np.load(tmp_path / "rank1.npy")
    assert len(a) == 2000 and np.array_equal(a, b)
