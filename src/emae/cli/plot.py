"""``emae plot``: PNG curves of a run's log (loss, lr, and accuracy for finetune / linprobe runs)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot loss, lr and accuracy curves of a run folder")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a pretrain, finetune or linprobe folder (with log.jsonl)")
    p.add_argument("--output", metavar="PNG", help="picture to write (default: RUN_DIR/curves.png)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..viz.curves import plot_run

    print(f"wrote {plot_run(args.run_dir, args.output)}")
    return 0
