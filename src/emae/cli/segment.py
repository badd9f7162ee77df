"""``emae segment``: fine-tune an encoder for semantic segmentation (ViTDet's simple feature pyramid or a pyramid's
stages, a UperNet-style head), on the one training loop."""

from __future__ import annotations

import argparse

from ..config import SegmentConfig
from .common import (SeededSources, add_config_args, alias, load_eval_config, loop_aliases, resume_config,
                     resume_point, switch)
from .segprobe import add_seg_data_args

EPILOG = """the run: the checkpoint's encoder at the crop size --img-size H W (position embeddings interpolated; the
log says what was), ViTDet's simple feature pyramid (strides 4-32) from a ViT's last block or a Swin / PVT's four
stage maps, a UperNet-style head (PPM + FPN, train.ppm / train.neck_dim / train.head_dim); AdamW with layer-wise lr
decay (the family's fine-tuning default: ViT 0.65, Swin / PVT 0.85), warmup then cosine, drop path; each image is
fitted into train.base_size (default: the crop), scaled by a random factor in train.scale, cropped (padded with the
ignore label) and flipped, the label with it. mIoU, per-class IoU, pixel accuracy, mean class accuracy and the
confusion matrix on val (at label resolution; --eval-mode whole or slide) every train.eval_every epochs and at the
end, in OUTPUT/metrics.json; image | ground truth | prediction in OUTPUT/segment.png. Run checkpoints resume exactly
(--resume auto), with any number of loader workers.

data layouts: see `emae segprobe --help` (CamVid's images/ + labels/ folders, ADE20K's layout).

examples:
  emae segment random --arch vit_tiny --patch-size 16 --img-size 176 240 --data ../shared/data/camvid --seeds 2
  emae segment runs/camvid-mae/checkpoint-00004000.pt --data ../shared/data/camvid --img-size 176 240 \\
      --output runs/camvid-seg
  emae segment --output runs/camvid-seg --resume auto
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="fine-tune an encoder for semantic segmentation (mIoU)", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, SegmentConfig, "train", trains=True, image_folders=False)
    add_seg_data_args(p, SegmentConfig)
    g = p.add_argument_group("recipe (aliases of train.*)")
    R = SegmentConfig
    loop_aliases(g, R, "--epochs", "--warmup-epochs", "--base-lr", "--lr", "--min-lr", "--layer-decay",
                 "--weight-decay", "--drop-path", "--log-every")
    alias(g, R, "--base-size", "train.base_size", "H [W] box images are fitted into (default: the crop)", type=int,
          nargs="+", metavar="N")
    alias(g, R, "--scale", "train.scale", "random scale range of the base size", type=float, nargs=2)
    switch(g, "--no-hflip", "train.hflip", False, "no horizontal flips")
    alias(g, R, "--eval-mode", "train.eval_mode", "whole image, or sliding crop-sized windows",
          choices=["whole", "slide"])
    alias(g, R, "--eval-every", "train.eval_every", "epochs between validations (and at the end)", type=int)
    alias(g, R, "--picture-images", "train.picture_images", "validation images in segment.png (0: none)", type=int)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.segmentation import limit_pairs, segmentation_splits
    from ..eval.common import prepare_run_dir
    from ..eval.seeds import run_seeds, score, seed_list, seeds_note
    from ..eval.segment import segment, segmentation_model

    cfg = load_eval_config(args, SegmentConfig, resume_config(args))
    d = cfg.data
    seeds = seed_list(cfg.train.seeds, cfg.train.seed)
    loaded_first = SeededSources.load_only(cfg, seeds[0])
    splits = segmentation_splits(d.path, d.layout, d.num_classes, d.ignore_index, d.class_names,
                                 loaded_first.config.model.in_chans, strict=True, progress=not args.no_progress)
    segmentation_model(loaded_first, splits[0].num_classes, cfg)  # the network builds at this size: before any work
    out = prepare_run_dir(cfg.output_dir, "segment", args.overwrite, resume=args.resume is not None)

    def one(seed, folder):
        c, loaded = SeededSources.config_and_source(cfg, seed, loaded_first, seeds[0])
        c.output_dir = str(folder)
        train, val = limit_pairs(splits[0], d.max_train, seed), limit_pairs(splits[1], d.max_val, seed)
        return segment(loaded, train, val, folder, c, resume_point(args, folder, c, args.force_config),
                       progress=not args.no_progress)

    names = tuple(splits[0].class_names)
    m = run_seeds(seeds, out, one, scores=("miou", "pixel_acc", "mean_class_acc", *names))
    if "miou" not in m:
        print(f"segment: stopped at step {m.get('global_step')} before an evaluation; continue with: "
              f"emae segment --output {out} --resume auto")
        return 0
    stop = f"stopped by {m['stopped']}; continue with --resume auto; " if m.get("stopped") else ""
    print(f"segment: mIoU {score(m, 'miou')}% pixel acc {score(m, 'pixel_acc')}% mean class acc "
          f"{score(m, 'mean_class_acc')}% ({stop}{m['seconds']:.0f} s{seeds_note(m)}); metrics {out / 'metrics.json'}")
    return 0
