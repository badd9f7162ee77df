"""``emae knn``: weighted k-NN accuracy of frozen features (cosine similarity, votes exp(sim / T))."""

from __future__ import annotations

import argparse

from ..config import KnnConfig
from .common import SeededSources, add_config_args, alias, load_eval_config, warn

EPILOG = """examples:
  emae knn runs/cifar/checkpoint-00019500.pt --data ../shared/data/cifar10 --output runs/cifar-knn
  emae knn mae_pretrain_vit_base.pth --data /data/imagenet --img-size 224 --feature-cache runs/features
  emae knn random --arch vit_tiny --patch-size 4 --img-size 32 --data ../shared/data/cifar10 --seeds 3  # baseline
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("knn", help="weighted k-NN accuracy of frozen features", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, KnnConfig, "run")
    g = p.add_argument_group("k-NN (aliases of knn.*)")
    R = KnnConfig
    alias(g, R, "--k", "knn.k", "neighbour counts, each reported", type=int, nargs="+")
    alias(g, R, "--temperature", "knn.temperature", "vote weight exp(sim / T)", type=float)
    alias(g, R, "--pool", "knn.pool", "feature: cls token or mean patch token (ViT default cls); pyramids: avg only, "
          "the default", choices=["cls", "avg"])
    alias(g, R, "--center", "knn.center", "centre the features on the training-set mean before the cosine: reported "
          "with and without (both), or only one", choices=["both", "none", "train-mean"])
    alias(g, R, "--feature-cache", "knn.feature_cache", "keep the frozen features here; linprobe reuses them",
          metavar="DIR")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..archs import resolve_pool
    from ..eval.common import prepare_run_dir
    from ..eval.knn import effective_ks, knn_run
    from ..eval.seeds import run_seeds, score, seed_list, seeds_note

    cfg = load_eval_config(args, KnnConfig)
    seeds = seed_list(cfg.run.seeds, cfg.run.seed)
    sources = SeededSources(cfg, seeds)
    _, loaded, train, val = sources.first
    resolve_pool(loaded.config.model.arch, cfg.knn.pool)  # a pooling the encoder does not have: before any work
    ks, capped = effective_ks(tuple(cfg.knn.k), len(train))
    if capped:
        warn(capped)
    out = prepare_run_dir(cfg.output_dir, "knn", args.overwrite)
    memo: dict = {}  # features shared by seeds that give the same checkpoint and images

    def one(seed, folder):
        c, loaded, train, val = sources[seed]
        return knn_run(loaded, train, val, folder, c, progress=not args.no_progress, memo=memo)

    m = run_seeds(seeds, out, one)
    groups = {"none": [((), "")], "train-mean": [(("centred",), "centred ")]}.get(
        cfg.knn.center, [((), ""), (("centred",), "centred ")])
    parts = [f"{label}k={k} top-1 {score(m, *g, f'k={k}', 'top1')}% top-5 {score(m, *g, f'k={k}', 'top5')}%"
             for g, label in groups for k in ks]
    print(f"knn: {', '.join(parts)} ({len(train)} train / {len(val)} val images{seeds_note(m)}, {m['seconds']:.0f} s); "
          f"metrics {out / 'metrics.json'}")
    return 0
