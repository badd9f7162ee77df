"""``emae visualize``: reconstruction grids (original | masked | reconstruction | reconstruction + visible)."""

from __future__ import annotations

import argparse

import torch

from .common import add_trust_arg

EPILOG = """--stats (models trained with norm_pix_loss predict normalised patches; how to un-normalise for display):
  true     each masked patch's own mean and std: sharp, but leaks the target, so display only
  visible  estimated from nearby visible patches (Gaussian-weighted): uses only what the model could see

examples:
  emae visualize runs/cifar/checkpoint-00019500.pt --data ../shared/data/cifar10/test --output recon.png
  emae visualize mae_visualize_vit_large.pth --data /data/imagenet/val --stats visible --mask-ratio 0.75
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="reconstruction pictures of a full (with decoder) checkpoint", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="emae checkpoint, full official MAE .pth, or Hugging Face ViTMAEForPreTraining folder")
    p.add_argument("--data", required=True, metavar="DIR", help="a folder of images (any layout), or shards")
    p.add_argument("--output", default="reconstruction.png", metavar="PNG", help="(reconstruction.png)")
    p.add_argument("--num", type=int, default=8, help="images, evenly spread over the folder (8)")
    p.add_argument("--stats", default="true", choices=["true", "visible"], help="un-normalisation statistics (true)")
    p.add_argument("--mask-type", help="mask strategy (default: the checkpoint's; see mask.type)")
    p.add_argument("--mask-ratio", type=float, help="mask ratio (default: the checkpoint's)")
    p.add_argument("--norm-pix", choices=["true", "false"], help="override: was the model trained with norm_pix_loss")
    p.add_argument("--decoder-num-heads", type=int, help="decoder heads, for plain state dicts (default width / 32)")
    p.add_argument("--num-heads", type=int, help="encoder heads, for plain state dicts")
    p.add_argument("--seed", type=int, default=0, help="mask randomness (0)")
    p.add_argument("--scale", type=int, help="enlarge small images (default: to about 128 px)")
    add_trust_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import open_images
    from ..engine.pictures import vis_batch
    from ..errors import ConfigError
    from ..interop.load import build_mae, read_checkpoint
    from ..viz import save_reconstruction

    if args.num <= 0:
        raise ConfigError(f"--num: {args.num} must be positive")
    loaded = read_checkpoint(args.checkpoint, num_heads=args.num_heads, decoder_num_heads=args.decoder_num_heads,
                             trust=args.trust_checkpoint)
    if args.norm_pix:
        loaded.config.model.norm_pix_loss = args.norm_pix == "true"
    model = build_mae(loaded, args.mask_type, args.mask_ratio)
    cfg = loaded.config
    cfg.train.num_vis = args.num
    imgs = vis_batch(cfg, open_images(args.data, cfg.model.in_chans), torch.device("cpu"))
    scale = args.scale or max(1, 128 // max(cfg.model.image_size))
    out = save_reconstruction(args.output, model, imgs, cfg.data.mean, cfg.data.std, args.stats, args.seed, scale)
    print(f"wrote {out} ({args.num} images, mask {loaded.config.mask.type} {loaded.config.mask.ratio}, stats {args.stats})")
    return 0
