"""`vlcofit` command line: a thin layer over the library.

Input errors print one line naming the file/field and exit 2; bugs keep their traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import get_args

from ..config.schema import SPLITS, BackboneKind, ClipSampling, Decoder, ModelConfig, TestCrops
from ..errors import InputError
from ..experiment import load_experiment
from ..models.notices import WeightsUnavailable
from ..protocols import fewshot, sweep, zeroshot
from ..protocols.evaluate import evaluate_run
from ..protocols.predict import format_predictions, load_predictor, predict_boxes, predict_videos
from ..protocols.zeroshot import TEMPLATE_MODES
from ..run.model import model_from_run, set_model_keys
from ..train.loop import train
from ..utils.distributed import collective_timeout_message, end_processes
from .args import SET_HELP, int_list, int_values, is_main_process, nonneg_int, positive_int
from .demos import DEMOS, SWEEP_DEMOS, run_demo, run_sweep_demo
from .tools import add_tool_commands
from .transfer import add_transfer_commands


def _print_table(metrics: dict[str, float], title: str) -> None:
    width = max((len(k) for k in metrics), default=10)
    print(f"\n{title}")
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  --------")
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:8.2f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


def cmd_demo(args) -> None:
    if args.which in SWEEP_DEMOS:
        report = run_sweep_demo(Path(args.out), args.set, args.which, fresh=not args.keep)
        print(sweep.format_table(report))
        check = report.get("advice_check")
        if check:
            print(f"advised setting: {check['mean']:.2f} ± {check['std']:.2f} {check['metric']}; "
                  f"best: {check['best']} {check['best_mean']:.2f} ± {check['best_std']:.2f}; "
                  f"within one std: {'yes' if check['within_one_std'] else 'no'}")
        print(f"\nsweep folder: {Path(args.out) / args.which} (sweep.md, sweep.json, sweep.png)")
        return
    metrics, run_dir = run_demo(Path(args.out), args.set, args.which, fresh=not args.keep)
    titles = {"classification": "demo: 8 synthetic motion classes (chance = 12.5 % top-1)",
              "localization": "demo: synthetic AVA-format localisation (frame-mAP@0.5, %)",
              "cofinetune": "demo: co-finetuning motion classification + localisation"}
    _print_table(metrics, titles[args.which])
    print(f"\nrun folder: {run_dir}")


def cmd_train(args) -> None:
    cfg = load_experiment(args.config, args.set)
    metrics = train(cfg, resume=args.resume)
    if is_main_process():
        _print_table(metrics, "final evaluation")
        print(f"\nrun folder: {cfg.output_dir}")


def cmd_eval(args) -> None:
    overrides = list(args.set) + ([f"eval.split={args.split}"] if args.split else [])
    cfg, metrics, out = evaluate_run(args.checkpoint, overrides, args.config, args.out)
    if is_main_process():
        _print_table(metrics, f"evaluation ({cfg.eval.split})")
        print(f"\nmetrics and per-class / per-query results: {out}")


def _model_config(args, default: str | None = None):
    """The bare model the flags name (None when --model is not given and has no default)."""
    if args.model is None and default is None:
        return None
    pretrained = None if (args.pretrained or "").lower() in ("", "none") else args.pretrained
    return ModelConfig(backbone=args.backbone, name=args.model or default, pretrained=pretrained,
                       temporal="mean", cache_dir=args.cache_dir)


def _feature_cache(args):
    return None if args.no_feature_cache else (args.feature_cache or "auto")


def _own_model_flags(command):
    """zero-shot and predict set a bare model with --pretrained / --model: hints name those."""
    def run(args) -> None:
        try:
            command(args)
        except WeightsUnavailable as e:
            raise e.passing({"pretrained": "--pretrained", "name": "--model"}) from None
    return run


def cmd_zero_shot(args) -> None:
    modes = TEMPLATE_MODES if args.template_mode == "both" else (args.template_mode,)
    out = Path(args.out) if args.out else None
    result = zeroshot.run_zero_shot(
        _model_config(args), args.data, args.prompts, args.templates, split=args.split,
        weights=args.weights, num_frames=args.frames, batch_size=args.batch_size,
        num_workers=args.workers, out=out, protocols=args.protocol or ["full"],
        template_modes=modes, template_index=args.template_index, half_draws=args.half_draws,
        half_seed=args.half_seed, cache=_feature_cache(args), label_map=args.label_map)
    if is_main_process():
        if args.json:
            print(json.dumps(result.to_json(), indent=2))
            return
        print(zeroshot.format_table(result))
        if out:
            print(f"\nresults: {out}")


def cmd_few_shot(args) -> None:
    cfg = load_experiment(args.config, args.set)
    probe_weights = args.probe_checkpoint
    if args.from_run:  # the run's architecture, starting from its weights
        cfg = dataclasses.replace(cfg, model=model_from_run(
            args.from_run, cfg.model, set_model_keys(args.set), "--set"))
        probe_weights = probe_weights or args.from_run
    shots = int_values(args.shots, "--shots")
    seeds = int_values(args.seed_list, "--seed-list") if args.seed_list else list(range(args.seeds))
    out = Path(args.out)
    result = fewshot.few_shot(cfg, shots, seeds, out, finetune=not args.probe_only,
                      probe=args.probe or args.probe_only, probe_weights=probe_weights,
                      splits_from=Path(args.splits) if args.splits else None,
                      splits_only=args.splits_only)
    if is_main_process():
        if result["summary"]:
            print(fewshot.format_table(result))
        print(f"\nsplit files: {out / 'splits'}\nresults: {out / 'fewshot.json'}"
              + (f", {result['plot']}" if result.get("plot") else ""))


def cmd_predict(args) -> None:
    predictor = load_predictor(
        args.checkpoint, _model_config(args, None if args.checkpoint else "ViT-B-16"),
        config=args.config,
        num_frames=args.frames, sampling=args.sampling, frame_stride=args.stride,
        clips=args.clips, crops=args.crops, decoder=args.decoder)
    if args.boxes:
        if args.videos:
            raise InputError("predict: with --boxes the videos come from the boxes file; "
                             "give no VIDEO arguments")
        entries = predict_boxes(predictor, args.boxes, args.labels, args.templates, args.top_k,
                                args.batch_size)
    else:
        entries = predict_videos(predictor, args.videos, args.labels, args.templates, args.top_k,
                                 args.batch_size, args.workers)
    if is_main_process():
        print(json.dumps(entries, indent=2) if args.json else format_predictions(entries))
    failed = [e for e in entries if "error" in e]
    if failed:
        what = "boxes" if args.boxes else "videos"
        raise InputError(f"{len(failed)} of {len(entries)} {what} could not be read, e.g. "
                         f"{failed[0]['video']}: {failed[0]['error']}")


def _add_model_args(p: argparse.ArgumentParser, default: str | None,
                    pretrained: str | None = None) -> None:
    p.add_argument("--model", default=None,
                   help="a bare CLIP: open_clip architecture / model JSON, or HF id/folder" +
                   (f" (default {default}" if default else " (required") +
                   " without a run; with a run it must agree with the run's model)")
    p.add_argument("--backbone", choices=get_args(BackboneKind), default="open_clip")
    p.add_argument("--pretrained", default=pretrained,
                   help="open_clip pretrained tag or local weights file" +
                   (f" (default {pretrained}; 'none' for random weights)" if pretrained else ""))
    p.add_argument("--cache-dir", default=None, help="where hub downloads go")


def _add_cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feature-cache", default=None,
                   help="feature-cache folder (default: <run>/features or ~/.cache/vlcofit/features)")
    p.add_argument("--no-feature-cache", action="store_true", help="neither read nor write cached features")


def _add_run_commands(sub) -> None:
    """demo, train, eval."""
    d = sub.add_parser("demo", help="generate synthetic videos, train and evaluate a tiny model")
    d.add_argument("which", nargs="?", default="classification",
                   choices=[*DEMOS, *SWEEP_DEMOS],
                   help="which built-in demo (default: classification); "
                        f"{', '.join(SWEEP_DEMOS)} are 3-seed sweeps (docs/)")
    d.add_argument("--out", default="runs/demo", help="folder for the data and the run")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    d.add_argument("--keep", action="store_true", help="keep an existing demo run (resume it)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train from an experiment config")
    t.add_argument("config", help="experiment config: path or shipped name (vlcofit list)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue the run in output_dir (or from the given checkpoint folder)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("config", nargs="?", default=None,
                   help="experiment config whose evaluation datasets to score (default: the "
                        "run's config.yaml); the model always comes from the run")
    e.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder (latest)")
    e.add_argument("--split", choices=SPLITS, default=None)
    e.add_argument("--out", default=None, help="output folder (default: <checkpoint>/eval)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    e.set_defaults(func=cmd_eval)


def _add_protocol_commands(sub) -> None:
    """zero-shot, few-shot."""
    z = sub.add_parser("zero-shot", help="score labelled videos against any prompt file, "
                       "under zero-shot protocols")
    _add_model_args(z, default=None)
    z.add_argument("--weights", default=None, help="a vlcofit checkpoint or run folder to load")
    z.add_argument("--data", required=True, help="dataset card, or a path,label CSV manifest")
    z.add_argument("--split", default="val")
    z.add_argument("--prompts", required=True, help="class-name prompt file (path or shipped name)")
    z.add_argument("--templates", default=None, help="template file (default: the card's, or text4vis)")
    z.add_argument("--label-map", default=None, metavar="FILE_OR_PAIRS",
                   help="rename the card's labels before they are matched against --prompts: "
                        "old=new pairs, comma-separated, or a file of old=new lines")
    z.add_argument("--protocol", action="append", default=[],
                   help="full (default), half (random 50%% class subsets), k600-novel, base2novel, "
                        "or a split file (prompts/splits name or path); repeatable or comma-separated")
    z.add_argument("--half-draws", type=positive_int, default=10, help="half-class subsets drawn (default 10)")
    z.add_argument("--half-seed", type=nonneg_int, default=0, help="seed of the half-class draws")
    z.add_argument("--template-mode", choices=[*TEMPLATE_MODES, "both"], default="ensemble",
                   help="mean over all templates, one template (--template-index), or both")
    z.add_argument("--template-index", type=nonneg_int, default=0, help="the template for --template-mode single")
    z.add_argument("--frames", type=positive_int, default=8, help="frames per clip for a manifest")
    z.add_argument("--batch-size", type=positive_int, default=8)
    z.add_argument("--workers", type=nonneg_int, default=2, help="data-loading processes")
    _add_cache_args(z)
    z.add_argument("--json", action="store_true", help="print the results as JSON")
    z.add_argument("--out", default=None, help="write results JSON here")
    z.set_defaults(func=_own_model_flags(cmd_zero_shot))

    f = sub.add_parser("few-shot", help="K-shot splits, fine-tuning and a linear probe per K and seed")
    f.add_argument("config", help="experiment config (its single training dataset is subsampled)")
    f.add_argument("--shots", type=int_list, default="2,4,8,16", help="K values, comma-separated (default 2,4,8,16)")
    f.add_argument("--seeds", type=positive_int, default=3, help="number of split seeds: 0..N-1 (default 3)")
    f.add_argument("--seed-list", type=int_list, default=None, help="explicit split seeds, comma-separated")
    f.add_argument("--out", default="runs/fewshot", help="folder for splits, runs and results")
    f.add_argument("--probe", action="store_true", help="also a frozen-encoder linear probe")
    f.add_argument("--probe-only", action="store_true", help="only the linear probe (no fine-tuning)")
    f.add_argument("--from", dest="from_run", default=None, metavar="RUN",
                   help="fine-tune (and probe) a trained run: its model config and weights "
                        "(run folder or checkpoint)")
    f.add_argument("--probe-checkpoint", default=None,
                   help="encoder weights for the probe (checkpoint or run folder; "
                        "default: --from, else the config's model)")
    f.add_argument("--splits", default=None,
                   help="folder of ready-made k{K}_seed{S}.csv split files to use instead of drawing")
    f.add_argument("--splits-only", action="store_true", help="write the split files and stop")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP)
    f.set_defaults(func=cmd_few_shot)


def _add_tool_commands(sub) -> None:
    """predict; sweep, compare, advise (vlcofit.cli.transfer); ava-eval, list, doctor
    (vlcofit.cli.tools)."""
    add_transfer_commands(sub, SET_HELP, int_list, positive_int)
    add_tool_commands(sub)
    r = sub.add_parser("predict", help="top-k labels for your own videos (or person boxes)",
                       epilog="--boxes CSV rows: video_path,time_sec,x1,y1,x2,y2 with coordinates "
                              "normalised to [0, 1] (x right, y down), paths relative to the CSV; "
                              "make one with any person detector (recipe: vlcofit/predict.py).")
    r.add_argument("videos", nargs="*", metavar="VIDEO", help="video files")
    r.add_argument("--labels", default=None,
                   help="label file, one name per line (default with --checkpoint: its classes)")
    r.add_argument("--templates", default=None, help="template file (default: the run's, or text4vis)")
    r.add_argument("--checkpoint", default=None, help="a vlcofit checkpoint or run folder")
    r.add_argument("--config", default=None, help="the checkpoint's config (default: its run's config.yaml)")
    _add_model_args(r, default="ViT-B-16", pretrained="openai")
    r.add_argument("--boxes", default=None,
                   help="localisation models: CSV of video_path,time_sec,x1,y1,x2,y2 (normalised)")
    r.add_argument("--top-k", type=positive_int, default=5)
    r.add_argument("--frames", type=positive_int, default=8, help="frames per clip (default 8)")
    r.add_argument("--sampling", choices=get_args(ClipSampling), default="tsn")
    r.add_argument("--stride", type=positive_int, default=4, help="frame stride for dense sampling")
    r.add_argument("--clips", type=positive_int, default=1, help="temporal views averaged (default 1)")
    r.add_argument("--crops", type=int, choices=get_args(TestCrops), default=1, help="spatial views (1 or 3)")
    r.add_argument("--decoder", choices=get_args(Decoder), default="pyav")
    r.add_argument("--batch-size", type=positive_int, default=8)
    r.add_argument("--workers", type=nonneg_int, default=0, help="data-loading processes")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.set_defaults(func=_own_model_flags(cmd_predict))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlcofit", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_run_commands, _add_protocol_commands, _add_tool_commands):
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("VLCOFIT_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
        end_processes()
    except InputError as e:
        print(f"vlcofit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlcofit: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        message = collective_timeout_message(e)
        if message is None:
            raise
        print(f"vlcofit: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
