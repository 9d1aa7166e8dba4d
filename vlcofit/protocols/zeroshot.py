"""Zero-shot protocols: score labelled videos against any prompt file's class names.

Video embeddings are computed once (or read from the feature cache, :mod:`vlcofit.eval.cache`) and
then scored under each protocol and template mode:

- ``full``: all classes of the prompt file.
- ``half``: ``draws`` random class subsets of ``fraction`` (50 %) of the classes, drawn with
  ``numpy.random.default_rng(seed)`` (one generator, ``draws`` calls of ``choice`` without
  replacement, each subset sorted); reported as mean ± sample std (ddof=1, :mod:`vlcofit.utils.stats`). The subsets
  drawn are written to the JSON.
- a split file (``prompts/splits/<name>.txt`` or a path): the classes it names, e.g. the three
  Kinetics-600 novel-class splits (``k600-novel`` = all three, with their mean ± std) or the
  base-to-novel splits (``base2novel`` = ``<prompts>_base`` and ``<prompts>_novel`` of the prompt
  file, with the harmonic mean of their top-1).

A subset protocol keeps only the videos whose class is in the subset and ranks them among the
subset's classes only. Template modes: ``ensemble`` (every template of the file, averaged as in
:func:`vlcofit.models.text.class_embeddings`) and ``single`` (template ``template_index``).

Metric keys: ``<dataset>/<metric>`` for the full protocol with the template ensemble, else
``<dataset>/<protocol>[/single]/<metric>``; accuracies in %.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config.schema import DatasetCard, ExperimentConfig, ModelConfig
from ..errors import InputError
from ..eval.cache import FeatureCache, cached_features, default_cache_dir, model_fingerprint
from ..eval.classification import classification_report, view_scores
from ..experiment import build_dataset, load_card
from ..metrics.classification import accuracy_metrics
from ..models.prepared import for_inference
from ..models.video import build_model
from ..run import checkpoint
from ..run.model import check_architecture, load_run_model, relabel, require_text_head, run_dir_of
from ..tasks import task_of
from ..text.prompts import (ClassList, read_class_list, read_class_subset, read_label_map,
                            read_templates, renamed_classes)
from ..train.accelerator import make_accelerator
from ..utils.resources import find, list_resources
from ..utils.stats import STD, mean_std
from ..utils.tables import text_table

logger = logging.getLogger(__name__)

K600_NOVEL = ("k600_novel_split1", "k600_novel_split2", "k600_novel_split3")
TEMPLATE_MODES = ("ensemble", "single")


@dataclass(frozen=True)
class Protocol:
    """One way of choosing the classes to score: ``full``, ``half`` or ``split`` (a file)."""
    kind: str
    name: str
    path: str | None = None  # split file (name or path) for kind "split"
    group: str | None = None  # split files reported together (mean ± std / harmonic mean)


def parse_protocols(specs: list[str] | tuple[str, ...], prompts: str | Path) -> list[Protocol]:
    """``full``, ``half``, ``k600-novel``, ``base2novel`` or a split file (``split:`` optional);
    entries may be comma-separated."""
    out: list[Protocol] = []
    for spec in (s.strip() for item in specs for s in str(item).split(",")):
        if not spec:
            continue
        if spec in ("full", "half"):
            out.append(Protocol(spec, spec))
        elif spec in ("k600-novel", "k600_novel"):
            out += [Protocol("split", n, n, group="k600_novel") for n in K600_NOVEL]
        elif spec == "base2novel":
            stem = Path(str(prompts)).stem
            names = [f"{stem}_base", f"{stem}_novel"]
            missing = [n for n in names if n not in list_resources("splits")]
            if missing:
                raise InputError(f"--protocol base2novel: no shipped split {missing[0]!r} for the "
                                 f"prompt file {prompts}; pass the base and novel split files")
            out += [Protocol("split", n, n, group=f"{stem}_base2novel") for n in names]
        else:
            path = spec.removeprefix("split:")
            try:
                find("splits", path)
            except InputError as err:
                raise InputError(f"--protocol {spec!r}: not full, half, k600-novel or base2novel, "
                                 f"nor a split file ({err})") from None
            out.append(Protocol("split", Path(path).stem, path))
    if not out:
        raise InputError("--protocol: no protocol given (full, half, k600-novel, base2novel or a "
                         "split file)")
    return list(dict.fromkeys(out))


def check_protocols(protocols: list[Protocol], classes: ClassList, half_draws: int,
                    half_seed: int, half_fraction: float) -> None:
    """Every protocol scorable, before any video is decoded: its split files read against the
    prompt file, its half-class draws possible, at least 2 classes to rank (1 is always right)."""
    for p in protocols:
        if p.kind == "split":
            size, what = len(read_class_subset(p.path, classes)), f"the split file {p.path}"
        elif p.kind == "half":
            size = len(draw_class_subsets(len(classes), half_draws, half_seed, half_fraction)[0])
            what = f"each half-class draw of {classes.path}"
        else:
            size, what = len(classes), f"the prompt file {classes.path}"
        if size < 2:
            raise InputError(f"--protocol {p.name}: {what} leaves {size} class to rank among, and "
                             f"a choice among 1 class is always right; give at least 2 classes")


def draw_class_subsets(num_classes: int, draws: int, seed: int,
                       fraction: float = 0.5) -> list[list[int]]:
    """``draws`` sorted random subsets of ``round(fraction * num_classes)`` class indices,
    deterministic for ``seed`` (numpy ``default_rng(seed)``)."""
    size = int(round(fraction * num_classes))
    if draws < 1 or not 1 <= size <= num_classes:
        raise InputError(f"half-class protocol: cannot draw {draws} subsets of {size} of "
                         f"{num_classes} classes")
    rng = np.random.default_rng(seed)
    return [sorted(int(i) for i in rng.choice(num_classes, size=size, replace=False))
            for _ in range(draws)]


def subset_metrics(model, emb: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                   text: torch.Tensor, subset: list[int]) -> dict[str, float]:
    """Accuracy of the videos of ``subset``'s classes, ranked among those classes only.

    ``emb`` [N, V, E], ``labels`` [N], ``valid`` [N], ``text`` [C, E] (all classes).
    """
    position = torch.full((text.shape[0],), -1, dtype=torch.long)
    position[torch.tensor(subset, dtype=torch.long)] = torch.arange(len(subset))
    keep = valid & (position[labels] >= 0)
    scores = view_scores(model, emb[keep], text=text[subset])
    metrics, _ = accuracy_metrics(scores, position[labels[keep]])
    return {k: float(v) for k, v in metrics.items()}


@dataclass
class ZeroShotResult:
    """Rows of the result table (one per protocol x template mode) and the flat metrics."""
    dataset: str
    rows: list[dict] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**self.info, "dataset": self.dataset, "std": STD, "rows": self.rows,
                "metrics": self.metrics}


def _row_prefix(dataset: str, protocol: str, mode: str) -> str:
    parts = [dataset] + ([protocol] if protocol != "full" else []) + (
        ["single"] if mode == "single" else [])
    return "/".join(parts)


def score_protocols(model, feats: dict[str, torch.Tensor], classes: ClassList,
                    texts: dict[str, torch.Tensor], protocols: list[Protocol], dataset: str,
                    half_draws: int = 10, half_seed: int = 0, half_fraction: float = 0.5,
                    out_dir: Path | None = None) -> ZeroShotResult:
    """Score cached embeddings under every protocol and template mode.

    ``feats``: ``emb`` [N, V, E], ``label`` [N], ``valid`` [N]; ``texts``: template mode ->
    class embeddings [C, E] of all ``classes``.
    """
    result = ZeroShotResult(dataset)
    emb, labels, valid = feats["emb"], feats["label"], feats["valid"]
    subsets = {p.name: read_class_subset(p.path, classes) for p in protocols if p.kind == "split"}
    draws = (draw_class_subsets(len(classes), half_draws, half_seed, half_fraction)
             if any(p.kind == "half" for p in protocols) else [])
    for mode, text in texts.items():
        groups: dict[str, list[tuple[str, float]]] = {}
        for p in protocols:
            prefix = _row_prefix(dataset, p.name, mode)
            row = {"protocol": p.name, "templates": mode, "key": prefix}
            if p.kind == "full":
                scores = view_scores(model, emb, text=text)
                m = classification_report(dataset, scores, labels, valid, classes,
                                          out_dir if mode == "ensemble" else None)
                m = {k.split("/", 1)[1]: v for k, v in m.items()}
                row.update(classes=len(classes), videos=int(m["count"]), **m)
            elif p.kind == "half":
                per = [subset_metrics(model, emb, labels, valid, text, s) for s in draws]
                row.update(classes=len(draws[0]), videos=float(np.mean([r["count"] for r in per])),
                           draws=len(draws), seed=half_seed, subsets=draws)
                for metric in ("top1", "top5", "mean_class_acc"):
                    row[metric], row[f"{metric}_std"] = mean_std([r[metric] for r in per])
            else:
                m = subset_metrics(model, emb, labels, valid, text, subsets[p.name])
                row.update(classes=len(subsets[p.name]), videos=int(m["count"]), **m,
                           file=str(p.path), subset=subsets[p.name])
                groups.setdefault(p.group or "", []).append((p.name, m["top1"]))
            result.rows.append(row)
        result.rows += _group_rows(groups, dataset, mode)
    for row in result.rows:
        for metric in ("top1", "top1_std", "top5", "top5_std", "mean_class_acc",
                       "mean_class_acc_std", "count", "unreadable", "hm"):
            if metric in row:
                result.metrics[f"{row['key']}/{metric}"] = float(row[metric])
    return result


def _group_rows(groups: dict[str, list[tuple[str, float]]], dataset: str, mode: str) -> list[dict]:
    """Summary rows of split groups: mean ± std (K600 novel) or the base/novel harmonic mean."""
    rows = []
    for group, members in groups.items():
        if not group or len(members) < 2:
            continue
        key = _row_prefix(dataset, group, mode)
        values = [v for _, v in members]
        if group.endswith("_base2novel"):
            base, novel = values[0], values[1]
            hm = 2 * base * novel / (base + novel) if base + novel > 0 else 0.0
            rows.append({"protocol": group, "templates": mode, "key": key, "hm": hm,
                         "top1": hm, "members": [n for n, _ in members]})
        else:
            mean, std = mean_std(values)
            rows.append({"protocol": group, "templates": mode, "key": key, "top1": mean,
                         "top1_std": std, "members": [n for n, _ in members]})
    return rows


def manifest_card(path: str, num_frames: int, prompts: str, templates: str) -> DatasetCard:
    """An inline card for a bare ``path,label`` CSV (paths relative to the CSV's folder)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--data {path}: neither a dataset card nor a manifest file")
    return DatasetCard(name=p.stem, format="csv", root=str(p.parent), val=p.name, prompts=prompts,
                       templates=templates, num_frames=num_frames)


def resolve_card(data: str, prompts: str, templates: str | None, num_frames: int) -> DatasetCard:
    """``data``: a dataset card (shipped name or .yaml path) or a ``path,label`` CSV manifest."""
    if data.endswith((".yaml", ".yml")) or not Path(data).is_file():
        card = load_card(data)
        if not task_of(card).has_classes:  # e.g. captions: scored by `vlcofit eval` (retrieval)
            raise InputError(f"--data {data}: a {card.task} dataset has no classes to score "
                             "zero-shot; evaluate it with `vlcofit eval`")
        # the videos' labels are read against --prompts, at the fine level the annotation names
        return dataclasses.replace(card, prompts=prompts, templates=templates or card.templates,
                                   granularity="fine", coarse=None, coarse_prompts=None)
    return manifest_card(data, num_frames, prompts, templates or "text4vis")


def load_scoring_model(model_cfg: ModelConfig | None, classes: ClassList,
                       templates: tuple[str, ...], weights: str | None, seed: int = 0
                       ) -> tuple[object, ModelConfig]:
    """A VideoCLIP scoring ``classes`` and the model config it was built from.

    ``weights`` (a run or checkpoint): the run's own model (:mod:`vlcofit.run.model`; a given
    ``model_cfg`` must name the same backbone). Else the bare model ``model_cfg``; random
    initialisation is seeded so the same call gives the same model (and hits the cache)."""
    if weights:
        run = load_run_model(weights)
        require_text_head(run, "zero-shot")
        relabel(run.model, classes.names, [templates] * len(classes), weights)
        if model_cfg is not None:
            check_architecture(run.cfg.model, model_cfg, weights, "--model/--backbone",
                               keys=("backbone", "name"))
        return run.model, run.cfg.model
    if model_cfg is None:
        raise InputError("zero-shot: give --model (a bare CLIP) or --weights (a vlcofit run)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_cfg, classes.names, [templates] * len(classes))
    return model, model_cfg


def _cache_for(cache: str | Path | None, weights: str | None) -> FeatureCache | None:
    if cache is None or cache is False:
        return None
    if cache != "auto":
        return FeatureCache(cache)
    run = None
    if weights:
        run = run_dir_of(checkpoint.resolve(weights))
    return FeatureCache(default_cache_dir(run))


def run_zero_shot(model_cfg: ModelConfig | None, data: str, prompts: str, templates: str | None = None,
                  split: str = "val", weights: str | None = None, num_frames: int = 8,
                  batch_size: int = 8, num_workers: int = 2, out: Path | None = None,
                  protocols: list[str] | tuple[str, ...] = ("full",),
                  template_modes: tuple[str, ...] = ("ensemble",), template_index: int = 0,
                  half_draws: int = 10, half_seed: int = 0, half_fraction: float = 0.5,
                  cache: str | Path | None = "auto", label_map: str | None = None
                  ) -> ZeroShotResult:
    """Zero-shot evaluation under ``protocols`` (see the module docstring).

    ``data``: a dataset card (its labels must be names or indices of ``prompts``) or a
    ``path,label`` CSV manifest. ``weights``: a vlcofit checkpoint or run folder. ``cache``:
    a feature-cache folder, ``"auto"`` (``<run>/features`` or ``~/.cache/vlcofit/features``)
    or None (no cache). ``out``: write the JSON here (per-class CSV beside it).
    ``label_map``: the data's labels renamed before they are matched against ``prompts``
    (:func:`vlcofit.text.prompts.read_label_map`: a file or comma-separated ``old=new`` pairs).
    """
    card = resolve_card(data, prompts, templates, num_frames)
    classes = read_class_list(card.prompts)
    labelled = classes if not label_map else renamed_classes(
        classes, read_label_map(label_map), f"--label-map {label_map}")
    tmpl = read_templates(card.templates)
    chosen = parse_protocols(protocols, card.prompts)
    check_protocols(chosen, classes, half_draws, half_seed, half_fraction)
    bad = [m for m in template_modes if m not in TEMPLATE_MODES]
    if bad or not template_modes:
        raise InputError(f"template mode must be ensemble or single, got {bad or 'none'}")
    if not 0 <= template_index < len(tmpl):
        raise InputError(f"--template-index {template_index}: {card.templates} has {len(tmpl)} "
                         "templates")
    model, model_cfg = load_scoring_model(model_cfg, classes, tmpl, weights)
    cfg = ExperimentConfig(model=model_cfg, datasets={card.name: card}, output_dir="")
    accelerator = make_accelerator(cfg, None)
    model = for_inference(accelerator, model)
    base = accelerator.unwrap_model(model)
    ds = _labelled_dataset(card, split, labelled, base.backbone)
    store = _cache_for(cache, weights)
    model_id = model_fingerprint(base, model_cfg) if store is not None else ""
    feats, info = cached_features(accelerator, model, ds, batch_size, num_workers, store,
                                  model_id, desc=f"zero-shot {card.name}")
    texts = {"ensemble": base.embed_texts(classes.names, tmpl),
             "single": base.embed_texts(classes.names, [tmpl[template_index]])}
    texts = {m: texts[m] for m in template_modes}
    main = accelerator.is_main_process
    result = score_protocols(base, feats, classes, texts, chosen, card.name, half_draws,
                             half_seed, half_fraction, out.parent if out is not None and main else None)
    result.info = {"split": split, "prompts": str(classes.path), "templates": list(tmpl),
                   "template_file": card.templates, "template_index": template_index,
                   "label_map": label_map,
                   "model": dataclasses.asdict(model_cfg), "weights": weights,
                   "feature_cache": dataclasses.asdict(info)}
    if out is not None and main:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_json(), indent=2))
    return result


def _labelled_dataset(card: DatasetCard, split: str, classes: ClassList, backbone):
    """The split's videos, their labels read against ``classes``; a label that names no class
    says how to match renamed classes."""
    try:
        return build_dataset(card, split, classes, backbone, train=False, seed=0)
    except InputError as e:
        if "is not in the prompt file" not in str(e):
            raise
        raise InputError(f"{e}. Labels are matched by name against --prompts: rename them "
                         "with --label-map old=new[,old=new...] (or a file of old=new lines), "
                         "or write them as indices into the prompt file") from None


def zero_shot(model_cfg: ModelConfig, data: str, prompts: str, templates: str | None = None,
              split: str = "val", weights: str | None = None, num_frames: int = 8,
              batch_size: int = 8, num_workers: int = 2, out: Path | None = None,
              **protocol_options) -> dict[str, float]:
    """Flat ``"dataset/metric"`` metrics of :func:`run_zero_shot` (default: full protocol,
    template ensemble)."""
    return run_zero_shot(model_cfg, data, prompts, templates, split, weights, num_frames,
                         batch_size, num_workers, out, **protocol_options).metrics


def _cell(row: dict, metric: str) -> str:
    if metric not in row:
        return "-"
    std = row.get(f"{metric}_std")
    return f"{row[metric]:6.2f}" + (f" ± {std:5.2f}" if std is not None else "")


def format_table(result: ZeroShotResult) -> str:
    """The result rows as a text table (protocol, templates, classes, videos, top-1, top-5)."""
    head = ("protocol", "templates", "classes", "videos", "top1 (%)", "top5 (%)")
    lines = [head]
    for row in result.rows:
        name = row["protocol"] + (f" ({row['draws']} draws)" if "draws" in row else "")
        if "hm" in row:
            name += " harmonic mean"
        elif "members" in row:
            name += f" mean of {len(row['members'])}"
        videos = row.get("videos", "-")
        lines.append((name, row["templates"], str(row.get("classes", "-")),
                      f"{videos:.0f}" if isinstance(videos, (int, float)) else videos,
                      _cell(row, "top1"), _cell(row, "top5")))
    return (f"zero-shot: {result.dataset} ({result.info.get('split', '')}; ± = {STD})\n"
            + text_table(lines))
