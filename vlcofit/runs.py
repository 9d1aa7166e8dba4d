"""Library entry points behind the CLI: evaluate a checkpoint, run a built-in demo."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from .config import ExperimentConfig, load_experiment
from .demos import DEMOS, SWEEP_DEMOS
from .experiment import build_dataset, build_labels, build_loader
from .runmodel import model_for_eval
from .tasks import task_of
from .train import make_accelerator
from .strategy import for_inference

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
    model = for_inference(accelerator, model_for_eval(cfg, labels, ckpt, explicit, run_config))
    metrics = {}
    for name in cfg.eval_datasets:
        ds = build_dataset(cfg.datasets[name], cfg.eval.split, labels.classes[name],
                           accelerator.unwrap_model(model).backbone, train=False, seed=cfg.train.seed)
        loader = accelerator.prepare(build_loader(ds, cfg.eval.batch_size, False,
                                                  cfg.train.num_workers, cfg.data.stall_timeout))
        card = cfg.datasets[name]
        metrics.update(task_of(card).evaluate(
            accelerator, model, loader, card, labels.rows(name).to(accelerator.device),
            labels.classes[name], cfg.eval.split, out_dir, cfg.eval.max_batches))
    if out_dir is not None and accelerator.is_main_process:
        (out_dir / f"metrics_{cfg.eval.split}.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def demo_generators() -> dict:
    """Built-in synthetic datasets, by dataset-card name: card name -> generator(root) -> the
    folder it wrote (the card's root)."""
    from .data.synthetic import make_demo_dataset
    from .data.synthetic_ava import make_demo_ava
    from .data.synthetic_compositional import make_compositional
    from .data.synthetic_target import make_demo_target

    def demo_captions(root: Path) -> Path:
        # the demo's own videos and caption CSVs: one folder (``demo`` beside ``root``) for
        # both cards, so a run training on labels and captions reads each video file once
        return make_demo_dataset(Path(root).parent / "demo")

    def compositional_unseen(root: Path) -> Path:
        return make_compositional(Path(root).parent / "compositional")  # compositional's files

    return {"demo": make_demo_dataset, "demo_captions": demo_captions,
            "demo_target": make_demo_target, "demo_ava": make_demo_ava,
            "compositional": make_compositional, "compositional_unseen": compositional_unseen}




def _demo_data(name: str, out: Path) -> list[str]:
    """Generate the built-in datasets config ``name`` uses; their ``--set ...root=`` items."""
    generators = demo_generators()
    cfg = load_experiment(name)
    return [f"datasets.{n}.root={generators[c.name](out / 'data' / c.name)}"
            for n, c in cfg.datasets.items() if c.name in generators]


def run_sweep_demo(out: Path, overrides: list[str], which: str, fresh: bool = True) -> dict:
    """A built-in sweep (``SWEEP_DEMOS``) in ``out/<which>``; ``transfer`` first trains the
    classification demo (kept when finished) as its start, then adds the setting ``vlcofit
    advise`` recommends as one more arm, so the advice is measured beside the grid."""
    from .distributed import process_state
    from .sweep import best_versus, finished_metrics, sweep
    from .train import clean_run_dir

    name, run_dir = SWEEP_DEMOS[which], out / which
    if fresh:
        clean_run_dir(run_dir)
    base = [*_demo_data(name, out), *overrides]
    arms = None
    if which == "transfer":
        from .advise import advise
        start = out / "classification"
        if finished_metrics(start) is None:  # the start: trained once, kept
            run_demo(out, [], "classification", fresh=False)
        base.append(f"model.init_from={out / 'classification'}")
        cfg = load_experiment(name, base)
        advice = advise(cfg, run_dir / "advice")
        arms = {**cfg.sweep.arms, "advised": tuple(advice["set"])}
    report = sweep(name, base, run_dir, arms=arms)
    if arms is not None:
        report["advice_check"] = best_versus(report, "advised", report["shown"][0])
        if process_state().is_main_process:
            (run_dir / "sweep.json").write_text(json.dumps(report, indent=2))
    return report


def run_demo(out: Path, overrides: list[str], which: str = "classification",
             fresh: bool = True) -> tuple[dict[str, float], Path]:
    """Generate the synthetic data a demo experiment needs (once, under ``out/data``) and train +
    evaluate it in ``out/<which>``: each demo its own run folder, so one never deletes or resumes
    another's run. ``fresh=False`` resumes the demo's earlier run where there is one."""
    from .train import clean_run_dir, train

    name = DEMOS[which]
    roots = _demo_data(name, out)
    run_dir = out / which
    if fresh:
        clean_run_dir(run_dir)
    cfg = load_experiment(name, [*roots, f"output_dir={run_dir}", *overrides])
    resume = "latest" if not fresh and (run_dir / "checkpoints" / "latest").is_file() else None
    return train(cfg, resume=resume), run_dir
