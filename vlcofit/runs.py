"""Library entry points behind the CLI: evaluate a checkpoint, run a built-in demo."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from .config import ExperimentConfig, load_experiment
from .experiment import build_dataset, build_labels, build_loader
from .runmodel import model_for_eval
from .tasks import task_of
from .train import make_accelerator

logger = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: ExperimentConfig, ckpt: str, out_dir: Path | None = None,
                        explicit: Sequence[str] = (),
                        run_config: str | Path | None = None) -> dict[str, float]:
    """Supervised evaluation of a checkpoint on ``cfg``'s evaluation datasets and split; the
    model is the run's own (:func:`vlcofit.runmodel.model_for_eval`: ``explicit`` model keys
    must agree with it; ``run_config`` for a checkpoint outside its run folder), scoring
    ``cfg``'s label space."""
    accelerator = make_accelerator(cfg, None)
    labels = build_labels(cfg)
    model = accelerator.prepare(model_for_eval(cfg, labels, ckpt, explicit, run_config))
    metrics = {}
    for name in cfg.eval_datasets:
        ds = build_dataset(cfg.datasets[name], cfg.eval.split, labels.classes[name],
                           accelerator.unwrap_model(model).backbone, train=False, seed=cfg.train.seed)
        loader = accelerator.prepare(build_loader(ds, cfg.eval.batch_size, False, cfg.train.num_workers))
        card = cfg.datasets[name]
        metrics.update(task_of(card).evaluate(
            accelerator, model, loader, card, labels.rows(name).to(accelerator.device),
            labels.classes[name], cfg.eval.split, out_dir, cfg.eval.max_batches))
    if out_dir is not None and accelerator.is_main_process:
        (out_dir / f"metrics_{cfg.eval.split}.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def demo_generators() -> dict:
    """Built-in synthetic datasets, by dataset-card name: card name -> generator(root) -> root."""
    from .data.synthetic import make_demo_dataset
    from .data.synthetic_ava import make_demo_ava
    return {"demo": make_demo_dataset, "demo_ava": make_demo_ava}


DEMOS = {"classification": "demo", "localization": "demo_ava", "cofinetune": "cofinetune_demo"}


def run_demo(out: Path, overrides: list[str], which: str = "classification",
             fresh: bool = True) -> tuple[dict[str, float], Path]:
    """Generate the synthetic data a demo experiment needs (once, under ``out/data``) and train +
    evaluate it in ``out/<which>``: each demo its own run folder, so one never deletes or resumes
    another's run. ``fresh=False`` resumes the demo's earlier run where there is one."""
    from .train import clean_run_dir, train

    name = DEMOS[which]
    cfg = load_experiment(name)
    generators = demo_generators()
    data = {n: generators[c.name](out / "data" / c.name) for n, c in cfg.datasets.items()
            if c.name in generators}
    run_dir = out / which
    if fresh:
        clean_run_dir(run_dir)
    roots = [f"datasets.{n}.root={path}" for n, path in data.items()]
    cfg = load_experiment(name, [*roots, f"output_dir={run_dir}", *overrides])
    resume = "latest" if not fresh and (run_dir / "checkpoints" / "latest").is_file() else None
    return train(cfg, resume=resume), run_dir
