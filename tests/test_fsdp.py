"""The model under real sharding on two CPU processes: PyTorch's FSDP 2 (``fully_shard``, gloo).

Accelerate will not shard on a CPU (vlcofit refuses it: :mod:`vlcofit.train.accelerator`), so the script
applies ``fully_shard`` itself, as Accelerate's FSDP 2 does on GPUs (each image-tower block,
then the whole model), and drives vlcofit's own task losses and evaluation. What this checks:
the model has no parameter FSDP 2 refuses (0-d scales), the task losses and every evaluation
(classification, box head, class-embedding cache, logit-scale logging, the fit measures with
their feature cache) go through the
sharded model's forward (:func:`vlcofit.train.accelerator.inside`), and losses and metrics equal DDP's
on the same batches. Accelerate's own FSDP plumbing (``save_state``) needs a GPU:
``bench/gpu.sh``.
"""
import json
from pathlib import Path

import pytest

from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.data.synthetic.ava import make_demo_ava

SCRIPT = r'''
import json, os, sys
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch.distributed.fsdp import fully_shard
from vlcofit.experiment import load_experiment
from vlcofit.eval.cache import FeatureCache
from vlcofit.utils.distributed import end_processes
from vlcofit.experiment import build_dataset, build_labels, build_video_model
from vlcofit.data.loading import build_loader
from vlcofit.experiment.fit import measure_fit
from vlcofit.models.prepared import inside
from vlcofit.tasks import task_of
from vlcofit.train.loop import freeze_unused

# guarded: loader workers (forkserver) import this script again
if __name__ == "__main__":
    mode, config, out, *sets = sys.argv[1:]
    acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    cfg = load_experiment(config, sets)
    labels = build_labels(cfg)
    torch.manual_seed(0)
    model = build_video_model(cfg, labels).train()
    names = list(cfg.train.datasets)
    tasks = {n: task_of(cfg.datasets[n]) for n in names}
    freeze_unused(model, list(tasks.values()))
    data = {n: build_dataset(cfg.datasets[n], "train", labels.classes[n], model.backbone, train=True,
                             seed=0) for n in names}
    base = model
    if mode == "fsdp":
        for block in model.backbone.image_blocks():
            fully_shard(block)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    if mode == "ddp":
        model, optimizer = acc.prepare(model, optimizer)
    rank, losses = acc.process_index, []
    for step in range(4):
        n = names[step % len(names)]
        i = (2 * step + rank) % len(data[n])
        torch.manual_seed(100 * step + rank)  # the augmentation draws: the same in both modes
        batch = data[n].collate([data[n][i]])
        loss = tasks[n].loss(model, batch, labels.rows(n), cfg.train)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        base.clamp_logit_scales()
        if base.train_text:
            base.refresh_text_cache()
        losses.append(acc.reduce(loss.detach(), "mean").item())
    metrics = {"scale": inside(model, lambda m: m.logit_scale.exp().item())}
    for n in dict.fromkeys(names + list(cfg.eval.datasets)):
        card = cfg.datasets[n]
        ds = build_dataset(card, "val", labels.classes[n], base.backbone, train=False, seed=0)
        loader = acc.prepare(build_loader(ds, 2, False, 0))
        metrics.update(task_of(card).evaluate(acc, model, loader, card, labels.rows(n),
                                              labels.classes[n], "val", None, None))
    metrics.update(measure_fit(cfg, acc, model, labels, names, FeatureCache(out + ".features")))
    if acc.is_main_process:
        json.dump({"losses": losses, "metrics": metrics}, open(out, "w"))
    end_processes()
    os._exit(0)  # see conftest.launch_two
'''

CASES = {  # config, --set items
    "text_head": ("demo", ["model.train_text=false"]),
    "train_text": ("demo", ["model.train_text=true"]),
    "cls_and_boxes": ("cofinetune_demo", []),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fsdp_data")
    return {"demo": make_demo_dataset(root / "demo", per_class_train=1, per_class_val=1),
            "demo_ava": make_demo_ava(root / "demo_ava", num_train_videos=2, num_val_videos=2,
                                      seconds=3)}


@pytest.mark.parametrize("name", list(CASES))
def test_fsdp2_trains_and_evaluates_as_ddp(data, tmp_path, launch_two, name):
    config, extra = CASES[name]
    sets = [f"datasets.{n}.root={p}" for n, p in data.items() if config != "demo" or n == "demo"]
    sets += extra + [f"output_dir={tmp_path / 'run'}"]
    script = tmp_path / "fsdp_script.py"
    script.write_text(SCRIPT)
    results = {}
    for mode in ("fsdp", "ddp"):
        out = tmp_path / f"{mode}.json"
        launch_two([str(script), mode, config, str(out), *sets], timeout=600)
        results[mode] = json.loads(out.read_text())
    fsdp, ddp = results["fsdp"], results["ddp"]
    # the same updates up to float summation order (reduce-scatter vs all-reduce), which
    # AdamW's normalised steps can amplify a little over 4 steps
    assert fsdp["losses"] == pytest.approx(ddp["losses"], rel=1e-4)
    assert fsdp["metrics"].keys() == ddp["metrics"].keys()
    assert len(fsdp["metrics"]) > 3  # the scale and each evaluated dataset's metrics
    for key, value in ddp["metrics"].items():
        assert fsdp["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-4, nan_ok=True), key
