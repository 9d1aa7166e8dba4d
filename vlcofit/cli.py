"""`vlcofit` command line: a thin layer over the library.

Input errors print one line naming the file/field and exit 2; bugs keep their traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .errors import InputError


def _print_table(metrics: dict[str, float], title: str) -> None:
    width = max((len(k) for k in metrics), default=10)
    print(f"\n{title}")
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  --------")
    for key, value in metrics.items():
        print(f"{key:<{width}}  {value:8.2f}" if isinstance(value, float) else f"{key:<{width}}  {value}")


def cmd_demo(args) -> None:
    from .runs import run_demo
    metrics, run_dir = run_demo(Path(args.out), args.set, fresh=not args.keep)
    _print_table(metrics, "demo: synthetic motion classes (chance = 12.5 % top-1)")
    print(f"\nrun folder: {run_dir}")


def cmd_train(args) -> None:
    from .config import load_experiment
    from .train import train
    cfg = load_experiment(args.config, args.set)
    metrics = train(cfg, resume=args.resume)
    if _is_main():
        _print_table(metrics, "final evaluation")
        print(f"\nrun folder: {cfg.output_dir}")


def cmd_eval(args) -> None:
    from .config import load_experiment
    from .runs import evaluate_checkpoint
    overrides = list(args.set) + ([f"eval.split={args.split}"] if args.split else [])
    cfg = load_experiment(args.config, overrides)
    out = Path(args.out) if args.out else Path(args.checkpoint) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_checkpoint(cfg, args.checkpoint, out)
    if _is_main():
        _print_table(metrics, f"evaluation ({cfg.eval.split})")
        print(f"\nper-class accuracy and metrics: {out}")


def cmd_zero_shot(args) -> None:
    from .config import ModelConfig
    from .runs import zero_shot
    model = ModelConfig(backbone=args.backbone, name=args.model, pretrained=args.pretrained,
                        temporal="mean", cache_dir=args.cache_dir)
    out = Path(args.out) if args.out else None
    metrics = zero_shot(model, args.data, args.prompts, args.templates, split=args.split,
                        weights=args.weights, num_frames=args.frames, batch_size=args.batch_size,
                        out=out)
    if _is_main():
        _print_table(metrics, "zero-shot")
        if out:
            print(f"\nresults: {out}")


def cmd_ava_eval(args) -> None:
    from .metrics.ava import evaluate_files
    result = evaluate_files(args.labelmap, args.groundtruth, args.detections, args.exclusions)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


def cmd_list(args) -> None:
    from .resources import KINDS, list_resources
    for kind in KINDS:
        print(f"{kind}: {', '.join(list_resources(kind)) or '-'}")


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlcofit", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    set_help = "override a config value, e.g. --set train.steps=100 (repeatable)"

    d = sub.add_parser("demo", help="generate synthetic videos, train and evaluate a tiny model")
    d.add_argument("--out", default="runs/demo", help="folder for the data and the run")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    d.add_argument("--keep", action="store_true", help="keep an existing demo run (resume it)")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train from an experiment config")
    t.add_argument("config", help="experiment config: path or shipped name (vlcofit list)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue the run in output_dir (or from the given checkpoint folder)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    e.add_argument("config", help="experiment config (a run folder's config.yaml works)")
    e.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder (latest)")
    e.add_argument("--split", choices=["train", "val", "test"], default=None)
    e.add_argument("--out", default=None, help="output folder (default: <checkpoint>/eval)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    e.set_defaults(func=cmd_eval)

    z = sub.add_parser("zero-shot", help="score labelled videos against any prompt file")
    z.add_argument("--model", required=True, help="open_clip architecture / model JSON, or HF id/folder")
    z.add_argument("--backbone", choices=["open_clip", "hf"], default="open_clip")
    z.add_argument("--pretrained", default=None, help="open_clip pretrained tag or local weights file")
    z.add_argument("--weights", default=None, help="a vlcofit checkpoint or run folder to load")
    z.add_argument("--data", required=True, help="dataset card, or a path,label CSV manifest")
    z.add_argument("--split", default="val")
    z.add_argument("--prompts", required=True, help="class-name prompt file (path or shipped name)")
    z.add_argument("--templates", default=None, help="template file (default: the card's, or text4vis)")
    z.add_argument("--frames", type=int, default=8, help="frames per clip for a manifest")
    z.add_argument("--batch-size", type=int, default=8)
    z.add_argument("--cache-dir", default=None)
    z.add_argument("--out", default=None, help="write results JSON here")
    z.set_defaults(func=cmd_zero_shot)

    a = sub.add_parser("ava-eval", help="official AVA frame-mAP@0.5 of a detections CSV")
    a.add_argument("--labelmap", required=True)
    a.add_argument("--groundtruth", required=True)
    a.add_argument("--detections", required=True)
    a.add_argument("--exclusions", default=None)
    a.add_argument("--out", default=None, help="also write the JSON here")
    a.set_defaults(func=cmd_ava_eval)

    ls = sub.add_parser("list", help="list shipped prompt files, templates and configs")
    ls.set_defaults(func=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("VLCOFIT_LOG", "WARNING").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except InputError as e:
        print(f"vlcofit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlcofit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
