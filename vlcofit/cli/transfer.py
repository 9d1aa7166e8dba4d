"""The transfer commands of the CLI (vlcofit.cli.main holds the rest): sweep, compare, advise."""
from __future__ import annotations

from pathlib import Path

from ..data.mixture import SCHEDULES
from ..experiment import load_experiment
from ..protocols.advise import advise, format_advice
from ..protocols.sweep import format_table, sweep
from .args import int_values, is_main_process


def cmd_sweep(args) -> None:
    seeds = int_values(args.seeds, "--seeds") if args.seeds else None
    out = Path(args.out)
    report = sweep(args.config, args.set, out, grid=args.grid, seeds=seeds)
    if is_main_process():
        print(format_table(report))
        print(f"sweep: {out / 'sweep.md'}, {out / 'sweep.json'}, {out / 'sweep.png'}")


def cmd_compare(args) -> None:
    """The sweep over train.schedule: co-finetuning vs the sequential transfer baseline."""
    out = Path(args.out)
    report = sweep(args.config, args.set, out, seeds=int_values(args.seeds, "--seeds"),
                   arms={s: (f"train.schedule={s}",) for s in SCHEDULES})
    if is_main_process():
        print(format_table(report))
        print(f"comparison: {out / 'sweep.md'}, {out / 'sweep.png'}")


def cmd_advise(args) -> None:
    cfg = load_experiment(args.config, args.set)
    out = Path(args.out)
    result = advise(cfg, out, args.datasets or None, max_per_class=args.max_per_class)
    if is_main_process():
        print(format_advice(result, args.config, args.set))
        print(f"\nadvice: {out / 'advice.json'}")


def add_transfer_commands(sub, set_help: str, int_list, positive_int) -> None:
    """sweep, compare, advise."""
    s = sub.add_parser("sweep", help="every setting x seed of a config: table, JSON and plot",
                       epilog="settings: --grid KEY=V1,V2 (repeatable: the cartesian product) or "
                              "the config's sweep.arms; transfer after each run: sweep.probe, "
                              "sweep.finetune. A finished setting is not re-run.")
    s.add_argument("config", help="experiment config (name or path)")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values of one key, e.g. --grid train.l2sp=0,1e-3,1e-2 (repeatable)")
    s.add_argument("--seeds", type=int_list, default=None,
                   help="comma-separated seeds (default: the config's sweep.seeds, 0,1,2)")
    s.add_argument("--out", default="runs/sweep", help="folder for all runs and the report")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    s.set_defaults(func=cmd_sweep)

    c = sub.add_parser("compare", help="co-finetuning vs the sequential transfer baseline "
                                       "(the sweep over train.schedule)")
    c.add_argument("config", help="experiment config with a mixture and train.downstream")
    c.add_argument("--seeds", type=int_list, default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    c.add_argument("--out", default="runs/compare", help="folder for all runs and the comparison")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    c.set_defaults(func=cmd_compare)

    a = sub.add_parser("advise", help="fit of the starting weights to the training data, and the "
                                      "transfer settings it suggests (--set fragments)")
    a.add_argument("config", help="experiment config whose start (model.pretrained / init_from) "
                                  "and training datasets are measured")
    a.add_argument("--datasets", nargs="*", default=None, help="measure only these datasets")
    a.add_argument("--max-per-class", type=positive_int, default=None,
                   help="training videos a class measured (default: all)")
    a.add_argument("--out", default="runs/advise", help="folder for advice.json and its features")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    a.set_defaults(func=cmd_advise)
