"""Run by torchrun in test_distributed: checks the collectives in a group this script starts itself, then runs
``emae ARGS`` inside that group (emae joins a group it did not start, and leaves it running)."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from emae.cli.main import main
from emae.engine import distributed as d
from emae.errors import ConfigError

if __name__ == "__main__":
    out, args = Path(sys.argv[1]), sys.argv[2:]  # args: pretrain ...
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    got = [d.any_rank(rank == 1), d.any_rank(False), d.all_reduce_mean(torch.tensor([rank * 1.0])).item(),
           d.is_main()]
    ran = []  # on_main: rank 0 alone runs the function; its answer, or its one-line error, reaches every rank

    def answer() -> str:
        ran.append(rank)
        return f"answer of rank{rank}"

    def refuse() -> None:
        raise ConfigError(f"refused by rank{rank}")

    got.append(d.on_main(answer))
    try:
        d.on_main(refuse)
    except ConfigError as e:
        got.append(str(e))
    got.append(ran)
    code = main(args)
    got.append(dist.is_initialized())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(got))
    dist.barrier()  # every rank has written its answers
    # Tearing the gloo group down after an FSDP run sometimes aborts one rank ("terminate called without an active
    # exception", about 1 launch in 10 here, torch 2.14) after all work is done. Teardown is not under test here,
    # so leave without it: no destructor runs.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
