"""``emae knn``: weighted k-NN accuracy of frozen features (cosine similarity, votes exp(sim / T))."""

from __future__ import annotations

import argparse

from .common import (SeededSources, add_checkpoint_args, add_data_args, add_run_args, eval_options,
                     positive, warn)

EPILOG = """examples:
  emae knn runs/cifar/checkpoint-00019500.pt --data ../shared/data/cifar10 --output runs/cifar-knn
  emae knn mae_pretrain_vit_base.pth --data /data/imagenet --img-size 224 --feature-cache runs/features
  emae knn random --arch vit_tiny --patch-size 4 --img-size 32 --data ../shared/data/cifar10 --seeds 3  # baseline
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knn", help="weighted k-NN accuracy of frozen features", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    add_data_args(p)
    g = p.add_argument_group("k-NN")
    g.add_argument("--k", type=int, nargs="+", default=[20, 200], help="neighbour counts, each reported (20 200)")
    g.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(sim / T) (0.07)")
    g.add_argument("--pool", choices=["cls", "avg"],
                   help="feature: cls token or mean patch token (ViT default cls); pyramids: avg only, the default")
    g.add_argument("--center", choices=["both", "none", "train-mean"], default="both",
                   help="centre the features on the training-set mean before the cosine: reported with and without "
                        "(both, the default), or only one")
    g.add_argument("--feature-cache", metavar="DIR", help="keep the frozen features here; linprobe reuses them")
    add_run_args(p, batch_size=256, seeds=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.backbone import resolve_pool
    from ..eval.common import prepare_run_dir
    from ..eval.knn import effective_ks, knn_run
    from ..eval.seeds import run_seeds, score, seed_list, seeds_note

    positive("--batch-size", args.batch_size)
    positive("--temperature", args.temperature)
    for k in args.k:
        positive("--k", k)
    seeds = seed_list(args.seeds, args.seed)
    sources = SeededSources(args, seeds)
    _, loaded, train, val = sources.first
    resolve_pool(loaded, args.pool)  # a pooling the encoder does not have: one-line error before any work
    ks, capped = effective_ks(tuple(args.k), len(train))
    if capped:
        warn(capped)
    out = prepare_run_dir(args.output, "knn", args.overwrite)
    memo: dict = {}  # features shared by seeds that give the same checkpoint and images

    def one(seed, folder):
        a, loaded, train, val = sources[seed]
        opts = eval_options(a, pool=args.pool, feature_cache=args.feature_cache)
        return knn_run(loaded, train, val, folder, opts, tuple(args.k), args.temperature, args.center, memo)

    m = run_seeds(seeds, out, one)
    groups = {"none": [((), "")], "train-mean": [(("centred",), "centred ")]}.get(
        args.center, [((), ""), (("centred",), "centred ")])
    parts = [f"{label}k={k} top-1 {score(m, *g, f'k={k}', 'top1')}% top-5 {score(m, *g, f'k={k}', 'top5')}%"
             for g, label in groups for k in ks]
    print(f"knn: {', '.join(parts)} ({len(train)} train / {len(val)} val images{seeds_note(m)}, {m['seconds']:.0f} s); "
          f"metrics {out / 'metrics.json'}")
    return 0
