"""``emae linprobe``: linear probing of a frozen encoder, MAE's recipe, or ``--fast`` on cached features."""

from __future__ import annotations

import argparse

from .common import add_checkpoint_args, add_data_args, add_run_args, eval_data, eval_options, load_source, positive

EPILOG = """protocols:
  standard  every epoch the training images (RandomResizedCrop + flip) pass through the frozen encoder: MAE's
            protocol (hours on a CPU).
  --fast    features of the un-augmented training images (eval transform) are extracted once, then the
            BatchNorm + linear head is fitted on them for --epochs epochs: minutes, a different protocol
            (no augmentation), usually a little below the standard number.

examples:
  emae linprobe runs/cifar/checkpoint-00019500.pt --data ../shared/data/cifar10 --fast --output runs/cifar-lin
  emae linprobe mae_pretrain_vit_base.pth --data /data/imagenet --batch-size 1024 --img-size 224
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("linprobe", help="linear probe of a frozen encoder (BatchNorm + linear head, LARS)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    add_data_args(p)
    g = p.add_argument_group("recipe (MAE's linear probe)")
    g.add_argument("--fast", action="store_true", help="cache un-augmented features once, then fit the head on them")
    g.add_argument("--epochs", type=int, default=90, help="(90)")
    g.add_argument("--warmup-epochs", type=float, default=10, help="linear warmup, then cosine (10)")
    g.add_argument("--base-lr", type=float, default=0.1, help="lr = base_lr x batch / 256 (0.1)")
    g.add_argument("--lr", type=float, help="absolute lr (overrides --base-lr)")
    g.add_argument("--min-lr", type=float, default=0.0, help="end of the cosine (0)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="LARS weight decay (0)")
    g.add_argument("--pool", choices=["cls", "avg"],
                   help="feature: cls token or mean patch token (ViT default cls); pyramids: avg only, the default")
    g.add_argument("--feature-cache", metavar="DIR", help="keep the frozen features here (shared with knn)")
    g.add_argument("--log-every", type=int, default=50, help="optimiser steps between log lines (50)")
    add_run_args(p, batch_size=256)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.backbone import resolve_pool
    from ..eval.common import prepare_run_dir
    from ..eval.linprobe import ProbeOptions, linear_probe

    for name in ("batch_size", "epochs", "base_lr", "lr", "log_every"):
        positive("--" + name.replace("_", "-"), getattr(args, name))
    loaded = load_source(args)
    resolve_pool(loaded, args.pool)  # a pooling the encoder does not have: one-line error before any work
    train, val = eval_data(args, loaded)
    out = prepare_run_dir(args.output, "linprobe", args.overwrite)
    opts = eval_options(args, pool=args.pool, feature_cache=args.feature_cache)
    probe = ProbeOptions(epochs=args.epochs, warmup_epochs=args.warmup_epochs, base_lr=args.base_lr, lr=args.lr,
                         min_lr=args.min_lr, weight_decay=args.weight_decay, fast=args.fast, log_every=args.log_every)
    m = linear_probe(loaded, train, val, out, opts, probe)
    print(f"linprobe ({'fast' if args.fast else 'standard'}): top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% "
          f"(best {m['best_top1']:.2f}% at epoch {m['best_epoch']}/{m['epochs']}, {m['seconds']:.0f} s); "
          f"metrics {out / 'metrics.json'}")
    return 0
