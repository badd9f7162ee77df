"""``emae data``: download a real data set and write the ImageFolder tree that ``--data`` takes."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  emae data cifar10 --output data/cifar10          # 170 MB download -> data/cifar10/{train,test}/<class>/*.png
  emae pretrain --config mae_vit_tiny_p4_cifar10 --data data/cifar10/train
  emae data imagenette --output data/imagenette    # 10 ImageNet classes, 160 px (--size 320 | full)
  emae data cifar10 --archive cifar-10-python.tar.gz --output data/cifar10   # an archive you already have
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="download CIFAR-10 or Imagenette as an ImageFolder tree", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["cifar10", "imagenette"])
    p.add_argument("--output", required=True, metavar="DIR", help="folder for train/ and test/ (cifar10) or val/")
    p.add_argument("--archive", metavar="FILE", help="use this downloaded archive instead of downloading")
    p.add_argument("--size", default="160", choices=["160", "320", "full"], help="imagenette: image size (160)")
    p.add_argument("--format", default="png", choices=["png", "jpg"], help="cifar10: file format (png: lossless)")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive in DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the splits already in --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.download import (CIFAR10_MD5, CIFAR10_URL, IMAGENETTE_SIZES, IMAGENETTE_URL, convert_cifar10,
                                 convert_imagenette, download)

    out = Path(args.output)
    archive = Path(args.archive) if args.archive else None
    if archive is None:
        if args.dataset == "cifar10":
            archive = download(CIFAR10_URL, out, CIFAR10_MD5)
        else:
            archive = download(IMAGENETTE_URL.format(IMAGENETTE_SIZES[args.size]), out)
    if args.dataset == "cifar10":
        counts = convert_cifar10(archive, out, args.format, args.overwrite, not args.no_progress)
    else:
        counts = convert_imagenette(archive, out, args.overwrite)
    if not args.archive and not args.keep_archive:
        archive.unlink()
    splits = ", ".join(f"{out / k}: {v} images" for k, v in counts.items())
    print(f"data: {args.dataset} -> {splits}; pre-train with --data {out / 'train'}, evaluate with --data {out}")
    return 0
