"""Supervised evaluation of a finished run (or any checkpoint) on its config's evaluation
datasets: ``vlcofit eval``."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from ..config.schema import ExperimentConfig
from ..errors import InputError
from ..experiment import build_labels, eval_loaders, evaluate_datasets, load_experiment
from ..models.prepared import for_inference
from ..run.checkpoint import resolve
from ..run.model import model_for_eval, run_dir_of, set_model_keys
from ..train.accelerator import make_accelerator

logger = logging.getLogger(__name__)


def evaluate_checkpoint(cfg: ExperimentConfig, ckpt: str, out_dir: Path | None = None,
                        explicit: Sequence[str] = (),
                        run_config: str | Path | None = None) -> dict[str, float]:
    """Supervised evaluation of a checkpoint on ``cfg``'s evaluation datasets and split; the
    model is the run's own (:func:`vlcofit.run.model.model_for_eval`: ``explicit`` model keys
    must agree with it; ``run_config`` for a checkpoint outside its run folder), scoring
    ``cfg``'s label space."""
    accelerator = make_accelerator(cfg, None)
    labels = build_labels(cfg)
    model = for_inference(accelerator, model_for_eval(cfg, labels, ckpt, explicit, run_config))
    loaders = {n: accelerator.prepare(loader) for n, loader in
               eval_loaders(cfg, labels, accelerator.unwrap_model(model).backbone).items()}
    metrics = evaluate_datasets(accelerator, model, loaders, cfg, labels, out_dir)
    if out_dir is not None and accelerator.is_main_process:
        (out_dir / f"metrics_{cfg.eval.split}.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def evaluate_run(checkpoint: str | Path, overrides: Sequence[str] = (),
                 config: str | Path | None = None,
                 out: str | Path | None = None) -> tuple[ExperimentConfig, dict[str, float], Path]:
    """``vlcofit eval``: a run folder or checkpoint evaluated under its own config (``config``
    for a checkpoint outside its run folder) with ``overrides`` (``--set`` items: the split,
    datasets, batch size; model keys must agree with the run's). Returns the config, the
    metrics and the folder the per-class / per-query files went to (default
    ``<checkpoint>/eval``)."""
    run = run_dir_of(resolve(checkpoint))
    config = config or (run / "config.yaml" if run else None)
    if not config:
        raise InputError(f"{checkpoint}: a checkpoint outside its run folder: pass the config "
                         "it was trained with (vlcofit eval CONFIG --checkpoint ...)")
    cfg = load_experiment(config, list(overrides))
    out = Path(out) if out else Path(checkpoint) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_checkpoint(cfg, str(checkpoint), out, set_model_keys(list(overrides)),
                                  run_config=None if run else config)
    return cfg, metrics, out
