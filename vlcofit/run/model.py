"""A trained run's model, rebuilt from the run's own saved ``config.yaml``.

Every command that takes a run folder or checkpoint (eval, zero-shot, few-shot, predict) builds
its model here, so the temporal module, heads and backbone always match the weights. Flags or
configs that name another architecture are an error naming both; ``--model`` is for bare
pretrained models.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from accelerate.utils import set_seed

from ..config.schema import ExperimentConfig, ModelConfig
from ..errors import InputError
from ..experiment import LabelSetup, build_labels, build_video_model, load_experiment
from ..models.notices import WeightsUnavailable, weights_follow
from ..models.video import VideoCLIP, build_model
from ..tasks import task_of
from ..text.prompts import canonical_name
from . import checkpoint

logger = logging.getLogger(__name__)

# ModelConfig fields that decide which tensors a checkpoint holds; the others (pretrained tag,
# download folder, init_from, train_text) only say how training started. A config or flags
# used with a run: explicit `--set model.K=V` / `--model` that contradict the run are errors;
# a config file's other model keys are replaced by the run's (logged).
ARCHITECTURE = ("backbone", "name", "temporal", "temporal_layers", "box_temporal", "head", "loss")


@dataclass
class RunModel:
    """A run's model with its weights loaded, the run's config and label space."""
    model: VideoCLIP
    cfg: ExperimentConfig
    labels: LabelSetup
    checkpoint: Path


def run_dir_of(ckpt: Path) -> Path | None:
    """The run folder holding checkpoint folder ``ckpt`` (None for a loose checkpoint)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def load_run_config(ckpt: Path, config: str | Path | None = None) -> ExperimentConfig:
    """The run's saved config.yaml (or ``config`` for a checkpoint moved out of its run)."""
    if config is None:
        run = run_dir_of(ckpt)
        if run is None or not (run / "config.yaml").is_file():
            raise InputError(f"{ckpt}: cannot find the run's config.yaml next to the checkpoint; "
                             "pass the config the run was trained with (--config)")
        config = run / "config.yaml"
    return load_experiment(config)


def check_architecture(run_model: ModelConfig, other: ModelConfig, run: str, other_name: str,
                       keys: Sequence[str] = ARCHITECTURE) -> None:
    """Error when ``other`` names another architecture than the run was trained with (in
    ``keys``)."""
    diff = [k for k in keys if getattr(run_model, k) != getattr(other, k)]
    if diff:
        pairs = "; ".join(f"model.{k}: {getattr(other, k)!r} in {other_name}, "
                          f"{getattr(run_model, k)!r} in the run" for k in diff)
        raise InputError(f"{other_name} contradicts the run {run}: {pairs}. The model is built "
                         f"from the run's config.yaml; drop the contradicting setting")


def model_from_run(path: str | Path, model_cfg: ModelConfig, explicit: Sequence[str],
                   where: str) -> ModelConfig:
    """``model_cfg`` replaced by run ``path``'s architecture, starting from its weights
    (``init_from``): for fine-tuning a run further (few-shot). ``explicit``: model keys the
    user set (``--set model.K=V``); those that contradict the run are an error, other
    differences are replaced by the run's (with a warning)."""
    ckpt = checkpoint.resolve(path)
    run_model = load_run_config(ckpt).model
    check_architecture(run_model, model_cfg, str(path), where,
                       keys=[k for k in ARCHITECTURE if k in explicit])
    replaced = [k for k in ARCHITECTURE if getattr(run_model, k) != getattr(model_cfg, k)]
    if replaced:
        logger.warning("%s: using the run's %s instead of the config's", path,
                       ", ".join(f"model.{k}={getattr(run_model, k)!r}" for k in replaced))
    # the run's re-initialised blocks are trained weights now: not re-initialised again
    return dataclasses.replace(run_model, init_from=str(ckpt), train_text=model_cfg.train_text
                               if "train_text" in explicit else run_model.train_text,
                               reinit_last=model_cfg.reinit_last if "reinit_last" in explicit
                               else 0)


def set_model_keys(overrides: Sequence[str]) -> list[str]:
    """Model keys named by ``--set model.K=V`` items."""
    return [item.split("=", 1)[0][len("model."):] for item in overrides
            if item.startswith("model.")]


def _has_box_head(ckpt: Path) -> bool:
    from safetensors import safe_open
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        return any(k.startswith("box_head.") for k in f.keys())


def load_run_model(path: str | Path, config: str | Path | None = None,
                   class_names: Sequence[str] | None = None,
                   class_templates: Sequence[Sequence[str]] | None = None,
                   needs_boxes: bool = False) -> RunModel:
    """Rebuild the model of run ``path`` (run folder, its checkpoints folder or a checkpoint)
    from its config and load its weights (strictly: every tensor must fit).

    ``class_names`` / ``class_templates``: score this label space instead of the run's (any
    names with the text head; names the run was trained on with a linear head). The model has
    a box head exactly when the checkpoint has one; ``needs_boxes`` makes its absence an error.
    """
    ckpt = checkpoint.resolve(path)
    cfg = load_run_config(ckpt, config)
    labels = build_labels(cfg)
    boxes = _has_box_head(ckpt)
    if needs_boxes and not boxes:
        raise InputError(f"{path}: this run has no box head (it trained on no localisation "
                         "dataset), so it cannot score person boxes")
    # The checkpoint replaces every weight (open_clip's "initialized randomly" is expected);
    # `pretrained` is kept only for the preprocessing constants it decides (mean / std).
    with torch.random.fork_rng(devices=[]), weights_follow():
        torch.manual_seed(cfg.train.seed)
        try:
            model = build_model(cfg.model, labels.space.names, labels.row_templates,
                                with_boxes=boxes)
        except WeightsUnavailable as e:  # the run's config.yaml decides, not a flag
            raise e.passing(config=str(config or run_dir_of(ckpt) / "config.yaml")) from None
    checkpoint.load_weights(model, ckpt)
    if class_names is not None:
        relabel(model, class_names, class_templates or [("{}",)] * len(class_names), str(path))
    model.refresh_text_cache()
    return RunModel(model, cfg, labels, ckpt)


def relabel(model: VideoCLIP, names: Sequence[str], templates: Sequence[Sequence[str]],
            run: str) -> None:
    """Score label space ``names`` (with ``templates`` per row) instead of the trained one.

    The text head embeds any names; a linear head keeps the rows of the names it was trained on
    (matched by canonical name) and cannot score others.
    """
    if model.linear is not None:
        trained = {canonical_name(n): i for i, n in enumerate(model.class_names)}
        missing = [n for n in names if canonical_name(n) not in trained]
        if missing:
            raise InputError(f"{run}: the run has a linear head (model.head: linear), which scores "
                             f"only the classes it was trained on; it has no row for "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        rows = torch.tensor([trained[canonical_name(n)] for n in names], dtype=torch.long)
        old = model.linear
        new = nn.Linear(old.in_features, len(names)).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[rows])
            new.bias.copy_(old.bias[rows])
        model.linear = new
    model.set_label_space(names, templates)


def require_text_head(run: RunModel, what: str) -> None:
    if run.cfg.model.head != "text":
        raise InputError(f"{run.checkpoint}: {what} scores new class names with the text encoder, "
                         f"but this run has a {run.cfg.model.head} head")


def model_for_eval(cfg: ExperimentConfig, labels: LabelSetup, ckpt: str | Path,
                   explicit: Sequence[str] = (), run_config: str | Path | None = None
                   ) -> VideoCLIP:
    """The model for evaluating ``cfg``'s datasets with run ``ckpt``'s weights: the run's
    architecture. ``explicit``: model keys set on the command line (``--set model.K=V``), an
    error where they contradict the run; other differences in ``cfg.model`` are replaced by
    the run's, with a warning. ``run_config``: the run's config for a loose checkpoint."""
    resolved = checkpoint.resolve(ckpt)
    run_model = load_run_config(resolved, run_config).model
    check_architecture(run_model, cfg.model, str(ckpt), "--set",
                       keys=[k for k in ARCHITECTURE if k in explicit])
    replaced = [k for k in ARCHITECTURE if getattr(run_model, k) != getattr(cfg.model, k)]
    if replaced:
        logger.warning("%s: using the run's %s instead of the config's", ckpt,
                       ", ".join(f"model.{k}={getattr(run_model, k)!r}" for k in replaced))
    boxes = any(task_of(cfg.datasets[n]).uses_boxes for n in cfg.eval_datasets)
    return load_run_model(resolved, run_config, class_names=labels.space.names,
                          class_templates=labels.row_templates, needs_boxes=boxes).model


def starting_model(cfg: ExperimentConfig, labels: LabelSetup,
                   start: Path | None) -> VideoCLIP:
    """The model as a run starts it: seeded by ``train.seed`` (the same initial weights on every
    process), built over ``labels``, the starting checkpoint ``start`` (``model.init_from``'s)
    loaded into the tensors it fits; before ``model.reinit_last`` and ``train.freeze``."""
    set_seed(cfg.train.seed)
    model = build_video_model(cfg, labels)
    if start is not None:
        checkpoint.load_matching(model, start)
    return model
