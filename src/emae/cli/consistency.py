"""``emae consistency``: how consistent a model's predictions of the same patch are across mask rounds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..data import eval_transform, open_images
from ..eval.consistency import check_rounds, measure_consistency
from ..interop.load import build_mae, read_checkpoint
from .common import add_trust_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("consistency", help="prediction consistency of a checkpoint across random mask rounds")
    p.add_argument("checkpoint", help="a full checkpoint (with decoder): emae, official MAE, or Hugging Face folder")
    p.add_argument("--data", required=True, help="folder of images (ImageFolder or flat), or shards")
    p.add_argument("--rounds", type=int, default=10, help="independent random masks per image (default 10)")
    p.add_argument("--images", type=int, default=256, help="images used, spread evenly over the folder")
    p.add_argument("--ratio", type=float, default=None, help="mask ratio (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="seed of the random masks (0)")
    p.add_argument("--output", help="JSON file for the figures (fields: see the README's EMAE section)")
    add_trust_arg(p)
    p.set_defaults(run=run)


def load_model(path: str, trust: bool = False) -> tuple[torch.nn.Module, object]:
    """Any full (with decoder) checkpoint that emae reads: emae, official MAE, Hugging Face."""
    loaded = read_checkpoint(path, trust=trust)
    return build_mae(loaded), loaded.config


def image_batches(folder: str, cfg, count: int, batch_size: int):
    source = open_images(folder, cfg.model.in_chans, cfg.data.strict)
    tf = eval_transform(cfg.model.image_size, cfg.data.mean, cfg.data.std)
    picks = torch.linspace(0, len(source) - 1, min(count, len(source))).round().long().tolist()
    for i in range(0, len(picks), batch_size):
        yield torch.stack([tf(source.fetch(j)[0]) for j in picks[i : i + batch_size]])


COLUMNS = (("recon_error", "recon"), ("target_variance", "target var"), ("variance", "variance"),
           ("prediction_variance", "pred var"), ("inconsistency", "inconsist."), ("pairwise", "pairwise"))


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .common import positive

    check_rounds(args.rounds)
    positive("--images", args.images)
    positive("--batch-size", args.batch_size)
    if args.ratio is not None and not 0 < args.ratio < 1:
        raise ConfigError(f"--ratio: {args.ratio} is outside (0, 1)")
    model, cfg = load_model(args.checkpoint, args.trust_checkpoint)
    ratio = args.ratio if args.ratio is not None else cfg.mask.ratio
    stats = measure_consistency(model, image_batches(args.data, cfg, args.images, args.batch_size), args.rounds,
                                ratio, args.seed)
    stats["target"] = "norm_pix" if cfg.model.norm_pix_loss else "pixels"
    stats["checkpoint"] = str(args.checkpoint)
    print(f"{'checkpoint':<32} " + " ".join(f"{title:>11}" for _, title in COLUMNS) + f" {'patches':>8}")
    print(f"{Path(args.checkpoint).name:<32} " + " ".join(f"{stats[key]:>11.4f}" for key, _ in COLUMNS)
          + f" {stats['patches']:>8}")
    print(f"({stats['target']} target space; inconsistency = variance / pred var: 0 best, 1 worst, "
          "a constant predictor scores 1; read it beside recon)")
    if args.output:
        Path(args.output).write_text(json.dumps(stats, indent=2))
    return 0
