"""``vlcofit advise``: measure how well the starting weights fit the training data
(:mod:`vlcofit.experiment.fit`), then recommend non-binary transfer settings from one fit score.

Source. Plested, Shen & Gedeon 2021, "Non-binary deep transfer learning for image
classification" (arXiv 2107.08585): the best number of layers to transfer, per-layer learning
rates and the mix of L2-SP (decay towards the pretrained weights, Li et al. 2018) and L2 depend
on how similar the target is to the source, and measures of how well the pretrained weights fit
the target can guide them. Only the paper's abstract could be read here; the directions below
are those widely reported from it: for a target similar to the source (features already fit),
transfer every layer, keep lower layers close to their start (lower learning rates there: a
layer-wise decay, or freezing the lowest ones) and prefer L2-SP; for a dissimilar target,
re-initialise and re-train top layers, use higher learning rates and plain L2 rather than
L2-SP. The thresholds and constants are this module's choices (not from the paper), stated
here and in ``advice.json``; every rule is monotone in the score.

Fit score s in [0, 1]: per measured dataset, the linear-probe top-1 above chance,
``(acc - chance) / (100 - chance)`` clipped to [0, 1] (k-NN top-1 when no probe could be
fitted, then zero-shot top-1); s = the mean over datasets. Bands: high s >= 2/3, mid
1/3 <= s < 2/3, low s < 1/3; L = the image tower's blocks.

| setting | high fit | mid fit | low fit |
| --- | --- | --- | --- |
| ``model.reinit_last`` | 0 | 0 | ceil(L/12) blocks; 2 ceil(L/12) when s < 1/6; at most L - 1 |
| ``train.freeze`` | ``image:floor(L/4)`` (embeddings + lowest blocks) | none | none |
| ``train.layer_decay`` | 0.75 | 0.9 | 1.0 (off) |
| ``train.l2sp`` | pull 1.0 | pull 0.3 | 0 (L2 only) |
| ``train.weight_decay`` | config's | config's | config's, at least 0.05 |
| ``train.lr`` | config's | config's | 2 x config's |

L2-SP is decoupled here (w <- w - lr alpha (w - w0) per step), so its strength is given as a
"pull" c: alpha = c / (lr * steps), i.e. c e-folds towards w0 over a run at constant lr.
A start that transfers nothing (random backbone, no ``model.init_from``) gets none of the
transfer settings (re-initialising, freezing, layer decay, L2-SP all act on transferred
weights; ``reinit_last`` and ``l2sp`` would be refused by training). Freezing and
re-initialising name the image tower's blocks; without a declared image tower they are not
recommended, and layer decay only when every parameter has a declared depth. The
recommendations are applied to the measured model (re-initialise, freeze, build the optimizer
groups) before they are returned: an invalid combination is a bug, never advice.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config.loading import apply_overrides, from_dict, to_dict
from ..config.schema import ExperimentConfig, TrainConfig
from ..errors import InputError
from ..eval.cache import FeatureCache
from ..eval.transferability import KNN_K
from ..experiment import build_labels
from ..experiment.fit import fit_datasets, measure_fit
from ..models.prepared import for_inference
from ..run import checkpoint
from ..run.model import starting_model
from ..train.accelerator import make_accelerator
from ..train.optim import apply_freeze, depth_of, param_groups
from ..utils.tables import text_table

logger = logging.getLogger(__name__)

HIGH_FIT, LOW_FIT = 2 / 3, 1 / 3
VERY_LOW_FIT = LOW_FIT / 2
LAYER_DECAY = {"high": 0.75, "mid": 0.9, "low": 1.0}
L2SP_PULL = {"high": 1.0, "mid": 0.3, "low": 0.0}
LR_SCALE = {"high": 1.0, "mid": 1.0, "low": 2.0}
MIN_L2 = TrainConfig().weight_decay  # the default L2: the floor for dissimilar targets
SCORE_SOURCES = ("probe_top1", f"knn{KNN_K}_top1", "zero_shot_top1")


@dataclass(frozen=True)
class Start:
    """What the starting model allows: transferred weights, image-tower blocks (None: the
    backbone declares no image tower), whether every parameter has a declared depth."""
    pretrained: bool
    image_layers: int | None
    depths_declared: bool


@dataclass(frozen=True)
class Advice:
    """One recommended setting and why (one sentence)."""
    key: str
    value: Any
    why: str


# --------------------------------------------------------------------------- the fit score

def fit_score(measures: dict[str, float],
              datasets: Sequence[str]) -> tuple[float, dict[str, float], dict[str, str]]:
    """(s, s per dataset, the measure each used); see the module docstring."""
    per, used = {}, {}
    for name in datasets:
        chance = measures.get(f"{name}/fit/chance_top1")
        source = next((m for m in SCORE_SOURCES if _finite(measures.get(f"{name}/fit/{m}"))),
                      None)
        if source is None or chance is None or chance >= 100.0:
            continue  # nothing measured, or one class (every guess is right)
        acc = measures[f"{name}/fit/{source}"]
        per[name] = min(1.0, max(0.0, (acc - chance) / (100.0 - chance)))
        used[name] = source
    if not per:
        raise InputError(f"advise: no fit measure to score (datasets: {', '.join(datasets) or 'none'}"
                         "); it needs a single-label classification dataset with a train split")
    return sum(per.values()) / len(per), per, used


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


def band(s: float) -> str:
    return "high" if s >= HIGH_FIT else "mid" if s >= LOW_FIT else "low"


# --------------------------------------------------------------------------- the rules

def recommend(s: float, start: Start, train: TrainConfig) -> list[Advice]:
    """The recommendations for fit score ``s`` (module docstring), valid for ``start``."""
    b = band(s)
    lr = train.lr * LR_SCALE[b] if start.pretrained else train.lr
    out = [_reinit(s, start), _freeze(b, start, train), _layer_decay(b, start, train)]
    out.append(Advice("train.lr", _round(lr), (
        f"{LR_SCALE[b]:g} x the config's lr: {b} fit" +
        (", a dissimilar target needs larger updates" if LR_SCALE[b] > 1 else "")
        if start.pretrained else "the config's lr: nothing is transferred")))
    pull = L2SP_PULL[b] if start.pretrained else 0.0
    alpha = _round(pull / (lr * train.steps)) if pull and lr > 0 else 0.0
    out.append(Advice("train.l2sp", alpha, (
        f"pull {pull:g} towards the starting weights over {train.steps} steps: {b} fit, "
        "L2-SP keeps what already fits" if alpha else
        "off: L2 beats L2-SP for a dissimilar target" if start.pretrained else
        "off: L2-SP needs transferred weights")))
    wd = max(train.weight_decay, MIN_L2) if b == "low" and start.pretrained else train.weight_decay
    out.append(Advice("train.weight_decay", wd, (
        f"plain L2 (at least {MIN_L2:g}) regularises a dissimilar target" if b == "low"
        and start.pretrained else "the config's L2, beside L2-SP on the transferred weights"
        if alpha else "the config's L2")))
    return out


def _reinit(s: float, start: Start) -> Advice:
    if not start.pretrained or not start.image_layers:
        why = ("nothing transferred to re-initialise" if not start.pretrained
               else "the backbone declares no image-tower blocks")
        return Advice("model.reinit_last", 0, why)
    step = math.ceil(start.image_layers / 12)
    n = 0 if s >= LOW_FIT else step if s >= VERY_LOW_FIT else 2 * step
    n = min(n, start.image_layers - 1)  # keep at least one transferred block
    why = (f"re-initialise the top {n} of {start.image_layers} image blocks: low fit, their "
           "features are specific to the source" if n else
           "keep every transferred block: the features fit well enough" if s >= LOW_FIT else
           "a single-block tower: re-initialising it would transfer nothing")
    return Advice("model.reinit_last", n, why)


def _freeze(b: str, start: Start, train: TrainConfig) -> Advice:
    keep = [f for f in train.freeze if not re.fullmatch(r"image:\d+", f)]  # the user's others
    n = start.image_layers // 4 if b == "high" and start.pretrained and start.image_layers else 0
    value = [f"image:{n}"] + keep if n else keep
    why = (f"freeze the image embeddings and lowest {n} blocks: high fit, they need no "
           "re-training" if n else "train every image block: " + (
               "the start is not pretrained" if not start.pretrained else
               "the tower is too shallow to freeze a quarter" if b == "high" else
               f"{b} fit, the lower blocks still need to adapt"))
    return Advice("train.freeze", value, why)


def _layer_decay(b: str, start: Start, train: TrainConfig) -> Advice:
    if not start.pretrained:
        return Advice("train.layer_decay", 1.0, "off: nothing transferred to protect")
    if not start.depths_declared:
        return Advice("train.layer_decay", train.layer_decay,
                      "the config's: some parameters have no declared depth")
    value = LAYER_DECAY[b]
    why = (f"lower learning rates in lower layers ({value:g} per block): {b} fit" if value < 1
           else "off: low fit, every layer needs to move")
    return Advice("train.layer_decay", value, why)


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def set_fragments(advice: Sequence[Advice]) -> list[str]:
    """``key=value`` items for ``vlcofit train CONFIG --set ...`` (values as YAML)."""
    return [f"{a.key}={_yaml(a.value)}" for a in advice]


def _yaml(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))  # a JSON list is a YAML flow sequence
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exp = text.partition("e")
        return f"{mantissa}.0e{exp}" if e and "." not in mantissa else text  # YAML 1.1 float
    return str(value)


# --------------------------------------------------------------------------- the model

def start_of(model) -> Start:
    towers = model.backbone.tower_names()
    layers = model.backbone.num_layers("image") if "image" in towers else None
    declared = all(depth_of(model, n) is not None for n, p in model.named_parameters()
                   if p.requires_grad)
    # the image side decides: a loaded text encoder beside a random image tower transfers
    # nothing to re-initialise, freeze or pull back to
    return Start(model.image_tower_loaded(), layers, declared)


def check_advice(cfg: ExperimentConfig, model, fragments: Sequence[str]) -> ExperimentConfig:
    """Apply ``fragments`` to ``cfg`` as ``--set`` would and to ``model`` as training would
    (re-initialise, freeze, optimizer groups); returns the advised config."""

    advised = from_dict(ExperimentConfig, apply_overrides(to_dict(cfg), list(fragments)),
                        "advice")
    if advised.model.reinit_last:
        model.reinit_last(advised.model.reinit_last)
    apply_freeze(model, advised.train.freeze)
    param_groups(model, model.new_parameter_names(), advised.train)
    return advised


# --------------------------------------------------------------------------- the command

def advise(cfg: ExperimentConfig, out: Path, dataset_names: Sequence[str] | None = None,
           cache_dir: Path | None = None, max_per_class: int | None = None) -> dict:
    """Measure the fit of ``cfg``'s starting weights on its training datasets, recommend
    transfer settings, write ``<out>/advice.json`` (main process) and return its content.
    Collective under ``accelerate launch``. ``cache_dir``: the feature cache (default
    ``<out>/features``); ``max_per_class``: see :func:`vlcofit.experiment.fit.measure_fit`."""

    out = Path(out)
    names = fit_datasets(cfg, dataset_names)
    if not names:  # before any model is built or video decoded
        asked = list(dataset_names) if dataset_names is not None else list(
            cfg.train.datasets or cfg.datasets)
        raise InputError(f"advise: no dataset to measure the fit on: "
                         f"{', '.join(f'{n} (task: {cfg.datasets[n].task})' for n in asked)}; "
                         f"fit measures need a single-label classification dataset")
    accelerator = make_accelerator(cfg, None)
    labels = build_labels(cfg)
    weights = checkpoint.resolve(cfg.model.init_from) if cfg.model.init_from else None
    model = for_inference(accelerator, starting_model(cfg, labels, weights))
    base = accelerator.unwrap_model(model)
    cache = FeatureCache(cache_dir if cache_dir is not None else out / "features")
    measures = measure_fit(cfg, accelerator, model, labels, names, cache,
                           max_per_class=max_per_class)
    s, per, used = fit_score(measures, names)
    start = start_of(base)
    advice = recommend(s, start, cfg.train)
    fragments = set_fragments(advice)
    with torch.no_grad():
        check_advice(cfg, base, fragments)
    result = {"measures": measures, "fit_score": s, "fit_band": band(s),
              "fit_scores": per, "score_from": used, "start": dataclasses.asdict(start),
              "recommendations": [dataclasses.asdict(a) for a in advice], "set": fragments}
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "advice.json").write_text(json.dumps(result, indent=1))
    accelerator.wait_for_everyone()
    return result


def format_advice(result: dict, config: str = "CONFIG", sets: Sequence[str] = ()) -> str:
    """Two tables (measure | value; recommendation | value | why) and the train command."""
    rows = [("measure", "value")] + [(k, f"{v:.4g}") for k, v in result["measures"].items()]
    sources = ", ".join(f"{d}: {m}" for d, m in result["score_from"].items())
    rows.append(("fit score", f"{result['fit_score']:.3f} ({result['fit_band']}; {sources})"))
    recs = [("recommendation", "value", "why")] + [
        (r["key"], _yaml(r["value"]), r["why"]) for r in result["recommendations"]]
    return "\n\n".join([text_table(rows), text_table(recs),
                        train_command(config, sets, result["set"])])


def train_command(config: str, sets: Sequence[str], fragments: Sequence[str]) -> str:
    """``vlcofit train CONFIG`` with the user's ``--set`` items (the measured start, e.g.
    ``model.init_from``, must come along) and then the advice's, shell-quoted. A user item
    whose key the advice sets is left out: the advice was computed from its value."""
    advised = {f.partition("=")[0] for f in fragments}
    items = [s for s in sets if s.partition("=")[0].strip() not in advised] + list(fragments)
    return "vlcofit train " + shlex.quote(config) + "".join(
        f" \\\n    --set {shlex.quote(f)}" for f in items)

