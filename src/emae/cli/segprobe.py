"""``emae segprobe``: the frozen dense probe, a converged linear classifier on a frozen encoder's patch features
scored by mIoU (see :mod:`emae.eval.segprobe`)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .common import add_checkpoint_args, add_run_args, load_source, positive

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segprobe", help="frozen dense probe: a converged linear classifier per patch, mIoU",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_args(p)
    g = p.add_argument_group("data (semantic segmentation)")
    g.add_argument("--data", metavar="DIR", required=True, help="data set root (a layout below)")
    g.add_argument("--layout", choices=["auto", "folders", "ade20k"], default="auto", help="(auto)")
    g.add_argument("--num-classes", type=int, help="classes (default: the layout's: CamVid 11, ADE20K 150)")
    g.add_argument("--ignore-index", type=int, help="label value left out of the fit and the metrics (CamVid 11, "
                   "ADE20K 255 after the reduction)")
    g.add_argument("--class-names", nargs="+", metavar="NAME", help="one name per class (default: the layout's)")
    g.add_argument("--img-size", type=int, nargs="+", metavar="N",
                   help="H [W] the images are resized to (default: the first training image's, rounded down to a "
                        "multiple of 32); position embeddings are interpolated to it")
    g.add_argument("--max-train", type=int, metavar="N", help="a seeded random subset of N training images")
    g.add_argument("--max-val", type=int, metavar="N", help="... and of N validation images")
    g.add_argument("--mean", type=float, nargs="+", help="normalisation mean (default: the checkpoint's or ImageNet's)")
    g.add_argument("--std", type=float, nargs="+", help="normalisation std (default: the checkpoint's or ImageNet's)")
    g = p.add_argument_group("probe")
    g.add_argument("--pixels-per-image", type=int, default=200,
                   help="labelled training pixels drawn per image for the fit (200)")
    g.add_argument("--C", dest="c_grid", type=float, nargs="+", metavar="C",
                   help="inverse L2 strengths to choose from on the held-out images (1e-3 ... 10); one: no choice")
    g.add_argument("--holdout", type=float, default=0.1, help="share of the training images held out to choose C (0.1)")
    g.add_argument("--tol", type=float, default=1e-6,
                   help="L-BFGS stops when the largest gradient entry is below (1e-6)")
    g.add_argument("--max-iter", type=int, default=10000, help="L-BFGS iterations before a fit counts as unconverged")
    g.add_argument("--feature-cache", metavar="DIR", help="keep the feature maps here")
    g.add_argument("--picture-images", type=int, default=4, help="validation images in segprobe.png (4; 0: none)")
    add_run_args(p, batch_size=16)
    p.set_defaults(run=run)


def image_size(values: list[int] | None) -> tuple[int, int] | None:
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise ConfigError(f"--img-size {' '.join(map(str, values))}: give H, or H W")
    for v in values:
        positive("--img-size", v)
    return (values[0], values[-1])


def run(args: argparse.Namespace) -> int:
    from ..data.segmentation import limit_pairs, segmentation_splits
    from ..eval.common import prepare_run_dir
    from ..eval.segprobe import SEG_C_GRID, SegProbeOptions, check_options, segprobe

    size = image_size(args.img_size)
    for name in ("max_train", "max_val", "pixels_per_image", "batch_size", "tol", "max_iter"):
        positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.checkpoint == "random" and size is not None:
        args.img_size = list(size)  # a random encoder is built at the probe's size (nothing to interpolate)
    loaded = load_source(args)
    train, val = segmentation_splits(args.data, args.layout, args.num_classes, args.ignore_index, args.class_names,
                                     loaded.config.model.in_chans, strict=True, progress=not args.no_progress)
    train, val = limit_pairs(train, args.max_train, args.seed), limit_pairs(val, args.max_val, args.seed)
    opts = SegProbeOptions(img_size=size, pixels_per_image=args.pixels_per_image,
                           c_grid=tuple(args.c_grid or SEG_C_GRID), holdout=args.holdout, tol=args.tol,
                           max_iter=args.max_iter, picture_images=args.picture_images, batch_size=args.batch_size,
                           workers=args.workers, device=args.device, precision=args.precision, seed=args.seed, mean=args.mean, std=args.std,
                           feature_cache=args.feature_cache, progress=not args.no_progress)
    check_options(opts, len(train))  # before any work
    out = prepare_run_dir(args.output, "segprobe", args.overwrite)
    m = segprobe(loaded, train, val, out, opts)
    fit = (f"converged in {m['iterations']} iterations" if m["converged"]
           else f"NOT converged after {m['iterations']} iterations: raise --max-iter")
    chosen = f"C {m['C']:g}" + (f" chosen on {args.holdout:.0%} of the training images" if len(opts.c_grid) > 1 else "")
    pct = {k: "n/a " if m[k] is None else f"{m[k]:.2f}%" for k in ("miou", "pixel_acc", "mean_class_acc")}
    print(f"segprobe: mIoU {pct['miou']} pixel acc {pct['pixel_acc']} mean class acc {pct['mean_class_acc']} "
          f"({chosen}; {fit}, tol {args.tol:g}; {m['train_images']} train / {m['val_images']} val images at "
          f"{m['img_size'][0]}x{m['img_size'][1]}, {m['pixels_per_image']} pixels per image, {m['seconds']:.0f} s); "
          f"metrics {out / 'metrics.json'}")
    return 0
