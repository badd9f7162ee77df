"""``emae segprobe``: the frozen dense probe, a converged linear classifier on a frozen encoder's patch features
scored by mIoU (see :mod:`emae.eval.segprobe`)."""

from __future__ import annotations

import argparse

from ..config import SegprobeConfig
from .common import add_config_args, alias, load_eval_config, load_source

EPILOG = """the probe:
  patch features of the frozen encoder (its last map with the final norm: a ViT's last block at stride = patch
  size, Swin / PVT's last stage) for every image resized to --img-size, extracted once (--feature-cache keeps
  them); a multinomial logistic regression on the features bilinearly interpolated at --pixels-per-image labelled
  pixels of every training label map (= a linear classifier whose logits are upsampled to full resolution),
  fitted to convergence (L-BFGS, --tol), its L2 strength chosen from --C by the mIoU on a held-out --holdout share
  of the training images, then refit on all of them. mIoU, per-class IoU, pixel accuracy and mean class accuracy
  on val, at label resolution, in OUTPUT/metrics.json; image | ground truth | prediction in OUTPUT/segprobe.png.

data layouts (--layout auto detects them):
  folders   DIR/{train,val}/images/NAME.jpg + DIR/{train,val}/labels/NAME.png (CamVid's; the defaults are
            CamVid's 11 classes with 11 = void, ignored; --num-classes / --ignore-index for other data sets)
  ade20k    DIR/images/{training,validation} + DIR/annotations/{training,validation} (150 classes; 0 is ignored
            and the rest reduced by one, as mmseg's reduce_zero_label)

examples:
  emae segprobe random --arch vit_tiny --patch-size 16 --img-size 176 240 --data ../shared/data/camvid
  emae segprobe runs/camvid-mae/checkpoint-00002000.pt --data ../shared/data/camvid --img-size 176 240 \\
      --feature-cache runs/features --output runs/camvid-segprobe
"""


def add_seg_data_args(p: argparse.ArgumentParser, root: type) -> None:
    """The data flags of the dense commands (aliases of data.*)."""
    g = p.add_argument_group("data (semantic segmentation; aliases of data.*)")
    alias(g, root, "--data", "data.path", "data set root (a layout below)", metavar="DIR")
    alias(g, root, "--layout", "data.layout", "", choices=["auto", "folders", "ade20k"])
    alias(g, root, "--num-classes", "data.num_classes", "classes (default: the layout's: CamVid 11, ADE20K 150)",
          type=int)
    alias(g, root, "--ignore-index", "data.ignore_index", "label value left out of the loss and the metrics "
          "(CamVid 11, ADE20K 255 after the reduction)", type=int)
    alias(g, root, "--class-names", "data.class_names", "one name per class (default: the layout's)", nargs="+",
          metavar="NAME")
    alias(g, root, "--img-size", "data.img_size", "H [W] the network takes (default: the first training image's, "
          "rounded down to a multiple of 32); position embeddings are interpolated to it", type=int, nargs="+",
          metavar="N")
    alias(g, root, "--max-train", "data.max_train", "a seeded random subset of N training images", type=int,
          metavar="N")
    alias(g, root, "--max-val", "data.max_val", "... and of N validation images", type=int, metavar="N")
    alias(g, root, "--mean", "data.mean", "normalisation mean (default: the checkpoint's or ImageNet's)", type=float,
          nargs="+")
    alias(g, root, "--std", "data.std", "normalisation std (default: the checkpoint's or ImageNet's)", type=float,
          nargs="+")
    alias(g, root, "--workers", "data.num_workers", "data loader processes (0: in the main process)", type=int)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segprobe", help="frozen dense probe: a converged linear classifier per patch, mIoU",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p, SegprobeConfig, "run", image_folders=False)
    add_seg_data_args(p, SegprobeConfig)
    g = p.add_argument_group("probe (aliases of probe.*)")
    R = SegprobeConfig
    alias(g, R, "--pixels-per-image", "probe.pixels_per_image", "labelled training pixels drawn per image for the fit",
          type=int)
    alias(g, R, "--C", "probe.c_grid", "inverse L2 strengths to choose from on the held-out images (1e-3 ... 10); "
          "one: no choice", type=float, nargs="+", metavar="C")
    alias(g, R, "--holdout", "probe.holdout", "share of the training images held out to choose C", type=float)
    alias(g, R, "--tol", "probe.tol", "L-BFGS stops when the largest gradient entry is below", type=float)
    alias(g, R, "--max-iter", "probe.max_iter", "L-BFGS iterations before a fit counts as unconverged", type=int)
    alias(g, R, "--feature-cache", "probe.feature_cache", "keep the feature maps here", metavar="DIR")
    alias(g, R, "--picture-images", "probe.picture_images", "validation images in segprobe.png (0: none)", type=int)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.segmentation import limit_pairs, segmentation_splits
    from ..eval.common import prepare_run_dir
    from ..eval.segprobe import check_holdout, segprobe

    cfg = load_eval_config(args, SegprobeConfig)
    d, r = cfg.data, cfg.run
    loaded = load_source(cfg, size=d.size if cfg.checkpoint == "random" else None)
    train, val = segmentation_splits(d.path, d.layout, d.num_classes, d.ignore_index, d.class_names,
                                     loaded.config.model.in_chans, strict=True, progress=not args.no_progress)
    train, val = limit_pairs(train, d.max_train, r.seed), limit_pairs(val, d.max_val, r.seed)
    check_holdout(cfg.probe, len(train))  # before any work
    out = prepare_run_dir(cfg.output_dir, "segprobe", args.overwrite)
    m = segprobe(loaded, train, val, out, cfg, progress=not args.no_progress)
    p = cfg.probe
    fit = (f"converged in {m['iterations']} iterations" if m["converged"]
           else f"NOT converged after {m['iterations']} iterations: raise --max-iter")
    chosen = f"C {m['C']:g}" + (f" chosen on {p.holdout:.0%} of the training images" if len(p.grid) > 1 else "")
    pct = {k: "n/a " if m[k] is None else f"{m[k]:.2f}%" for k in ("miou", "pixel_acc", "mean_class_acc")}
    print(f"segprobe: mIoU {pct['miou']} pixel acc {pct['pixel_acc']} mean class acc {pct['mean_class_acc']} "
          f"({chosen}; {fit}, tol {p.tol:g}; {m['train_images']} train / {m['val_images']} val images at "
          f"{m['img_size'][0]}x{m['img_size'][1]}, {m['pixels_per_image']} pixels per image, {m['seconds']:.0f} s); "
          f"metrics {out / 'metrics.json'}")
    return 0
