"""The ``emae`` command. Errors from bad input print as one line (``emae: error: ...``) and exit with 2."""

from __future__ import annotations

import argparse
import os
import re
import sys

from ..engine.atomic import OUTPUT_ERRNOS
from ..engine.distributed import ended_group
from ..errors import EmaeError
from . import consistency, data, export, finetune, knn, linprobe, plot, pretrain, segment, segprobe, shards, visualize


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emae", description="Masked image modeling: MAE, EMAE, UM-MAE.")
    sub = parser.add_subparsers(dest="command", required=True)
    pretrain.add_parser(sub)
    consistency.add_parser(sub)
    finetune.add_parser(sub)
    linprobe.add_parser(sub)
    knn.add_parser(sub)
    segment.add_parser(sub)
    segprobe.add_parser(sub)
    visualize.add_parser(sub)
    plot.add_parser(sub)
    export.add_parser(sub)
    shards.add_parser(sub)
    data.add_parser(sub)
    return parser


def error_line(exc: BaseException) -> str:
    """The last non-empty line: exceptions re-raised from DataLoader workers carry a traceback in their text, whose
    last line repeats the class name (``emae.errors.DataError: ...``)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    line = lines[-1] if lines else type(exc).__name__
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return line[len(prefix):] if len(lines) > 1 and line.startswith(prefix) else line


OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like ``parse_args``, but ``key=value`` overrides may stand anywhere on the line (``emae pretrain a=1
    --output X b=2``): argparse takes the first run of them, the ones after an option come back unrecognised and
    join them, in order. (``parse_intermixed_args`` refuses parsers with sub-commands.)"""
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if OVERRIDE.match(a)]
    if late and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *late]
        extra = [a for a in extra if not OVERRIDE.match(a)]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    try:
        return args.run(args) or 0
    except EmaeError as e:
        print(f"emae: error: {error_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a forbidden file that no emae code path turned into a line of its own
        if e.errno not in OUTPUT_ERRNOS:
            raise
        print(f"emae: error: {e.filename}: {e.strerror}" if e.filename else f"emae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emae: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``emae`` command: :func:`main`, then exit with its code. After a distributed run that started and ended
    its own process group, it exits without interpreter teardown: with torch 2.14's gloo, one rank in about ten
    aborted there ("terminate called without an active exception") after the run had finished and written
    everything, and torchrun then reported the whole launch as failed."""
    code = main()
    if ended_group():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
