"""The stand-alone tools of the CLI (vlcofit.cli.main holds the rest): ava-eval, list, doctor."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..metrics.ava import ACTIVITYNET_2019, CURRENT, PROTOCOLS, evaluate_files
from ..utils.resources import KINDS, list_resources
from .doctor import run_doctor


def cmd_ava_eval(args) -> None:
    result = evaluate_files(args.labelmap, args.groundtruth, args.detections, args.exclusions,
                            args.protocol)
    # APs in percent, as `vlcofit eval` reports them (the official tool prints fractions)
    result.update(mAP=100.0 * result["mAP"],
                  per_class={k: 100.0 * v for k, v in result["per_class"].items()})
    text = json.dumps({"protocol": args.protocol, "unit": "percent", **result}, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


def cmd_list(args) -> None:
    for kind in KINDS:
        print(f"{kind}: {', '.join(list_resources(kind)) or '-'}")


def cmd_doctor(args) -> None:
    if not run_doctor(quick=args.quick):
        raise InputError("doctor: some checks failed (lines marked FAIL above)")


def add_tool_commands(sub) -> None:
    """ava-eval, list, doctor."""
    a = sub.add_parser("ava-eval", help="official AVA frame-mAP@0.5 of a detections CSV, in "
                                        "percent (as `vlcofit eval` reports it)")
    a.add_argument("--labelmap", required=True)
    a.add_argument("--groundtruth", required=True)
    a.add_argument("--detections", required=True)
    a.add_argument("--protocol", choices=list(PROTOCOLS), default=CURRENT,
                   help="evaluator revision: "
                   + "; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items()) + f" (default {CURRENT})")
    a.add_argument("--exclusions", default=None,
                   help="excluded keyframes (video_id,timestamp rows), left out under either "
                   f"protocol ({CURRENT}: as if deleted from the ground truth, since that "
                   f"evaluator reads no such file; {ACTIVITYNET_2019}: its own exclusions)")
    a.add_argument("--out", default=None, help="also write the JSON here")
    a.set_defaults(func=cmd_ava_eval)

    ls = sub.add_parser("list", help="list shipped prompt files, templates and configs")
    ls.set_defaults(func=cmd_list)

    doc = sub.add_parser("doctor", help="versions, devices and a self-check (paste it into a "
                                        "bug report)")
    doc.add_argument("--quick", action="store_true",
                     help="versions and devices only, no self-check")
    doc.set_defaults(func=cmd_doctor)
