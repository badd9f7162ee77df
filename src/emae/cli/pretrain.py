"""``emae pretrain``: pre-train a masked autoencoder from a recipe, with ``key=value`` overrides."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import yaml

from ..config import config_from_dict, load_config
from ..engine import latest_valid_checkpoint, load_checkpoint, pretrain
from ..engine.distributed import is_main
from ..errors import ConfigError
from .common import add_trust_arg

EPILOG = """examples:
  emae pretrain                                     # embedded digits, ViT-Tiny/4, about two minutes on CPU
  emae pretrain --data ../shared/data/cifar10/train --config mae_vit_tiny_p4_cifar10
  emae pretrain --config mae_vit_base_p16_in1k --data /datasets/imagenet/train train.accum_iter=8
  emae pretrain --output runs/a --resume auto       # continue runs/a (its newest valid checkpoint)
  emae pretrain --output runs/a --resume auto train.max_steps=20000   # ... and make it longer

resuming: the run continues with the config saved in its checkpoint (a run killed before its first checkpoint
starts over with its config.yaml). key=value (and --config / --data / --method) may change only the run length
(longer), save_every*, keep_last, log_every, num_vis, stop_after_steps, data.num_workers, train.device,
train.threads and the distributed layout. Anything else is an error unless --force-config, which lists every
changed key.
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train a masked autoencoder", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML recipe: a path or the name of a shipped recipe in configs/")
    p.add_argument("--data", help="ImageFolder tree or folder of images (default: the embedded digits)")
    p.add_argument("--output", help="run folder (default: runs/<method>-<timestamp>)")
    p.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint, or the newest valid one in "
                   "--output (none there: start the run), with the config saved in it")
    p.add_argument("--force-config", action="store_true",
                   help="resume even though key=value / --config change keys a resumed run keeps (listed loudly)")
    p.add_argument("--overwrite", action="store_true", help="start over in an --output folder that holds a run")
    p.add_argument("--monitor-data", metavar="DIR", help="held-out images for the pre-training monitor "
                   "(train.monitor.data): online k-NN (with class folders), RankMe and masked reconstruction loss "
                   "every train.monitor.every steps (0: every epoch)")
    p.add_argument("--init", metavar="PATH", help="start from these weights (emae, official MAE full or encoder-only "
                   ".pth, timm, safetensors, Hugging Face); fresh optimiser and schedule")
    p.add_argument("--method", choices=["mae", "emae", "umae", "simmim"],
                   help="mae (default); emae (sets mask.type=parallel); umae (uniform); simmim (random, pyramid arch)")
    p.add_argument("--benchmark", type=int, metavar="N",
                   help="time N steps of the real loop after a short warm-up (nothing is kept): img/s, step-time "
                        "percentiles, data-wait share, peak memory, TFLOP/s and, on a known GPU, MFU")
    p.add_argument("--benchmark-warmup", type=int, default=5, metavar="W", help="untimed steps before --benchmark's N (5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the JSON-lines log is still written)")
    add_trust_arg(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")
    p.set_defaults(run=run)


def initialiser(args: argparse.Namespace):
    """``--init``: the weights to start from, read by the interop layer (the engine takes a function)."""
    if args.init is None:
        return None
    from functools import partial

    from ..interop.load import init_from

    return partial(init_from, path=args.init, trust=args.trust_checkpoint)


def run(args: argparse.Namespace) -> int:
    flags = {"data.path": args.data, "output_dir": args.output, "method": args.method,
             "train.monitor.data": args.monitor_data}
    if args.method:
        flags["mask.type"] = {"emae": "parallel", "umae": "uniform"}.get(args.method, "random")
    if args.benchmark is not None:
        return benchmark(load_config(args.config, args.overrides, **flags), args)
    resume = resume_point(args)
    base = saved_config(args, resume)
    if base is not None and not args.config:  # the run as it was configured (a recipe given again must agree) ...
        base["train"]["stop_after_steps"] = None  # ... but a stop applies to the invocation that asked for it
        base["output_dir"] = args.output or str(Path(resume).parent)
        cfg = config_from_dict(base, flags, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides, **flags)
    result = pretrain(cfg, resume=resume or args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                      init=initialiser(args), trust=args.trust_checkpoint, force_config=args.force_config)
    if not is_main():  # one line per run, not per process
        return 0
    if result.signal:  # SIGTERM / SIGINT: a clean, resumable stop
        print(f"stopped by {result.signal} at step {result.global_step}; checkpoint {result.checkpoint}; "
              f"continue with: emae pretrain --output {result.output_dir} --resume auto")
        return 0
    loss = "no loss logged" if math.isnan(result.loss) else f"loss {result.loss:.4f}"
    if result.already_finished:
        print(f"already finished: {result.global_step} steps, {loss} (last logged); checkpoint {result.checkpoint}; "
              f"make it longer with train.max_steps=N or train.epochs=N")
        return 0
    print(f"done: {result.global_step} steps, {loss}; checkpoint {result.checkpoint}; "
          f"log {result.output_dir / 'log.jsonl'}; picture {result.output_dir / 'reconstruction.png'}")
    return 0


def resume_point(args: argparse.Namespace) -> str | None:
    """The checkpoint ``--resume`` names: a path, or for "auto" the newest valid one in --output (None: none yet)."""
    if args.resume is None:
        return None
    if args.resume != "auto":
        return args.resume
    if not args.output:
        raise ConfigError("--resume auto needs --output: the run folder to continue")
    found = latest_valid_checkpoint(args.output, args.trust_checkpoint)
    return str(found[0]) if found else None


def saved_config(args: argparse.Namespace, resume: str | None) -> dict | None:
    """The config of the run ``--resume`` continues: its checkpoint's, or, for --resume auto in a run killed before
    its first checkpoint, the run's config.yaml (the run then starts over with it)."""
    if resume is not None:
        return load_checkpoint(resume, trust=args.trust_checkpoint, peek=True)["config"]
    saved = Path(args.output) / "config.yaml" if args.resume == "auto" else None
    if saved is None or not saved.is_file():
        return None
    try:
        base = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{saved}: cannot be read ({type(e).__name__})") from None
    if is_main():
        print(f"restarting {args.output} from step 0 (no checkpoint was written), with the config saved in {saved}")
    return base


def benchmark(cfg, args: argparse.Namespace) -> int:
    """Run the real loop for warm-up + N steps in a throw-away folder and print the timing report."""
    import json
    import tempfile

    from ..engine.perf import StepTimer, format_report
    from ..errors import ConfigError

    if args.benchmark < 1 or args.benchmark_warmup < 0:
        raise ConfigError(f"--benchmark {args.benchmark} / --benchmark-warmup {args.benchmark_warmup}: "
                          "need N >= 1 timed steps and W >= 0 warm-up steps")
    if args.resume:
        raise ConfigError("--benchmark starts from fresh weights; drop --resume")
    t = cfg.train
    t.max_steps = args.benchmark + args.benchmark_warmup
    t.save_every, t.save_every_steps, t.stop_after_steps, t.num_vis = 10**9, 0, None, 0
    timer = StepTimer(cfg, warmup=args.benchmark_warmup)
    with tempfile.TemporaryDirectory(prefix="emae-benchmark-") as tmp:
        cfg.output_dir = tmp
        pretrain(cfg, progress=not args.no_progress, init=initialiser(args), hooks=[timer])
    if is_main():
        print(format_report(timer.result))
        print(json.dumps(timer.result))
    return 0
