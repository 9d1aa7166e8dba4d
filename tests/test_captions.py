"""Captions: the three readers and their errors, the dataset, the contrastive loss (direct,
and on two processes against one), retrieval metrics with ties, and a classification +
localisation + captions mixture on two CPU processes."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from vlcofit.config.schema import DatasetCard
from vlcofit.experiment import load_card, load_experiment
from vlcofit.data.captions import CaptionDataset, collate, read_caption_records
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.data.synthetic.ava import make_demo_ava
from vlcofit.data.transforms import build_transform
from vlcofit.errors import InputError
from vlcofit.experiment import build_dataset, build_labels, build_video_model
from vlcofit.models.losses import contrastive_loss
from vlcofit.metrics.retrieval import retrieval_metrics, t2v_ranks, v2t_ranks
from vlcofit.tasks import task_of
from vlcofit.train.loop import freeze_unused, train


def _card(root: Path, fmt: str = "csv", **kw) -> DatasetCard:
    kw.setdefault("train", "train.txt")
    return DatasetCard(name="caps", task="captions", format=fmt, root=str(root), **kw)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _pairs(records, root: Path) -> list[tuple[str, tuple[str, ...]]]:
    return [(str(r.path.relative_to(root)), r.captions) for r in records]


def write_caption_csvs(demo: Path) -> Path:
    """Two captions per demo video, from its class name (tests only)."""
    for split in ("train", "val"):
        rows = ["path,caption"]
        for line in (demo / f"{split}.csv").read_text().splitlines()[1:]:
            path, label = line.split(",")
            rows += [f"{path},a shape {label}", f'{path},"something is {label}, slowly"']
        (demo / f"captions_{split}.csv").write_text("\n".join(rows) + "\n")
    return demo


# --------------------------------------------------------------------------- readers

def test_csv_groups_captions_per_video(tmp_path):
    _write(tmp_path / "train.txt", "path,caption\na.mp4,a man runs\nb.mp4,\"a dog, barking\"\n"
                                   "a.mp4,someone is  running fast, outside\n")
    records = read_caption_records(_card(tmp_path), "train")
    assert _pairs(records, tmp_path) == [
        ("a.mp4", ("a man runs", "someone is running fast, outside")),
        ("b.mp4", ("a dog, barking",))]
    assert records[0].source == f"{tmp_path / 'train.txt'}:2"


def test_msrvtt_json_and_jsonl(tmp_path):
    _write(tmp_path / "train.json", json.dumps([
        {"video": "video0.mp4", "caption": ["a cartoon", "kids play"]},
        {"video": "video1.mp4", "caption": "a car drives"},
        {"video": "video0.mp4", "caption": ["a third one"]}]))
    records = read_caption_records(_card(tmp_path, "msrvtt", train="train.json"), "train")
    assert _pairs(records, tmp_path) == [("video0.mp4", ("a cartoon", "kids play", "a third one")),
                                         ("video1.mp4", ("a car drives",))]
    _write(tmp_path / "val.jsonl", '{"video": "v/1.mp4", "caption": "one"}\n\n'
                                   '{"video": "v/1.mp4", "caption": "two"}\n')
    records = read_caption_records(_card(tmp_path, "msrvtt", val="val.jsonl"), "val")
    assert _pairs(records, tmp_path) == [("v/1.mp4", ("one", "two"))]



def test_official_msrvtt_videodatainfo(tmp_path):
    """The official train_val_videodatainfo.json: the card split's videos (val = "validate"),
    their sentences in file order, files named by filename_pattern (default video_id.mp4)."""
    info = {"info": {}, "videos": [
        {"video_id": "video0", "split": "train", "category": 9},
        {"video_id": "video1", "split": "validate", "category": 1},
        {"video_id": "video2", "split": "train", "category": 3}],
        "sentences": [{"caption": "a cartoon", "video_id": "video0", "sen_id": 0},
                      {"caption": "someone talks", "video_id": "video1", "sen_id": 1},
                      {"caption": "kids play", "video_id": "video0", "sen_id": 2},
                      {"caption": "a car drives", "video_id": "video2", "sen_id": 3}]}
    _write(tmp_path / "info.json", json.dumps(info))
    card = _card(tmp_path, "msrvtt", train="info.json", val="info.json")
    assert _pairs(read_caption_records(card, "train"), tmp_path) == [
        ("video0.mp4", ("a cartoon", "kids play")), ("video2.mp4", ("a car drives",))]
    named = _card(tmp_path, "msrvtt", train="info.json", val="info.json",
                  filename_pattern="TrainValVideo/{video_id}.mp4")
    assert _pairs(read_caption_records(named, "val"), tmp_path) == [
        ("TrainValVideo/video1.mp4", ("someone talks",))]
    bad = {**info, "sentences": [*info["sentences"], {"caption": "x", "video_id": "video9"}]}
    _write(tmp_path / "bad.json", json.dumps(bad))
    with pytest.raises(InputError, match=r"bad.json: sentences\[4\]: expected .* naming a video"):
        read_caption_records(_card(tmp_path, "msrvtt", train="bad.json"), "train")
    silent = {**info, "sentences": info["sentences"][:2]}  # video2 has no sentence
    _write(tmp_path / "silent.json", json.dumps(silent))
    with pytest.raises(InputError, match=r"silent.json: video video2: field 'caption'"):
        read_caption_records(_card(tmp_path, "msrvtt", train="silent.json"), "train")

def test_webvid_columns(tmp_path):
    _write(tmp_path / "train.txt", "videoid,contentUrl,duration,page_dir,name\n"
                                   "31353427,https://x/y.mp4,PT00H00M14S,006001_006050,"
                                   "\"Aerial shot, river\"\n")
    records = read_caption_records(_card(tmp_path, "webvid"), "train")
    assert _pairs(records, tmp_path) == [("006001_006050/31353427.mp4", ("Aerial shot, river",))]
    custom = _card(tmp_path, "webvid", filename_pattern="videos/{videoid}.mp4")
    assert _pairs(read_caption_records(custom, "train"), tmp_path)[0][0] == "videos/31353427.mp4"


@pytest.mark.parametrize("fmt, name, text, message", [
    ("csv", "train.txt", "a.mp4,ok\nb.mp4,\n", "train.txt:2: empty caption"),
    ("csv", "train.txt", "a.mp4,ok\nb.mp4,\"  \"\n", "train.txt:2: empty caption"),
    ("csv", "train.txt", "just_a_path.mp4\n", "train.txt:1: expected 'path,caption'"),
    ("msrvtt", "train.json", '[{"video": "a.mp4", "caption": ["ok", ""]}]',
     "train.json: entry 0: caption[1]: empty caption"),
    ("msrvtt", "train.json", '[{"video": "a.mp4"}]', "train.json: entry 0: expected an object"),
    ("msrvtt", "train.json", '[{"video": "a.mp4", "caption": []}]', "field 'caption'"),
    ("msrvtt", "train.json", '{"video": "a.mp4", "caption": "x"}\n{"video": "b.mp4"}',
     "name the file .jsonl"),
    ("msrvtt", "train.jsonl", '{"video": "a.mp4", "caption": "x"}\n{oops\n',
     "train.jsonl:2: invalid JSON"),
    ("webvid", "train.txt", "videoid,page_dir,name\n1,p,\n", "train.txt:2: column 'name': empty"),
    ("webvid", "train.txt", "videoid,name\n1,x\n", "lacks column(s) page_dir"),
])
def test_bad_caption_files_name_file_and_line(tmp_path, fmt, name, text, message):
    _write(tmp_path / name, text)
    with pytest.raises(InputError, match=re.escape(message)):
        read_caption_records(_card(tmp_path, fmt, train=name), "train")


def test_unknown_format_and_prompt_file_are_errors(tmp_path):
    _write(tmp_path / "train.txt", "a.mp4,x\n")
    with pytest.raises(InputError, match="not a caption format.*csv, msrvtt, webvid"):
        read_caption_records(_card(tmp_path, "kinetics"), "train")
    card = _write(tmp_path / "caps.yaml", "task: captions\nformat: csv\ntrain: t.csv\n"
                                          "prompts: demo\n")
    with pytest.raises(InputError, match=r"caps.yaml: prompts is set, but a captions dataset"):
        load_card(str(card))
    _write(card, "task: captions\nformat: msrvtt\ntrain: t.json\n")
    assert load_card(str(card)).prompts == ""
    _write(card, "task: classification\ntrain: t.csv\n")
    with pytest.raises(InputError, match="prompts"):
        load_card(str(card))


# --------------------------------------------------------------------------- dataset

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("caption_data")
    demo = write_caption_csvs(make_demo_dataset(root / "demo", per_class_train=2, per_class_val=1))
    return {"demo": demo, "demo_ava": make_demo_ava(root / "demo_ava", num_train_videos=4,
                                                    num_val_videos=2, seconds=4)}


def _dataset(demo: Path, train: bool, seed: int = 0, **kw) -> CaptionDataset:
    card = _card(demo, train="captions_train.csv", val="captions_val.csv", num_frames=4,
                 hflip=False, **kw)
    transform = build_transform(train, 32)
    return CaptionDataset(read_caption_records(card, "train" if train else "val"), card,
                          transform, train=train, seed=seed)


def test_dataset_items_and_seeded_caption_draws(data):
    ds = _dataset(data["demo"], train=True)
    first = [ds[i]["caption"] for i in range(len(ds))]
    assert first == [_dataset(data["demo"], train=True)[i]["caption"] for i in range(len(ds))]
    assert all(c in ds.records[i].captions for i, c in enumerate(first))
    ds.set_epoch(1)  # another epoch draws other captions (for some of the 16 videos)
    assert [ds[i]["caption"] for i in range(len(ds))] != first
    batch = collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, 4, 3, 32, 32) and len(batch["caption"]) == 2
    assert "label" not in batch
    val = _dataset(data["demo"], train=False)
    assert val.max_captions == 2 and collate([val[0]])["captions"] == [val.records[0].captions]


def test_missing_videos_are_substituted_or_counted(data, tmp_path):
    rows = (data["demo"] / "captions_train.csv").read_text()
    _write(tmp_path / "captions_train.csv", rows.replace("train/000000.mp4", "gone.mp4"))
    _write(tmp_path / "captions_val.csv", "path,caption\ngone.mp4,nothing\n")
    for p in (data["demo"] / "train").iterdir():
        (tmp_path / "train").mkdir(exist_ok=True)
        (tmp_path / "train" / p.name).symlink_to(p)
    ds = _dataset(tmp_path, train=True)
    gone = next(i for i, r in enumerate(ds.records) if r.path.name == "gone.mp4")
    item = ds[gone]
    assert item["bad"] == [str(tmp_path / "gone.mp4")] and item["index"] != gone
    assert item["caption"] in ds.records[item["index"]].captions  # the substitute's caption
    val = _dataset(tmp_path, train=False)
    assert val[0]["valid"] is False and val[0]["captions"] == ("nothing",)


# --------------------------------------------------------------------------- loss

def _direct_loss(v: torch.Tensor, t: torch.Tensor, scale: float) -> torch.Tensor:
    """The symmetric InfoNCE written out, one pair at a time."""
    v, t = v / v.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    n, total = len(v), 0.0
    for i in range(n):
        total = total - torch.log_softmax(scale * v[i] @ t.t(), 0)[i] / (2 * n)
        total = total - torch.log_softmax(scale * t[i] @ v.t(), 0)[i] / (2 * n)
    return total


def test_contrastive_loss_equals_direct_computation():
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert float(contrastive_loss(v, t, 7.5)) == pytest.approx(float(_direct_loss(v, t, 7.5)),
                                                               rel=1e-6)
    same = contrastive_loss(v, v.clone(), 100.0)  # perfectly matched pairs: loss near 0
    assert 0 <= float(same) < float(contrastive_loss(v, t, 100.0))


def test_sigmoid_loss_equals_siglip_formula():
    """big_vision's SigLIP loss: labels 2 * eye - 1, -sum(log_sigmoid(labels * logits)) / n."""
    g = torch.Generator().manual_seed(1)
    v, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    vn, tn = v / v.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    logits = 10.0 * vn @ tn.t() - 4.0
    labels = 2 * torch.eye(5) - 1
    want = -torch.nn.functional.logsigmoid(labels * logits).sum() / 5
    got = contrastive_loss(v, t, 10.0, torch.tensor(-4.0))
    assert float(got) == pytest.approx(float(want), rel=1e-6)


SCRIPT = """
import json, os, sys
import torch
from accelerate import Accelerator
from vlcofit.utils.distributed import end_processes
from vlcofit.models.losses import contrastive_loss
acc = Accelerator(cpu=True)
g = torch.Generator().manual_seed(0)
V, T = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
r, b = acc.process_index, 4
v = V[r * b:(r + 1) * b].clone().requires_grad_()
t = T[r * b:(r + 1) * b].clone().requires_grad_()
out = []
for sigmoid in (False, True):  # CLIP's InfoNCE, SigLIP's pairwise sigmoid (with a bias)
    v.grad = t.grad = None
    scale = torch.tensor(7.0, requires_grad=True)
    bias = torch.tensor(-3.0, requires_grad=True) if sigmoid else None
    loss = contrastive_loss(v, t, scale, bias)
    loss.backward()
    out.append([acc.num_processes, float(loss), v.grad.tolist(), t.grad.tolist(),
                float(scale.grad), float(bias.grad) if sigmoid else 0.0])
open(os.path.join({tmp!r}, f"rank{{r}}.json"), "w").write(json.dumps(out))
end_processes()
os._exit(0)  # see launch_two in conftest.py
"""


def test_two_process_loss_and_gradients_equal_one_process(tmp_path, launch_two):
    script = _write(tmp_path / "run.py", SCRIPT.format(tmp=str(tmp_path)))
    launch_two([script])
    both_ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for variant, sigmoid in enumerate((False, True)):
        ranks = [r[variant] for r in both_ranks]
        assert [r[0] for r in ranks] == [2, 2]
        g = torch.Generator().manual_seed(0)
        v = torch.randn(8, 16, generator=g).requires_grad_()
        t = torch.randn(8, 16, generator=g).requires_grad_()
        scale = torch.tensor(7.0, requires_grad=True)
        bias = torch.tensor(-3.0, requires_grad=True) if sigmoid else None
        loss = contrastive_loss(v, t, scale, bias)
        loss.backward()
        loss = loss.detach()
        # the mean over processes (what is logged, and what DDP's gradient average takes) is the
        # global loss; each process holds N x the global gradient of its rows, DDP divides by N
        assert (ranks[0][1] + ranks[1][1]) / 2 == pytest.approx(float(loss), rel=1e-6)
        for k, grad in ((2, v.grad), (3, t.grad)):
            both = torch.tensor(ranks[0][k] + ranks[1][k]) / 2
            assert torch.allclose(both, grad, atol=1e-6)
        assert (ranks[0][4] + ranks[1][4]) / 2 == pytest.approx(float(scale.grad), rel=1e-5)
        if sigmoid:
            assert (ranks[0][5] + ranks[1][5]) / 2 == pytest.approx(float(bias.grad), rel=1e-5)


# --------------------------------------------------------------------------- metrics

# 5 captions of 3 videos (0, 0, 1, 2, 2); rows: captions, columns: videos
SIM = torch.tensor([[0.9, 0.1, 0.2],   # c0 -> v0: rank 1
                    [0.5, 0.5, 0.7],   # c1 -> v0: v1 ties (counts against), v2 better: rank 3
                    [0.3, 0.3, 0.3],   # c2 -> v1: all tied: rank 3 (last)
                    [0.9, 0.6, 0.4],   # c3 -> v2: rank 3
                    [0.1, 0.9, 0.2]])  # c4 -> v2: v0 below, v1 above: rank 2
VIDEO_OF = torch.tensor([0, 0, 1, 2, 2])


def test_retrieval_metrics_on_a_hand_made_matrix():
    assert t2v_ranks(SIM, VIDEO_OF).tolist() == [1, 3, 3, 3, 2]
    # v0: best own caption 0.9 (c0), c3 (another video's) ties it: rank 2; v1: own c2 = 0.3,
    # three others above: 4; v2: best own 0.4 (c3), c1 (0.7) above: 2
    assert v2t_ranks(SIM, VIDEO_OF).tolist() == [2, 4, 2]
    m = retrieval_metrics(SIM, VIDEO_OF)
    assert m["t2v_R1"] == pytest.approx(20.0) and m["t2v_R5"] == m["t2v_R10"] == 100.0
    assert m["t2v_MdR"] == 3.0 and m["t2v_MnR"] == pytest.approx(2.4)
    assert m["v2t_R1"] == 0.0 and m["v2t_MdR"] == 2.0
    assert m["v2t_MnR"] == pytest.approx(8 / 3)
    # a model that scores everything alike ranks every answer last
    flat = retrieval_metrics(torch.zeros(5, 3), VIDEO_OF)
    assert flat["t2v_R1"] == 0.0 and flat["t2v_MnR"] == 3.0
    # the tie rule makes ranks independent of the order of captions and videos
    qp, vp = torch.tensor([3, 0, 4, 2, 1]), torch.tensor([2, 0, 1])
    inverse = torch.argsort(vp)
    assert retrieval_metrics(SIM[qp][:, vp], inverse[VIDEO_OF[qp]]) == m
    with pytest.raises(ValueError, match="no caption"):
        v2t_ranks(SIM[:2], VIDEO_OF[:2])


# --------------------------------------------------------------------------- runs

CAPS = ("{{task: captions, format: csv, root: {root}, train: captions_train.csv, "
        "val: captions_val.csv, num_frames: 8, hflip: false}}")


def _sets(data, out: Path, *extra: str) -> list[str]:
    return [f"datasets.demo.root={data['demo']}", f"datasets.demo_ava.root={data['demo_ava']}",
            f"datasets.caps={CAPS.format(root=data['demo'])}", "train.datasets=[demo, demo_ava, caps]",
            "train.sampling=uniform", "train.steps=6", "train.batch_size=2", "train.num_workers=0",
            "train.log_every=1", "train.warmup_steps=1", "train.save_every=6",
            "eval.batch_size=3", f"output_dir={out}", *extra]


@pytest.mark.parametrize("train_text", [False, True])
def test_captions_train_exactly_their_declared_parameters(data, tmp_path, train_text):
    cfg = load_experiment("cofinetune_demo", _sets(data, tmp_path, f"model.train_text={train_text}"))
    labels = build_labels(cfg)
    assert labels.rows("caps").numel() == 0 and len(labels.classes["caps"]) == 0
    without = load_experiment("cofinetune_demo", _sets(data, tmp_path) + [
        "train.datasets=[demo, demo_ava]"])
    assert labels.space.names == build_labels(without).space.names  # captions add no rows
    model = build_video_model(cfg, labels).train()
    task = task_of(cfg.datasets["caps"])
    freeze_unused(model, [task_of(cfg.datasets[n]) for n in cfg.train.datasets])
    ds = build_dataset(cfg.datasets["caps"], "train", labels.classes["caps"], model.backbone,
                       train=True, seed=0)
    task.loss(model, ds.collate([ds[0], ds[1]]), labels.rows("caps"), cfg.train).backward()
    got = {p for p, t in model.named_parameters() if t.grad is not None}
    trainable = {p for p, t in model.named_parameters() if t.requires_grad}
    assert got == task.used_parameters(model) & trainable
    assert any(p.startswith("backbone.clip.transformer.") for p in got) == train_text


def test_mixture_with_captions_on_two_processes(data, tmp_path, launch_two, capsys):
    out = tmp_path / "run"
    args = ["-m", "vlcofit", "train", "cofinetune_demo"]
    args += [a for s in _sets(data, out) for a in ("--set", s)]
    launch_two(args, timeout=600)
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = {k for r in rows for k in r if k.startswith("train/") and k.endswith("/loss")}
    assert "train/caps/loss" in trained, trained  # the seeded draw picks every dataset
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    final = rows[-1]
    # 8 validation videos, 2 captions each, each counted once over the two processes
    assert final["caps/videos"] == 8 and final["caps/captions"] == 16
    assert 0 <= final["caps/t2v_R1"] <= 100 and final["caps/v2t_MnR"] >= 1
    assert "demo/top1" in final and "demo_ava/mAP" in final
    top = json.loads((out / "eval" / "caps_retrieval_top10.json").read_text())
    assert len(top["t2v"]) == 16 and len(top["v2t"]) == 8 and len(top["t2v"][0]["top"]) == 8
    from vlcofit.cli.main import main
    assert main(["eval", "--checkpoint", str(out), "--set", "eval.datasets=[caps]",
                 "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "caps/t2v_R1" in printed and "caps/v2t_MdR" in printed
    assert (tmp_path / "ev" / "caps_retrieval_top10.json").is_file()
    # the published protocol beside the default; the card picks which one is unprefixed
    default = json.loads((tmp_path / "ev" / "metrics_val.json").read_text())
    assert main(["eval", "--checkpoint", str(out), "--set", "eval.datasets=[caps]",
                 "--set", "datasets.caps.retrieval_protocol=clip4clip",
                 "--out", str(tmp_path / "ev2")]) == 0
    picked = json.loads((tmp_path / "ev2" / "metrics_val.json").read_text())
    for key in ("t2v_R1", "t2v_MdR", "v2t_R5", "v2t_MnR"):
        assert picked[f"caps/{key}"] == default[f"caps/clip4clip_{key}"]
        assert picked[f"caps/vlcofit_{key}"] == default[f"caps/{key}"]


def test_two_processes_train_like_one_process(data, tmp_path, launch_two):
    """Captions alone, 3 steps: 2 processes x 2 clips and 1 process x 4 clips see the same
    global batches and captions, and the gathered negatives make their losses equal."""
    common = [f"datasets.caps={CAPS.format(root=data['demo'])}", "datasets.demo.root=/unused",
              "train.datasets=[caps]", "train.steps=3", "train.num_workers=0",
              "train.log_every=1", "train.warmup_steps=1", "train.save_every=3",
              "eval.batch_size=4"]
    two, one = tmp_path / "two", tmp_path / "one"
    args = ["-m", "vlcofit", "train", "demo"]
    args += [a for s in common + [f"output_dir={two}", "train.batch_size=2"] for a in ("--set", s)]
    launch_two(args, timeout=600)
    train(load_experiment("demo", common + [f"output_dir={one}", "train.batch_size=4"]))

    def losses(run: Path) -> list[float]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses(two)) == 3
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)  # as tests/test_distributed.py
