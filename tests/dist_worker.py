"""Run by torchrun in test_distributed: checks the collectives in a group this script starts itself, then runs
``emae ARGS`` inside that group (emae joins a group it did not start, and leaves it running)."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from emae.cli.main import main
from emae.engine import distributed as d

if __name__ == "__main__":
    out, args = Path(sys.argv[1]), sys.argv[2:]  # args: pretrain ...
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    got = [d.any_rank(rank == 1), d.any_rank(False), d.all_reduce_mean(torch.tensor([rank * 1.0])).item(),
           d.broadcast_object(f"rank{rank}"), d.is_main()]
    code = main(args)
    got.append(dist.is_initialized())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(got))
    dist.destroy_process_group()
    sys.exit(code)
