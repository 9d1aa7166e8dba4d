"""`vlcofit sweep`: every setting x seed of one config, resumable, as a table, JSON and a plot.

A setting is a named list of ``--set`` overrides: the config's ``sweep.arms``, or a cartesian
``--grid key=v1,v2`` from the command line. After each run, transfer can be measured two ways
(Mahdisoltani et al. 2018's protocol): a frozen-encoder linear probe on other datasets
(``sweep.probe``) and a follow-up fine-tune initialised from the run (``sweep.finetune``);
and zero-shot on names never trained on (``sweep.zero_shot``).
``vlcofit compare`` is the sweep over ``train.schedule``. Every ± is the sample std over seeds.

Layout under ``out``: ``<setting>/seed<N>/`` (a run folder), ``.../finetune/``, ``.../probe/``;
``sweep.json``, ``sweep.md`` and ``sweep.png``. A finished run is not trained again, an
interrupted one resumes from its latest checkpoint. Every setting's config (and its fine-tune
and few-shot ones) is read, so checked, before the first run trains; an error in an override
names the ``--grid`` item or the config field (``sweep.arms.NAME[i]``) it came from.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from pathlib import Path

from ..config.checks import file_source, set_source
from ..data.annotations import granular_records
from ..errors import InputError
from ..eval.probe import linear_probe
from ..experiment import load_experiment, read_card_classes
from ..tasks import headline_metrics
from ..train.loop import train
from ..utils import resources
from ..utils.distributed import process_state
from ..utils.files import read_json
from ..utils.progress import RunProgress
from ..utils.stats import STD, mean_std
from .fewshot import probe_features
from .sweep_curves import curve_summary, few_shot_transfer, plot_curves, plot_few_shot, plot_sweep
from .zeroshot import run_zero_shot

logger = logging.getLogger(__name__)

_COUNTS = ("/count", "/unreadable", "/keyframes", "/train_videos")  # not metrics to average


def split_values(text: str) -> list[str]:
    """``"0,1e-3,[a,b]"`` -> ``["0", "1e-3", "[a,b]"]``: commas inside brackets or braces stay."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def _grid_axes(grid: list[str]) -> list[tuple[str, list[str]]]:
    """(--grid item, its ``key=value`` overrides) of every item; a malformed item, a value
    given twice or a key swept by two items is an InputError naming the item."""
    axes: list[tuple[str, list[str]]] = []
    keys: dict[str, str] = {}
    for item in grid:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise InputError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. train.l2sp=0,1e-3)")
        parsed = split_values(values)
        if any(not v for v in parsed):
            raise InputError(f"--grid {item!r}: an empty value")
        twice = next((v for i, v in enumerate(parsed) if v in parsed[:i]), None)
        if twice is not None:  # two settings of one name: one would silently replace the other
            raise InputError(f"--grid {item!r}: value {twice!r} is given twice")
        if key in keys:
            raise InputError(f"--grid {item!r}: {key} is swept already by --grid {keys[key]!r}")
        keys[key] = item
        axes.append((item, [f"{key}={v}" for v in parsed]))
    return axes


def grid_settings(grid: list[str]) -> dict[str, tuple[str, ...]]:
    """``["train.l2sp=0,1e-3", "train.layer_decay=1,0.75"]`` -> the cartesian product, each
    setting named by its values (``l2sp=0 layer_decay=1``)."""
    axes = [overrides for _, overrides in _grid_axes(grid)]
    return {" ".join(o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1]
                     for o in combo): combo for combo in itertools.product(*axes)}


def grid_labels(grid: list[str]) -> dict[str, str]:
    """Override -> who to blame for it in messages: ``--grid ITEM (value 'V')`` (an override
    belongs to one --grid item: no key is swept twice)."""
    return {o: f"--grid {item} (value {o.split('=', 1)[1]!r})"
            for item, overrides in _grid_axes(grid) for o in overrides}


def folder_name(setting: str, overrides: tuple[str, ...]) -> str:
    """A file-system-safe folder for a setting, unique for its overrides (resumes find it)."""
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", setting).strip("_")[:60] or "setting"
    return f"{slug}-{hashlib.sha1(' '.join(overrides).encode()).hexdigest()[:6]}"


def finished_metrics(run: Path) -> dict[str, float] | None:
    """Final metrics of a run that already completed (so an interrupted sweep resumes)."""
    info = run / "run.json"
    if info.is_file():
        data = read_json(info)  # corrupt: an InputError naming the file
        if data.get("end_time") and data.get("final_metrics"):
            return data["final_metrics"]
    return None


def train_or_resume(config: str, overrides: list[str], run: Path) -> dict[str, float]:
    """A run's final metrics: read when finished, else resumed or trained."""
    metrics = finished_metrics(run)
    if metrics is not None:
        logger.info("%s: finished earlier, not re-run", run)
        return metrics
    cfg = load_experiment(config, [*overrides, f"output_dir={run}"])
    return train(cfg, resume="latest" if (run / "checkpoints" / "latest").is_file() else None)


def probe_transfer(config: str, overrides: list[str], name: str, run: Path, seed: int) -> dict:
    """Frozen-encoder linear probe of ``run``'s encoder on dataset ``name`` (all its training
    videos; top-1 on its evaluation split), through few-shot's probe code."""

    cfg = load_experiment(config, [*overrides, f"train.datasets=[{name}]",
                                   f"eval.datasets=[{name}]", f"train.seed={seed}"])
    card = cfg.datasets[name]
    classes = read_card_classes(card)
    rows = list(range(len(granular_records(card, "train", classes))))
    feats = probe_features(cfg, name, run / "probe", rows, weights=str(run))
    return linear_probe(*feats, rows, len(classes), seed)


def _zero_shot_item(cfg, item: str) -> list[str]:
    parts = item.split(":")
    if len(parts) != 3 or parts[0] not in cfg.datasets or not all(parts):
        raise InputError(f"sweep.zero_shot: {item!r} is not DATASET:FILE:PROMPTS with DATASET in "
                         f"datasets ({', '.join(cfg.datasets)})")
    return parts


def zero_shot_transfer(config: str, overrides: list[str], item: str, run: Path) -> dict:
    """``sweep.zero_shot`` item "DATASET:FILE:PROMPTS": ``run`` scored zero-shot (the
    ``zero-shot`` command's code, protocol full) on FILE under DATASET's root against PROMPTS;
    keys ``zero_shot:<prompts>:<file stem>/<metric>``."""

    cfg = load_experiment(config, overrides)
    parts = _zero_shot_item(cfg, item)
    card = cfg.datasets[parts[0]]
    result = run_zero_shot(None, str(Path(card.root) / parts[1]), parts[2], card.templates,
                           weights=str(run), num_frames=card.num_frames,
                           batch_size=cfg.eval.batch_size, num_workers=cfg.train.num_workers,
                           cache=run / "features")
    return {f"zero_shot:{parts[2]}:{k}": v for k, v in result.metrics.items()}


def _one(config: str, overrides: list[str], arm: tuple[str, ...], seed: int, run: Path,
         spec) -> dict[str, float]:
    """One setting x seed: its run, then the transfer measures ``spec`` (SweepConfig) asks for."""
    seeded = [*overrides, *arm, f"train.seed={seed}"]
    metrics = dict(train_or_resume(config, seeded, run))
    for name in spec.probe:
        probe = probe_transfer(config, overrides, name, run, seed)
        metrics[f"probe:{name}/top1"] = probe["top1"]
    head = load_experiment(config, seeded).model.head
    if spec.zero_shot and head != "text":  # a linear head has rows only for its own classes
        logger.info("%s: a %s head scores no new class names: no zero-shot", run, head)
    else:
        for item in spec.zero_shot:
            metrics.update(zero_shot_transfer(config, overrides, item, run))
    if spec.few_shot:
        metrics.update(few_shot_transfer(config, overrides, arm, spec, run, seed))
    if spec.finetune:
        ft = train_or_resume(config, [*overrides, *spec.finetune, f"train.seed={seed}",
                                      f"model.init_from={run}"], run / "finetune")
        metrics.update({f"finetune:{k}": v for k, v in ft.items()})
    return metrics


def _set_by(config: str, overrides: list[str], key: str) -> str:
    """Who set config ``key``, for messages: the ``--set`` item, else the config file."""
    who, _ = set_source(file_source(str(resources.find("experiments", config))), overrides)(key)
    return who


def _item_labels(config: str, overrides: list[str], field: str,
                 items: tuple[str, ...]) -> dict[str, str]:
    """Override -> who to blame for it: ``FILE: FIELD[i] 'ITEM'`` (``--set ...: FIELD[i] ...``
    where a --set item gave the list)."""
    who = _set_by(config, overrides, field)
    return {item: f"{who}: {field}[{i}] {item!r}" for i, item in enumerate(items)}


def _relabel(message: str, labels: dict[str, str]) -> str:
    """``message`` with ``--set ITEM`` (config.py's blame for an override) replaced by the
    item's label where the sweep made the override from --grid or a config list: the user
    typed no such --set. Only a whole item (followed by ':' or ' with ') is replaced."""
    for item, label in labels.items():
        for written in (f"--set {item}", f"--set {item!r}"):
            message = re.sub(re.escape(written) + r"(?=:| with )", lambda _: label, message)
    return message


def _load_labelled(config: str, items: list[str], labels: dict[str, str]):
    """load_experiment, its errors naming --grid or the config list an override came from."""
    for item in items:
        if item in labels and "=" not in item:
            raise InputError(f"{labels[item]}: expected KEY=VALUE, e.g. train.lr=1e-4")
    try:
        return load_experiment(config, items)
    except InputError as e:
        raise InputError(_relabel(str(e), labels)) from None


def _check_seeds(seeds: list[int], who: str) -> None:
    if not seeds:
        raise InputError(f"{who}: no seeds given")
    twice = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    if twice is not None:  # the same run twice: its copy would pass for a second sample
        raise InputError(f"{who}: seed {twice} is given twice; each seed is one run, and a "
                         "repeated one is a copy, not another sample")


def _check_spec(cfg, spec) -> None:
    """The transfer stages' settings that need no run."""
    for name in spec.probe:
        if name not in cfg.datasets:
            raise InputError(f"sweep.probe: {name!r} is not in datasets ({', '.join(cfg.datasets)})")
    for item in spec.zero_shot:
        _zero_shot_item(cfg, item)
    if spec.few_shot is not None and spec.few_shot not in cfg.datasets:
        raise InputError(f"sweep.few_shot: {spec.few_shot!r} is not in datasets "
                         f"({', '.join(cfg.datasets)})")
    for key, needs in (("reach", "curve"), ("few_shot_set", "few_shot")):
        if getattr(spec, key) not in (None, ()) and getattr(spec, needs) is None:  # unread
            raise InputError(f"sweep.{key} is set but sweep.{needs} is not: set both, or drop "
                             f"sweep.{key}")


def _check_settings(config: str, overrides: list[str], settings: dict[str, tuple[str, ...]],
                    labels: dict[str, dict[str, str]], seed: int, spec) -> None:
    """Every arm's config (and its fine-tune and few-shot configs) read, so checked, before
    the first run trains: a bad value of a later arm must not cost the earlier arms' runs.
    ``labels``: per setting, its overrides' labels (for messages)."""
    few_shot = _item_labels(config, overrides, "sweep.few_shot_set", spec.few_shot_set)
    for setting, arm in settings.items():
        _load_labelled(config, [*overrides, *arm, f"train.seed={seed}"], labels[setting])
        if spec.few_shot:
            _load_labelled(config, [*overrides, *arm, *spec.few_shot_set,
                                   f"train.datasets=[{spec.few_shot}]",
                                   f"eval.datasets=[{spec.few_shot}]"],
                          {**labels[setting], **few_shot})
    if spec.finetune:
        _load_labelled(config, [*overrides, *spec.finetune, f"train.seed={seed}"],
                      _item_labels(config, overrides, "sweep.finetune", spec.finetune))


def _settings(config: str, overrides: list[str], grid: list[str] | None,
              arms: dict[str, tuple[str, ...]] | None, spec):
    """The settings to sweep (``arms``, else ``--grid``, else ``sweep.arms``) and, per
    setting, the labels of the overrides it adds (for messages)."""
    if arms:
        return arms, {s: {} for s in arms}
    if grid:
        settings, by_item = grid_settings(grid), grid_labels(grid)
        return settings, {s: by_item for s in settings}
    return dict(spec.arms), {name: _item_labels(config, overrides, f"sweep.arms.{name}", arm)
                             for name, arm in spec.arms.items()}


def sweep(config: str, overrides: list[str], out: Path, grid: list[str] | None = None,
          seeds: list[int] | None = None,
          arms: dict[str, tuple[str, ...]] | None = None) -> dict:
    """Train every setting (``arms``, else ``--grid``, else the config's ``sweep.arms``) x seed
    under ``out``, measure transfer as ``sweep.probe`` / ``sweep.finetune`` say, and summarise
    the final metrics (mean ± sample std over seeds). Returns the report (``sweep.json``).
    Every setting's config is checked before the first run trains."""
    config = str(config)
    cfg = load_experiment(config, overrides)
    spec = cfg.sweep
    settings, labels = _settings(config, overrides, grid, arms, spec)
    if not settings:
        raise InputError(f"{config}: nothing to sweep: give --grid KEY=V1,V2 or sweep.arms")
    _check_spec(cfg, spec)
    if seeds is not None:
        _check_seeds(list(seeds), f"--seeds {','.join(map(str, seeds))}")
    else:
        _check_seeds(list(spec.seeds), f"{_set_by(config, overrides, 'sweep.seeds')}: sweep.seeds")
    seeds = list(seeds if seeds is not None else spec.seeds)
    _check_settings(config, overrides, settings, labels, seeds[0], spec)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in settings}
    with RunProgress(len(settings) * len(seeds), process_state().is_main_process) as progress:
        for setting, arm in settings.items():
            for seed in seeds:
                progress.start(f"{setting}, seed {seed}")
                run = out / folder_name(setting, arm) / f"seed{seed}"
                runs[setting].append(_one(config, overrides, arm, seed, run, spec))
    return _report(config, overrides, out, settings, seeds, runs, spec)


def _report(config: str, overrides: list[str], out: Path, settings: dict, seeds: list[int],
            runs: dict[str, list[dict[str, float]]], spec) -> dict:
    """The runs' summary (mean ± std per setting and metric), written as sweep.json / .md /
    .png (and the curve and few-shot plots) by the main process."""
    keys = [k for k in dict.fromkeys(k for rs in runs.values() for r in rs for k in r)
            if not k.endswith(_COUNTS)]
    summary = {s: {k: dict(zip(("mean", "std"), mean_std([r.get(k, float("nan")) for r in rs])))
                   for k in keys} for s, rs in runs.items()}
    shown = _shown(config, overrides, spec, keys)
    report = {"config": str(config), "overrides": overrides, "seeds": seeds, "std": STD,
              "settings": {s: {"overrides": list(a), "folder": folder_name(s, a)}
                           for s, a in settings.items()},
              "shown": shown, "runs": runs, "summary": summary}
    if spec.curve:
        if spec.curve not in keys:
            raise InputError(f"sweep.curve: {spec.curve!r} is not among the runs' metrics "
                             f"({', '.join(keys)}); the runs are kept: fix it and run again")
        report["curve"] = {"metric": spec.curve, "reach": spec.reach, "settings": {
            s: curve_summary([out / folder_name(s, a) / f"seed{seed}" for seed in seeds],
                             spec.curve, spec.reach) for s, a in settings.items()}}
    if process_state().is_main_process:  # every process trained; one writes the report
        (out / "sweep.json").write_text(json.dumps(report, indent=2))
        (out / "sweep.md").write_text(format_table(report))
        plot_sweep(report, out / "sweep.png")
        if spec.curve:
            plot_curves(report["curve"]["settings"], spec.curve, spec.reach,
                        out / "sweep_curve.png")
        if spec.few_shot:
            plot_few_shot(report, out / "sweep_fewshot.png")
    return report


def _shown(config: str, overrides: list[str], spec, keys: list[str]) -> list[str]:
    """The metrics of the table and plot: ``sweep.metrics``, else each stage's headline ones."""
    if spec.metrics:
        missing = [k for k in spec.metrics if k not in keys]
        if missing:
            raise InputError(f"sweep.metrics: {', '.join(missing)} not among the runs' metrics "
                             f"({', '.join(keys)})")
        return list(spec.metrics)
    shown = headline_metrics(load_experiment(config, overrides))
    shown += [k for k in keys if k.startswith(("probe:", "few_shot:")) or
              (k.startswith("zero_shot:") and k.endswith("/top1"))]
    if spec.finetune:
        ft = load_experiment(config, [*overrides, *spec.finetune])
        shown += [f"finetune:{k}" for k in headline_metrics(ft)]
    return [k for k in dict.fromkeys(shown) if k in keys] or keys[:4]


def best_versus(report: dict, setting: str, metric: str) -> dict:
    """Is ``setting`` within one (sample) std of the best setting on ``metric``? The best is
    the highest mean; "within" means the two mean ± std intervals overlap."""
    summary = {s: m[metric] for s, m in report["summary"].items() if metric in m}
    best = max(summary, key=lambda s: summary[s]["mean"])
    a, b = summary[setting], summary[best]
    return {"metric": metric, "setting": setting, "mean": a["mean"], "std": a["std"],
            "best": best, "best_mean": b["mean"], "best_std": b["std"],
            "within_one_std": a["mean"] + a["std"] >= b["mean"] - b["std"]}

def format_table(report: dict) -> str:
    """One row per setting, one column per shown metric: mean ± std over the seeds."""
    shown, n = report["shown"], len(report["seeds"])
    spec = report.get("curve", {})
    curve, reach = spec.get("settings", {}), spec.get("reach")
    extra = [f"steps to {spec['metric']} >= {reach:g}"] if reach is not None else []
    lines = [f"| setting (mean ± {STD}, {n} seeds) | " + " | ".join(shown + extra) + " |",
             "| --- |" + " --- |" * len(shown + extra)]
    for setting, per in report["summary"].items():
        cells = [_cell(per.get(k)) for k in shown]
        if extra:
            steps = curve.get(setting, {}).get("steps_to_reach")
            last = (curve.get(setting, {}).get("steps") or ["?"])[-1]
            cells.append(str(steps) if steps is not None else f"not in {last}")
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(stat: dict | None) -> str:
    """mean ± std; "-" where a setting has no such metric (a linear head's zero-shot)."""
    if stat is None or stat["mean"] != stat["mean"]:  # NaN: absent from its runs
        return "-"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"
