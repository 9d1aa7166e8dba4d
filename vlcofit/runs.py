"""Library entry points behind the CLI: evaluate a checkpoint, zero-shot scoring, the demo."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from . import checkpoint
from .config import (DatasetCard, ExperimentConfig, ModelConfig, load_card, load_experiment)
from .errors import InputError
from .evaluate import classification_report, evaluate_classification, extract_embeddings, view_scores
from .experiment import build_dataset, build_labels, build_loader, build_video_model
from .models.video import build_model
from .prompts import read_class_list, read_templates
from .tasks import task_of
from .train import make_accelerator

logger = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: ExperimentConfig, ckpt: str, out_dir: Path | None = None) -> dict[str, float]:
    """Supervised evaluation of a checkpoint on ``cfg``'s evaluation datasets and split."""
    accelerator = make_accelerator(cfg, None)
    labels = build_labels(cfg)
    model = build_video_model(cfg, labels)
    checkpoint.load_weights(model, checkpoint.resolve(ckpt))
    model = accelerator.prepare(model)
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


def manifest_card(path: str, num_frames: int, prompts: str, templates: str) -> DatasetCard:
    """An inline card for a bare ``path,label`` CSV (paths relative to the CSV's folder)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--data {path}: neither a dataset card nor a manifest file")
    return DatasetCard(name=p.stem, format="csv", root=str(p.parent), val=p.name, prompts=prompts,
                       templates=templates, num_frames=num_frames)


def zero_shot(model_cfg: ModelConfig, data: str, prompts: str, templates: str | None = None,
              split: str = "val", weights: str | None = None, num_frames: int = 8,
              batch_size: int = 8, num_workers: int = 2, out: Path | None = None) -> dict[str, float]:
    """Score labelled videos against any prompt file's class names with a CLIP video model.

    ``data``: a dataset card (shipped name or .yaml path; its labels must be names or indices of
    ``prompts``) or a ``path,label`` CSV manifest. ``weights``: a vlcofit checkpoint or run folder.
    """
    if data.endswith((".yaml", ".yml")) or not Path(data).is_file():
        card = load_card(data)
        card = dataclasses.replace(card, prompts=prompts, templates=templates or card.templates)
    else:
        card = manifest_card(data, num_frames, prompts, templates or "text4vis")
    classes = read_class_list(card.prompts)
    tmpl = read_templates(card.templates)
    cfg = ExperimentConfig(model=model_cfg, datasets={card.name: card}, output_dir="")
    accelerator = make_accelerator(cfg, None)
    model = build_model(model_cfg, classes.names, [tmpl] * len(classes))
    if weights:
        checkpoint.load_weights(model, checkpoint.resolve(weights))
    model = accelerator.prepare(model)
    base = accelerator.unwrap_model(model)
    ds = build_dataset(card, split, classes, base.backbone, train=False, seed=0)
    loader = accelerator.prepare(build_loader(ds, batch_size, False, num_workers))
    feats = extract_embeddings(accelerator, model, loader, desc=f"zero-shot {card.name}")
    text = base.embed_texts(classes.names, tmpl)
    scores = view_scores(base, feats["emb"], text=text)
    metrics = classification_report(card.name, scores, feats["label"], feats["valid"], classes,
                                     out.parent if out is not None and accelerator.is_main_process else None)
    if out is not None and accelerator.is_main_process:
        out.write_text(json.dumps({"prompts": str(classes.path), "templates": list(tmpl),
                                   "model": dataclasses.asdict(model_cfg), "weights": weights,
                                   "metrics": metrics}, indent=2))
    return metrics


def run_demo(out: Path, overrides: list[str], fresh: bool = True) -> tuple[dict[str, float], Path]:
    """Generate the synthetic dataset (once) and train + evaluate the demo experiment on it."""
    from .data.synthetic import make_demo_dataset
    from .train import clean_run_dir, train

    data_dir = make_demo_dataset(out / "data")
    run_dir = out / "run"
    if fresh:
        clean_run_dir(run_dir)
    cfg = load_experiment("demo", [f"datasets.demo.root={data_dir}", f"output_dir={run_dir}", *overrides])
    return train(cfg), run_dir
