"""``emae shards write``: an image folder into WebDataset tar shards that ``--data`` streams, locally or from a URL."""

from __future__ import annotations

import argparse

EPILOG = """The shards keep each image's encoded bytes (JPEG stays JPEG) and, for an ImageFolder tree, its class;
unreadable files are skipped and counted. shards.json (written last) lists every shard with its count and labels.
Copy the folder anywhere (e.g. aws s3 sync DIR s3://bucket/cifar10-train) and pass the folder or its URL as --data.
--max-side N re-encodes images larger than N px (longer side) at N: smaller shards and a decode several times
cheaper, but every crop then comes from at most N px; with N under about 2.2x the crop size of a 0.2-1 scale
range, most crops are resized up (blurrier than full-resolution crops), which costs accuracy (README, "Shards").

examples:
  emae shards write --data ../shared/data/cifar10/train --output shards/cifar10-train
  emae shards write --data imagenet/train --output shards/in1k-512 --max-side 512 --quality 90
  emae pretrain --config mae_vit_tiny_p4_cifar10 --data shards/cifar10-train
  emae pretrain --config mae_vit_base_p16_in1k --data https://host/imagenet-train/      # or s3://, gs://, pipe:...
  emae finetune CKPT --train shards/cifar10-train --val shards/cifar10-test
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="write an image folder as shards that pretrain / finetune / knn stream",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True)
    w = actions.add_parser("write", help="an image folder into WebDataset tar shards", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--data", required=True, metavar="DIR", help="ImageFolder tree (labels kept) or any folder of images")
    w.add_argument("--output", required=True, metavar="DIR", help="shard folder to write")
    w.add_argument("--shard-size", type=int, default=2000, metavar="N", help="images per shard (2000)")
    w.add_argument("--shard-bytes", type=float, default=1e9, metavar="B", help="start a new shard past B bytes (1e9)")
    w.add_argument("--seed", type=int, default=0, help="the random order in which images are written (0)")
    w.add_argument("--no-shuffle", action="store_true", help="write in the folder's sorted order")
    w.add_argument("--max-side", type=int, metavar="N", help="re-encode images larger than N px (longer side) at N")
    w.add_argument("--quality", type=int, metavar="Q", help="JPEG quality of those re-encoded images (90)")
    w.add_argument("--overwrite", action="store_true", help="replace shards already in --output")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    w.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.shard_writer import write_shards

    r = write_shards(args.data, args.output, args.shard_size, int(args.shard_bytes), args.seed, not args.no_shuffle,
                     args.overwrite, not args.no_progress, args.max_side, args.quality)
    skipped = f"; skipped {r.skipped} unreadable files, first: {r.first_skipped[0]}" if r.skipped else ""
    resized = f"; {r.resized} resized to {args.max_side} px" if args.max_side else ""
    print(f"shards: {r.images} images in {r.shards} shards ({r.bytes / 1e6:.1f} MB) in {r.output}{resized}{skipped}")
    return 0
