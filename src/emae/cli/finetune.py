"""``emae finetune``: end-to-end fine-tuning with MAE's recipe (timm: layer decay, mixup, RandAugment, EMA)."""

from __future__ import annotations

import argparse

from ..config import FinetuneConfig
from .common import (SeededSources, add_config_args, alias, load_eval_config, loop_aliases, resume_config,
                     resume_point, switch)

EPILOG = """defaults are MAE's ViT-B ImageNet recipe (--config finetune_vit_base_in1k states it); ViT-L:
--config finetune_vit_large_in1k. Swin / PVT (UM-MAE, SimMIM) default to UM-MAE's layer decay 0.85. Every flag is an
alias of a config key (train.*, data.*, model.*); key=value sets any key. Writes log.jsonl (per-step loss / lr,
per-epoch top-1 / top-5), run checkpoints (--resume auto continues a stopped run), best.pt and metrics.json.

examples:
  emae finetune runs/cifar/checkpoint-00019500.pt --data ../shared/data/cifar10 --epochs 100 --output runs/cifar-ft
  emae finetune random --arch vit_tiny --patch-size 4 --img-size 32 --data ../shared/data/cifar10 --seeds 2  # scratch
  emae finetune --config finetune_vit_base_in1k mae_pretrain_vit_base.pth --data /data/imagenet train.ema=0.9999
  emae finetune --output runs/cifar-ft --resume auto                                      # continue a stopped run
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune an encoder end to end (MAE's recipe)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, FinetuneConfig, "train", trains=True)
    g = p.add_argument_group("recipe (MAE's fine-tuning; aliases of train.*)")
    R = FinetuneConfig
    loop_aliases(g, R, "--epochs", "--warmup-epochs", "--base-lr", "--lr", "--min-lr", "--layer-decay",
                 "--weight-decay", "--drop-path", "--log-every")
    alias(g, R, "--pool", "train.pool", "global average pool + fc_norm, or cls", choices=["avg", "cls"])
    alias(g, R, "--mixup", "train.mixup", "mixup alpha, 0 off", type=float)
    alias(g, R, "--cutmix", "train.cutmix", "cutmix alpha, 0 off", type=float)
    alias(g, R, "--smoothing", "train.smoothing", "label smoothing", type=float)
    alias(g, R, "--reprob", "train.reprob", "random erasing probability", type=float)
    alias(g, R, "--aa", "train.aa", "timm auto-augment policy, 'none' off")
    alias(g, R, "--ema", "train.ema", "keep an EMA of the weights (e.g. 0.9999), evaluated too", type=float,
          metavar="DECAY")
    alias(g, R, "--clip-grad", "train.clip_grad", "gradient norm clipping (off)", type=float)
    switch(g, "--new-head", "train.new_head", True, "replace the checkpoint's classifier head")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.common import prepare_run_dir
    from ..eval.finetune import check_finetune, finetune
    from ..eval.seeds import run_seeds, score, seed_list, seeds_note

    cfg = load_eval_config(args, FinetuneConfig, resume_config(args))
    seeds = seed_list(cfg.train.seeds, cfg.train.seed)
    sources = SeededSources(cfg, seeds)
    first, loaded, train, _ = sources.first
    check_finetune(loaded, train, first)  # before the run folder is touched
    out = prepare_run_dir(cfg.output_dir, "finetune", args.overwrite, resume=args.resume is not None)

    def one(seed, folder):
        c, loaded, train, val = sources[seed]
        c.output_dir = str(folder)
        resume = resume_point(args, folder, c, args.force_config)
        return finetune(loaded, train, val, folder, c, resume, progress=not args.no_progress)

    m = run_seeds(seeds, out, one)
    if "top1" not in m:
        print(f"finetune: stopped by {m.get('stopped')} at step {m.get('global_step')} before an epoch ended; "
              f"continue with: emae finetune --output {out} --resume auto")
        return 0
    if m.get("stopped"):
        print(f"finetune: stopped by {m['stopped']} after {m.get('epochs_done')} epochs; "
              f"continue with: emae finetune --output {out} --resume auto")
    if len(seeds) == 1:
        detail, best = f"best {m['best_top1']:.2f}% at epoch {m['best_epoch']}/{m['epochs']}", m["best_checkpoint"]
    else:
        detail, best = f"best {score(m, 'best_top1')}%{seeds_note(m)}", out / "seed-*" / "best.pt"
    print(f"finetune: top-1 {score(m, 'top1')}% top-5 {score(m, 'top5')}% ({detail}, {m['seconds']:.0f} s); "
          f"best {best}; metrics {out / 'metrics.json'}")
    return 0
