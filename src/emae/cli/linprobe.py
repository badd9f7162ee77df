"""``emae linprobe``: linear probe of a frozen encoder: a converged logistic regression, or MAE's recipe."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import (SeededSources, add_checkpoint_args, add_data_args, add_run_args, add_tracking_args,
                     eval_options, positive)

EPILOG = """protocols:
  logreg    (default) features of the un-augmented images are extracted once; a multinomial logistic regression
            is fitted to convergence on the standardised features (L-BFGS, --tol), its L2 strength chosen from
            --C on a held-out --holdout share of the *training* set, then refit on the whole training set.
            Minutes on a CPU, deterministic. --fast is an alias.
  mae       MAE's protocol (BatchNorm + linear head, LARS, 90 epochs, RandomResizedCrop + flip through the frozen
            encoder every epoch): for comparisons with the paper; hours on a CPU. The headline is the last
            epoch; the best epoch is selected on the validation set, so it is kept in metrics.json only.

examples:
  emae linprobe runs/cifar/checkpoint-00019500.pt --data ../shared/data/cifar10 --pool avg --output runs/cifar-lin
  emae linprobe random --arch vit_tiny --patch-size 4 --data ../shared/data/cifar10 --max-train 10000 --pool avg
  emae linprobe mae_pretrain_vit_base.pth --data /data/imagenet --protocol mae --batch-size 1024 --img-size 224
"""

MAE_ONLY = {"epochs": 90, "warmup_epochs": 10, "base_lr": 0.1, "lr": None, "min_lr": 0.0, "weight_decay": 0.0,
            "log_every": 50}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("linprobe", help="linear probe of a frozen encoder (converged logistic regression, or MAE's)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    add_data_args(p)
    p.add_argument("--protocol", choices=["logreg", "mae"], default="logreg", help="(logreg)")
    p.add_argument("--fast", action="store_true", help="alias of --protocol logreg (kept for old scripts)")
    p.add_argument("--pool", choices=["cls", "avg"],
                   help="feature: cls token or mean patch token (ViT default cls); pyramids: avg only, the default")
    p.add_argument("--feature-cache", metavar="DIR", help="keep the frozen features here (shared with knn)")
    g = p.add_argument_group("logreg protocol")
    g.add_argument("--C", dest="c_grid", type=float, nargs="+", metavar="C",
                   help="inverse L2 strengths to choose from on the held-out split (1e-4 ... 100); one value: no choice")
    g.add_argument("--holdout", type=float, default=0.1, help="share of the training set held out to choose C (0.1)")
    g.add_argument("--tol", type=float, default=1e-6, help="L-BFGS stops when the largest gradient entry is below (1e-6)")
    g.add_argument("--max-iter", type=int, default=10000, help="L-BFGS iterations before a fit counts as unconverged (10000)")
    g = p.add_argument_group("mae protocol (MAE's linear probe)")
    g.add_argument("--epochs", type=int, help="(90)")
    g.add_argument("--warmup-epochs", type=float, help="linear warmup, then cosine (10)")
    g.add_argument("--base-lr", type=float, help="lr = base_lr x batch / 256 (0.1)")
    g.add_argument("--lr", type=float, help="absolute lr (overrides --base-lr)")
    g.add_argument("--min-lr", type=float, help="end of the cosine (0)")
    g.add_argument("--weight-decay", type=float, help="LARS weight decay (0)")
    g.add_argument("--log-every", type=int, help="optimiser steps between log lines (50)")
    add_run_args(p, batch_size=256, seeds=True)
    add_tracking_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.backbone import resolve_pool
    from ..eval.common import check_full_batch, prepare_run_dir
    from ..eval.linprobe import ProbeOptions, linear_probe, logreg_probe
    from ..eval.logreg import C_GRID, LogRegOptions
    from ..eval.seeds import run_seeds, score, seed_list, seeds_note

    protocol = "logreg" if args.fast else args.protocol
    if args.fast and args.protocol == "mae":
        raise ConfigError("--fast is an alias of --protocol logreg; it cannot go with --protocol mae")
    mae_given = [k for k in MAE_ONLY if getattr(args, k) is not None]
    if protocol == "logreg" and mae_given:
        raise ConfigError(f"--{mae_given[0].replace('_', '-')} applies to --protocol mae only")
    if protocol == "mae" and args.c_grid:
        raise ConfigError("--C applies to --protocol logreg only")
    for name in ("batch_size", "tol", "max_iter", *mae_given):
        positive("--" + name.replace("_", "-"), getattr(args, name))
    for c in args.c_grid or ():
        positive("--C", c)
    if not 0 < args.holdout < 1:
        raise ConfigError(f"--holdout {args.holdout}: must be between 0 and 1")
    seeds = seed_list(args.seeds, args.seed)
    sources = SeededSources(args, seeds)
    _, loaded, train, val = sources.first
    resolve_pool(loaded, args.pool)  # a pooling the encoder does not have: one-line error before any work
    if protocol == "mae":
        check_full_batch(len(train), args.batch_size)  # before any work
    out = prepare_run_dir(args.output, "linprobe", args.overwrite)
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in MAE_ONLY.items()}

    def one(seed, folder):
        a, loaded, train, val = sources[seed]
        opts = eval_options(a, pool=args.pool, feature_cache=args.feature_cache)
        if protocol == "mae":
            return linear_probe(loaded, train, val, folder, opts, ProbeOptions(**values))
        options = LogRegOptions(c_grid=tuple(args.c_grid or C_GRID), holdout=args.holdout, tol=args.tol,
                                max_iter=args.max_iter, seed=seed)
        return logreg_probe(loaded, train, val, folder, opts, options)

    m = run_seeds(seeds, out, one)
    runs = m.get("per_seed", [m])
    top = f"top-1 {score(m, 'top1')}% top-5 {score(m, 'top5')}%"
    if protocol == "mae":
        print(f"linprobe (mae): {top} after {values['epochs']} epochs ({m['seconds']:.0f} s{seeds_note(m)}); "
              f"metrics {out / 'metrics.json'}")
        return 0
    failed = [r["iterations"] for r in runs if not r["converged"]]
    fit = (f"converged in {'/'.join(str(r['iterations']) for r in runs)} iterations" if not failed
           else f"NOT converged after {failed[0]} iterations: raise --max-iter")
    cs = "/".join(f"{r['C']:g}" for r in runs)
    chosen = f"C {cs} chosen on {args.holdout:.0%} of the training set" if len(args.c_grid or C_GRID) > 1 else f"C {cs}"
    print(f"linprobe (logreg): {top} ({chosen}; {fit}, tol {args.tol:g}; {len(train)} train / {len(val)} val "
          f"images{seeds_note(m)}, {m['seconds']:.0f} s); metrics {out / 'metrics.json'}")
    return 0
