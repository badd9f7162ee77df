"""``emae finetune``: end-to-end fine-tuning with MAE's recipe (timm: layer decay, mixup, RandAugment, EMA)."""

from __future__ import annotations

import argparse

from .common import (SeededSources, add_checkpoint_args, add_data_args, add_run_args, add_tracking_args,
                     eval_options, positive)

EPILOG = """defaults are MAE's ViT-B ImageNet recipe; ViT-L uses --base-lr 1e-3 --layer-decay 0.75 --drop-path 0.2
--epochs 50. Swin / PVT (UM-MAE, SimMIM) default to UM-MAE's --layer-decay 0.85. Writes log.jsonl (per-step loss / lr, per-epoch top-1 / top-5), best.pt and metrics.json.

examples:
  emae finetune runs/cifar/checkpoint-00019500.pt --data ../shared/data/cifar10 --epochs 100 --output runs/cifar-ft
  emae finetune random --arch vit_tiny --patch-size 4 --img-size 32 --data ../shared/data/cifar10 --seeds 2  # scratch
  emae finetune mae_pretrain_vit_base.pth --data /data/imagenet --img-size 224 --batch-size 128 --ema 0.9999
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune an encoder end to end (MAE's recipe)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    add_data_args(p)
    g = p.add_argument_group("recipe (MAE's fine-tuning)")
    g.add_argument("--epochs", type=int, default=100, help="(100)")
    g.add_argument("--warmup-epochs", type=float, default=5, help="linear warmup, then cosine (5)")
    g.add_argument("--base-lr", type=float, default=5e-4, help="lr = base_lr x batch / 256 (5e-4)")
    g.add_argument("--lr", type=float, help="absolute lr (overrides --base-lr)")
    g.add_argument("--min-lr", type=float, default=1e-6, help="end of the cosine (1e-6)")
    g.add_argument("--layer-decay", type=float, help="layer-wise lr decay (0.65 for a ViT as MAE; 0.85 for Swin / PVT "
                   "as UM-MAE's Makefile)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (0.05)")
    g.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate (0.1)")
    g.add_argument("--pool", default="avg", choices=["avg", "cls"], help="global average pool + fc_norm, or cls (avg)")
    g.add_argument("--mixup", type=float, default=0.8, help="mixup alpha, 0 off (0.8)")
    g.add_argument("--cutmix", type=float, default=1.0, help="cutmix alpha, 0 off (1.0)")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing (0.1)")
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability (0.25)")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="timm auto-augment policy, 'none' off (rand-m9-mstd0.5-inc1)")
    g.add_argument("--ema", type=float, metavar="DECAY", help="keep an EMA of the weights (e.g. 0.9999), evaluated too")
    g.add_argument("--clip-grad", type=float, help="gradient norm clipping (off)")
    g.add_argument("--new-head", action="store_true", help="replace the checkpoint's classifier head")
    g.add_argument("--log-every", type=int, default=20, help="optimiser steps between log lines (20)")
    add_run_args(p, batch_size=64, seeds=True)
    add_tracking_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.common import prepare_run_dir
    from ..eval.finetune import FinetuneOptions, check_finetune, finetune
    from ..eval.seeds import run_seeds, score, seed_list, seeds_note

    for name in ("batch_size", "epochs", "base_lr", "lr", "layer_decay", "log_every", "ema"):
        positive("--" + name.replace("_", "-"), getattr(args, name))
    seeds = seed_list(args.seeds, args.seed)
    ft = FinetuneOptions(
        epochs=args.epochs, warmup_epochs=args.warmup_epochs, base_lr=args.base_lr, lr=args.lr, min_lr=args.min_lr,
        layer_decay=args.layer_decay, weight_decay=args.weight_decay, drop_path=args.drop_path, pool=args.pool,
        mixup=args.mixup, cutmix=args.cutmix, smoothing=args.smoothing, reprob=args.reprob,
        aa=None if args.aa.lower() == "none" else args.aa, ema=args.ema, clip_grad=args.clip_grad,
        new_head=args.new_head, log_every=args.log_every,
    )
    sources = SeededSources(args, seeds)
    a, loaded, train, _ = sources.first
    check_finetune(loaded, train, eval_options(a), ft)  # before the run folder is touched
    out = prepare_run_dir(args.output, "finetune", args.overwrite)

    def one(seed, folder):
        a, loaded, train, val = sources[seed]
        return finetune(loaded, train, val, folder, eval_options(a), ft)

    m = run_seeds(seeds, out, one)
    if len(seeds) == 1:
        detail, best = f"best {m['best_top1']:.2f}% at epoch {m['best_epoch']}/{m['epochs']}", m["best_checkpoint"]
    else:
        detail, best = f"best {score(m, 'best_top1')}%{seeds_note(m)}", out / "seed-*" / "best.pt"
    print(f"finetune: top-1 {score(m, 'top1')}% top-5 {score(m, 'top5')}% ({detail}, {m['seconds']:.0f} s); "
          f"best {best}; metrics {out / 'metrics.json'}")
    return 0
