"""``emae linprobe``: linear probe of a frozen encoder: a converged logistic regression, or MAE's recipe."""

from __future__ import annotations

import argparse

from ..config import LinprobeConfig
from ..errors import ConfigError
from .common import (SeededSources, add_config_args, alias, load_eval_config, loop_aliases, resume_config,
                     resume_point)

EPILOG = """protocols:
  logreg    (default) features of the un-augmented images are extracted once; a multinomial logistic regression
            is fitted to convergence on the standardised features (L-BFGS, --tol), its L2 strength chosen from
            --C on a held-out --holdout share of the *training* set, then refit on the whole training set.
            Minutes on a CPU, deterministic. --fast is an alias.
  mae       MAE's protocol (BatchNorm + linear head, LARS, 90 epochs, RandomResizedCrop + flip through the frozen
            encoder every epoch; --config linprobe_vit_base_in1k is the paper's recipe): for comparisons with the
            paper; hours on a CPU. The headline is the last epoch; the best epoch is selected on the validation set,
            so it is kept in metrics.json only. It runs on the one training loop: --resume auto continues it.

examples:
  emae linprobe runs/cifar/checkpoint-00019500.pt --data ../shared/data/cifar10 --pool avg --output runs/cifar-lin
  emae linprobe random --arch vit_tiny --patch-size 4 --data ../shared/data/cifar10 --max-train 10000 --pool avg
  emae linprobe --config linprobe_vit_base_in1k mae_pretrain_vit_base.pth --data /data/imagenet --img-size 224
"""

MAE_ONLY = ("epochs", "warmup_epochs", "base_lr", "lr", "min_lr", "weight_decay", "log_every")  # train.* keys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("linprobe", help="linear probe of a frozen encoder (converged logistic regression, or MAE's)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, LinprobeConfig, "train", trains=True)
    R = LinprobeConfig
    alias(p, R, "--protocol", "probe.protocol", "", choices=["logreg", "mae"])
    p.add_argument("--fast", action="store_true", help="alias of --protocol logreg (kept for old scripts)")
    alias(p, R, "--pool", "probe.pool", "feature: cls token or mean patch token (ViT default cls); pyramids: avg only, "
          "the default", choices=["cls", "avg"])
    alias(p, R, "--feature-cache", "probe.feature_cache", "keep the frozen features here (shared with knn)",
          metavar="DIR")
    g = p.add_argument_group("logreg protocol")
    alias(g, R, "--C", "probe.c_grid", "inverse L2 strengths to choose from on the held-out split (1e-4 ... 100); "
          "one value: no choice", type=float, nargs="+", metavar="C")
    alias(g, R, "--holdout", "probe.holdout", "share of the training set held out to choose C", type=float)
    alias(g, R, "--tol", "probe.tol", "L-BFGS stops when the largest gradient entry is below", type=float)
    alias(g, R, "--max-iter", "probe.max_iter", "L-BFGS iterations before a fit counts as unconverged", type=int)
    g = p.add_argument_group("mae protocol (MAE's linear probe; aliases of train.*)")
    loop_aliases(g, R, "--epochs", "--warmup-epochs", "--base-lr", "--lr", "--min-lr", "--weight-decay",
                 "--log-every")
    p.set_defaults(run=run)


def check_protocol(args: argparse.Namespace, cfg: LinprobeConfig) -> str:
    """The protocol, and one-line errors for options of the other one (flags or key=value)."""
    flags = {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}
    overridden = {o.split("=", 1)[0].strip() for o in args.overrides}
    if args.fast:
        if flags.get("probe.protocol") == "mae" or cfg.probe.protocol == "mae" and "probe.protocol" in overridden:
            raise ConfigError("--fast is an alias of --protocol logreg; it cannot go with --protocol mae")
        cfg.probe.protocol = "logreg"
    given = [k for k in MAE_ONLY if f"train.{k}" in flags or f"train.{k}" in overridden]
    if cfg.probe.protocol == "logreg" and given:
        raise ConfigError(f"--{given[0].replace('_', '-')} (train.{given[0]}) applies to --protocol mae only")
    if cfg.probe.protocol == "mae" and ("probe.c_grid" in flags or "probe.c_grid" in overridden):
        raise ConfigError("--C applies to --protocol logreg only")
    return cfg.probe.protocol


def run(args: argparse.Namespace) -> int:
    from ..archs import resolve_pool
    from ..eval.common import check_full_batch, prepare_run_dir
    from ..eval.linprobe import linear_probe, logreg_probe
    from ..eval.logreg import C_GRID
    from ..eval.seeds import run_seeds, score, seed_list, seeds_note

    cfg = load_eval_config(args, LinprobeConfig, resume_config(args))
    protocol = check_protocol(args, cfg)
    if args.resume and protocol != "mae":
        raise ConfigError("--resume continues a --protocol mae run (the logreg fit has no steps to resume)")
    seeds = seed_list(cfg.train.seeds, cfg.train.seed)
    sources = SeededSources(cfg, seeds)
    _, loaded, train, val = sources.first
    resolve_pool(loaded.config.model.arch, cfg.probe.pool)  # a pooling the encoder does not have: before any work
    if protocol == "mae":
        check_full_batch(len(train), cfg.train.batch_size)  # before any work
    out = prepare_run_dir(cfg.output_dir, "linprobe", args.overwrite, resume=args.resume is not None)

    def one(seed, folder):
        c, loaded, train, val = sources[seed]
        if protocol == "mae":
            c.output_dir = str(folder)
            resume = resume_point(args, folder, c, args.force_config)
            return linear_probe(loaded, train, val, folder, c, resume, progress=not args.no_progress)
        return logreg_probe(loaded, train, val, folder, c, progress=not args.no_progress)

    m = run_seeds(seeds, out, one)
    runs = m.get("per_seed", [m])
    if "top1" not in m:
        print(f"linprobe (mae): stopped at step {m.get('global_step')} before an epoch ended; continue with: "
              f"emae linprobe --output {out} --resume auto")
        return 0
    top = f"top-1 {score(m, 'top1')}% top-5 {score(m, 'top5')}%"
    if protocol == "mae":
        print(f"linprobe (mae): {top} after {cfg.train.epochs} epochs ({m['seconds']:.0f} s{seeds_note(m)}); "
              f"metrics {out / 'metrics.json'}")
        return 0
    failed = [r["iterations"] for r in runs if not r["converged"]]
    fit = (f"converged in {'/'.join(str(r['iterations']) for r in runs)} iterations" if not failed
           else f"NOT converged after {failed[0]} iterations: raise --max-iter")
    cs = "/".join(f"{r['C']:g}" for r in runs)
    p = cfg.probe
    chosen = f"C {cs} chosen on {p.holdout:.0%} of the training set" if len(p.c_grid or C_GRID) > 1 else f"C {cs}"
    print(f"linprobe (logreg): {top} ({chosen}; {fit}, tol {p.tol:g}; {len(train)} train / {len(val)} val "
          f"images{seeds_note(m)}, {m['seconds']:.0f} s); metrics {out / 'metrics.json'}")
    return 0
