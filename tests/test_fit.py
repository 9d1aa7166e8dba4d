"""Fit measures (LogME against the dense evidence, leave-one-out k-NN, the held-out probe,
zero-shot through measure_fit) and ``advise`` (loadable --set fragments, monotone rules)."""
import itertools
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from vlcofit.protocols.advise import (
    HIGH_FIT, LOW_FIT, Start, advise, fit_score, format_advice, recommend, set_fragments,
)
from vlcofit.eval.cache import FeatureCache
from vlcofit.config.schema import TrainConfig
from vlcofit.experiment import load_experiment
from vlcofit.errors import InputError
from vlcofit.experiment import build_labels, build_video_model
from vlcofit.eval.transferability import holdout_split, knn_accuracy, logme, logme_fit, subsample
from vlcofit.experiment.fit import measure_fit


# --------------------------------------------------------------------------- LogME

def dense_evidence(f: torch.Tensor, y: torch.Tensor, alpha: float, beta: float) -> float:
    """L(alpha, beta) / N computed directly: A = alpha I + beta F^T F, m = beta A^-1 F^T y."""
    n, d = f.shape
    a = alpha * torch.eye(d, dtype=torch.float64) + beta * f.t() @ f
    m = beta * torch.linalg.solve(a, f.t() @ y)
    value = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
             - beta / 2 * float(((f @ m - y) ** 2).sum()) - alpha / 2 * float(m @ m)
             - float(torch.linalg.slogdet(a).logabsdet) / 2)
    return value / n


@pytest.mark.parametrize("n, d, seed", [(40, 8, 40), (12, 30, 2)])  # N > D and N < D
def test_logme_is_the_maximum_of_the_dense_evidence(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    f = torch.randn(n, d, generator=g, dtype=torch.float64) + 1.5 * torch.eye(3, d)[labels]
    evidence, alphas, betas = logme_fit(f, labels)
    assert len(evidence) == 3
    for c in range(3):
        y = (labels == c).double()
        a, b = float(alphas[c]), float(betas[c])
        at = dense_evidence(f, y, a, b)
        assert float(evidence[c]) == pytest.approx(at, rel=1e-9, abs=1e-9)
        h = 1e-4  # the fixed point is stationary: central differences in log alpha, log beta
        grad_a = (dense_evidence(f, y, a * math.exp(h), b) - dense_evidence(f, y, a * math.exp(-h), b)) / (2 * h)
        grad_b = (dense_evidence(f, y, a, b * math.exp(h)) - dense_evidence(f, y, a, b * math.exp(-h))) / (2 * h)
        assert abs(grad_a) < 1e-6 and abs(grad_b) < 1e-6
        for fa, fb in itertools.product((0.25, 0.5, 0.9, 1.1, 2.0, 4.0), repeat=2):
            assert dense_evidence(f, y, a * fa, b * fb) < at  # and the maximum on a grid
    assert logme(f, labels) == pytest.approx(float(evidence.mean()))
    assert logme(f.float(), labels) == pytest.approx(logme(f, labels), rel=1e-5)


def test_logme_limit_when_features_explain_nothing():
    """N < D and a class the features do not separate: the evidence rises towards alpha -> inf
    (m = 0), where L / N = 1/2 log(N / |y|^2) - 1/2 log(2 pi) - 1/2 (beta = N / |y|^2)."""
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(12) % 3
    f = torch.randn(12, 30, generator=g, dtype=torch.float64) + 1.5 * torch.eye(3, 30)[labels]
    evidence, alphas, betas = logme_fit(f, labels)
    assert float(alphas[0]) >= 1e9  # (this draw's class 0)
    assert float(betas[0]) == pytest.approx(12 / 4, rel=1e-6)
    limit = 0.5 * math.log(12 / 4) - 0.5 * math.log(2 * math.pi) - 0.5
    assert float(evidence[0]) == pytest.approx(limit, abs=1e-8)


def test_better_separated_features_get_a_higher_logme():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 4
    noise = torch.randn(120, 16, generator=g)
    scores = [logme(sep * torch.eye(4, 16)[labels] + noise, labels) for sep in (0.0, 1.0, 3.0)]
    assert scores[0] < scores[1] < scores[2]
    # classes absent from the labels do not count; the order of classes does not matter
    assert logme(noise, labels + 5) == pytest.approx(logme(noise, labels))


# --------------------------------------------------------------------------- k-NN, splits

def test_knn_leave_one_out_by_hand_with_ties():
    angles = torch.tensor([0.0, 30.0, 50.0, 180.0, 200.0, 215.0])  # degrees on a circle
    rad = angles * math.pi / 180
    norms = torch.tensor([[1.0], [2.0], [0.5], [3.0], [1.0], [1.5]])  # cosine: scale ignored
    x = torch.stack([rad.cos(), rad.sin()], dim=1) * norms
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    # k=2 (angle to the two nearest others -> their classes -> prediction):
    # 0: 30 (0), 50 (1): one vote each, summed cos30 > cos50 -> 0 right
    # 30: 20 (1), 30 (0): tie, cos20 > cos30 -> 1 wrong;  50: 20 (0), 50 (0) -> 0 wrong
    # 180: 20 (2), 35 (2) -> 2 wrong;  200: 15 (2), 20 (1): tie, cos15 wins -> 2 right
    # 215: 15 (2), 35 (1): tie, cos15 wins -> 2 right
    assert knn_accuracy(x, y, k=2, num_classes=3) == {"knn2_top1": pytest.approx(50.0)}
    # k above N - 1: every other video votes; the key keeps the k asked for
    assert knn_accuracy(x, y, k=10) == {"knn10_top1": knn_accuracy(x, y, k=5)["knn5_top1"]}
    assert math.isnan(knn_accuracy(x[:1], y[:1], k=3)["knn3_top1"])


def test_knn_tie_in_votes_and_similarity_goes_to_the_lowest_class():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-1.0, 0.0]])
    y = torch.tensor([2, 1, 0, 0])
    # k=2: each point's two neighbours are at cos 0 (the third at cos -1), of two classes:
    # equal votes, equal sums -> the lower class. 0: 1 (1), 2 (0) -> 0 wrong; 1: 0 (2), 3 (0)
    # -> 0 wrong; 2: 0 (2), 3 (0) -> 0 right; 3: 1 (1), 2 (0) -> 0 right.
    assert knn_accuracy(x, y, k=2)["knn2_top1"] == pytest.approx(50.0)


def test_holdout_split_and_subsample_are_stratified_and_deterministic():
    labels = [0] * 10 + [1] * 5 + [2]
    fit, held = holdout_split(labels, seed=0)
    assert holdout_split(labels, seed=0) == (fit, held) and holdout_split(labels, seed=1) != (fit, held)
    assert sorted(fit + held) == list(range(16))
    assert [sum(labels[i] == c for i in held) for c in range(3)] == [2, 1, 0]
    keep = subsample(labels, 3, seed=0)
    assert [sum(labels[i] == c for i in keep) for c in range(3)] == [3, 3, 1]
    assert keep == sorted(keep) == subsample(labels, 3, seed=0)
    assert subsample(labels, None, seed=0) == list(range(16))


# --------------------------------------------------------------------------- measure_fit

@pytest.fixture(scope="module")
def demo_data(demo_videos) -> Path:
    return demo_videos(4, 1)


def small_config(data: Path, out: Path, *extra: str):
    return load_experiment("demo", [
        f"datasets.demo.root={data}", f"output_dir={out}", "train.steps=100",
        "train.num_workers=0", "eval.batch_size=20", *extra])


def _measure(cfg, cache=None):
    from vlcofit.train.accelerator import make_accelerator

    accelerator = make_accelerator(cfg, None)
    labels = build_labels(cfg)
    torch.manual_seed(cfg.train.seed)
    model = accelerator.prepare(build_video_model(cfg, labels))
    model.train()
    before = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    out = measure_fit(cfg, accelerator, model, labels, cache=cache)
    after = torch.random.get_rng_state(), np.random.get_state()[1]
    # training after it is unchanged: the same RNG states, the same mode
    assert torch.equal(before[0], after[0]) and (before[1] == after[1]).all() and model.training
    return out


def test_measure_fit_keys_ranges_cache_and_rng_state(demo_data, tmp_path):
    cfg = small_config(demo_data, tmp_path / "run")
    cache = FeatureCache(tmp_path / "features")
    out = _measure(cfg, cache)
    assert set(out) == {f"demo/fit/{k}" for k in ("zero_shot_top1", "knn10_top1", "probe_top1",
                                                  "probe_weight_decay", "logme", "chance_top1",
                                                  "videos")}
    assert out["demo/fit/chance_top1"] == 12.5 and out["demo/fit/videos"] == 32
    for key in ("zero_shot_top1", "knn10_top1", "probe_top1"):
        value = out[f"demo/fit/{key}"]
        hits = value * (8 if key == "probe_top1" else 32) / 100  # 8 held out: 1 of 4 per class
        assert 0 <= value <= 100 and hits == pytest.approx(round(hits), abs=1e-6)
    assert math.isfinite(out["demo/fit/logme"])
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 1
    assert _measure(cfg, cache) == out  # from the cache, the same numbers

    linear = _measure(small_config(demo_data, tmp_path / "run", "model.head=linear"))
    assert "demo/fit/zero_shot_top1" not in linear and "demo/fit/probe_top1" in linear


def test_measure_fit_on_two_processes_matches_one(demo_data, tmp_path, launch_two):
    """Features gathered over both processes, every process returns the same dict, and the
    same as one process (the advice too: advise is collective)."""
    script = tmp_path / "fit2.py"
    script.write_text(textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        from vlcofit.protocols.advise import advise
        from vlcofit.experiment import load_experiment
        from vlcofit.utils.distributed import end_processes, process_state
        state = process_state()
        cfg = load_experiment("demo", [
            "datasets.demo.root={demo_data}", "output_dir={tmp_path / 'run'}",
            "train.steps=100", "train.num_workers=0", "eval.batch_size=3"])
        result = advise(cfg, Path({str(tmp_path / 'out2')!r}))
        Path({str(tmp_path)!r}, f"rank{{state.process_index}}.json").write_text(json.dumps(result))
        end_processes()
        os._exit(0)  # see launch_two in conftest.py
    """))
    launch_two([script])
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert ranks[0] == ranks[1] == json.loads((tmp_path / "out2" / "advice.json").read_text())
    one = advise(small_config(demo_data, tmp_path / "run", "eval.batch_size=3"), tmp_path / "out1")
    assert ranks[0]["measures"]["demo/fit/videos"] == 32
    for key, value in one["measures"].items():  # the same videos, the same order
        assert ranks[0]["measures"][key] == pytest.approx(value, rel=1e-4, abs=1e-4)


# --------------------------------------------------------------------------- advise

def test_advise_writes_loadable_fragments(demo_data, tmp_path):
    import open_clip

    from vlcofit.utils import resources

    weights = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    open_clip.add_model_config(resources.find("models", "tiny"))
    torch.save(open_clip.create_model("tiny").state_dict(), weights)
    for extra in ((), (f"model.pretrained={weights}", "train.freeze=[text:1]")):
        cfg = small_config(demo_data, tmp_path / "run", *extra)
        out = tmp_path / f"advice{len(extra)}"
        result = advise(cfg, out, cache_dir=tmp_path / "features")
        saved = json.loads((out / "advice.json").read_text())
        assert saved == json.loads(json.dumps(result))
        assert saved["start"]["pretrained"] == bool(extra) and saved["start"]["image_layers"] == 2
        assert 0 <= saved["fit_score"] <= 1 and all(r["why"] for r in saved["recommendations"])
        config = Path(__file__).parents[1] / "configs" / "experiments" / "demo.yaml"
        base = [f"datasets.demo.root={demo_data}", *extra]
        advised = load_experiment(config, base + saved["set"])
        for fragment in saved["set"]:
            load_experiment(config, base + [fragment])  # each one alone, too
        table = format_advice(result, str(config))
        assert "fit score" in table and "--set" in table
        if not extra:  # a random start: no transfer setting
            assert advised.model.reinit_last == 0 and advised.train.l2sp == 0
            assert advised.train.layer_decay == 1.0 and advised.train.freeze == ()
        else:
            assert "text:1" in advised.train.freeze  # the config's own non-image freeze kept


def test_recommendations_are_monotone_and_valid_for_the_start():
    train = TrainConfig(lr=1e-5, steps=1000, weight_decay=0.01, freeze=("text:3",))
    scores = np.linspace(0, 1, 41)
    for start in (Start(True, 12, True), Start(True, 2, True), Start(True, 1, True),
                  Start(False, 12, True), Start(True, None, False)):
        recs = [{a.key: a.value for a in recommend(float(s), start, train)} for s in scores]
        for low, high in zip(recs, recs[1:]):  # s increasing
            n_low = next((int(f[6:]) for f in low["train.freeze"] if f.startswith("image:")), 0)
            n_high = next((int(f[6:]) for f in high["train.freeze"] if f.startswith("image:")), 0)
            assert low["model.reinit_last"] >= high["model.reinit_last"]
            assert n_low <= n_high <= (start.image_layers or 0) - high["model.reinit_last"]
            assert low["train.l2sp"] <= high["train.l2sp"]
            assert low["train.layer_decay"] >= high["train.layer_decay"]
            assert low["train.lr"] >= high["train.lr"]
            assert low["train.weight_decay"] >= high["train.weight_decay"]
        for r in recs:
            assert "text:3" in r["train.freeze"]
            layers = start.image_layers or 0
            assert r["model.reinit_last"] <= max(layers - 1, 0)
            if not start.pretrained:
                assert r["model.reinit_last"] == 0 and r["train.l2sp"] == 0
                assert r["train.freeze"] == ["text:3"] and r["train.layer_decay"] == 1.0
    big = {a.key: a.value for a in recommend(0.9, Start(True, 12, True), train)}
    small = {a.key: a.value for a in recommend(0.0, Start(True, 12, True), train)}
    assert big["train.freeze"][0] == "image:3" and big["train.l2sp"] == pytest.approx(100.0)
    assert small["model.reinit_last"] == 2 and small["train.l2sp"] == 0
    assert small["train.lr"] == 2e-5 and small["train.weight_decay"] == 0.05
    assert set_fragments(recommend(0.9, Start(True, 12, True), train))[:2] == [
        "model.reinit_last=0", 'train.freeze=["image:3", "text:3"]']
    assert HIGH_FIT > LOW_FIT


def test_fit_score_uses_probe_above_chance_and_needs_a_measure():
    m = {"a/fit/probe_top1": 55.0, "a/fit/chance_top1": 10.0, "a/fit/knn10_top1": 90.0,
         "b/fit/knn10_top1": 5.0, "b/fit/chance_top1": 20.0}
    s, per, used = fit_score(m, ["a", "b"])
    assert per == {"a": pytest.approx(0.5), "b": 0.0} and s == pytest.approx(0.25)
    assert used == {"a": "probe_top1", "b": "knn10_top1"}
    with pytest.raises(InputError, match="no fit measure to score"):
        fit_score({}, ["a"])


def test_only_single_label_datasets_with_classes_are_measured(caplog):
    from vlcofit.experiment.fit import fit_datasets

    cfg = load_experiment("cofinetune_demo")  # classification + localisation
    with caplog.at_level("INFO", logger="vlcofit.experiment.fit"):
        assert fit_datasets(cfg) == ["demo"]
    assert "demo_ava skipped (a localization dataset" in caplog.text
    with pytest.raises(InputError, match=r"dataset 'nope' is not under `datasets` \(have: demo, demo_ava\)"):
        fit_datasets(cfg, ["nope"])
