"""``emae knn``: weighted k-NN accuracy of frozen features (cosine similarity, votes exp(sim / T))."""

from __future__ import annotations

import argparse

from .common import add_checkpoint_args, add_data_args, add_run_args, eval_data, eval_options, load_source, positive

EPILOG = """examples:
  emae knn runs/cifar/checkpoint-00019500.pt --data ../shared/data/cifar10 --output runs/cifar-knn
  emae knn mae_pretrain_vit_base.pth --data /data/imagenet --img-size 224 --feature-cache runs/features
  emae knn random --arch vit_tiny --patch-size 4 --img-size 32 --data ../shared/data/cifar10   # baseline
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
    g.add_argument("--feature-cache", metavar="DIR", help="keep the frozen features here; linprobe reuses them")
    add_run_args(p, batch_size=256)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.backbone import resolve_pool
    from ..eval.common import prepare_run_dir
    from ..eval.knn import knn_run

    positive("--batch-size", args.batch_size)
    positive("--temperature", args.temperature)
    for k in args.k:
        positive("--k", k)
    loaded = load_source(args)
    resolve_pool(loaded, args.pool)  # a pooling the encoder does not have: one-line error before any work
    train, val = eval_data(args, loaded)
    out = prepare_run_dir(args.output, "knn", args.overwrite)
    opts = eval_options(args, pool=args.pool, feature_cache=args.feature_cache)
    m = knn_run(loaded, train, val, out, opts, tuple(args.k), args.temperature)
    scores = ", ".join(f"{k} top-1 {v['top1']:.2f}% top-5 {v['top5']:.2f}%" for k, v in m.items() if k.startswith("k="))
    print(f"knn: {scores} ({len(train)} train / {len(val)} val images, {m['seconds']:.0f} s); metrics {out / 'metrics.json'}")
    return 0
