"""``emae export``: an encoder to timm, a Hugging Face ViTMAE folder, safetensors, or a detectron2 / mmdet / mmseg
backbone."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import CHECKPOINT_HELP, add_trust_arg

EPILOG = """targets:
  timm         OUTPUT.pth (or .safetensors): timm names; OUTPUT.json (same name, .json suffix) names the
               timm.create_model call.
               timm.create_model(name, **kwargs).load_state_dict(sd, strict=False) misses only the head.
  hf           OUTPUT folder: ViTMAEForPreTraining (checkpoint with decoder) or ViTMAEModel (encoder only, or
               --encoder-only), plus an image-processor config; transformers' from_pretrained loads it.
               ViTMAEModel.from_pretrained on a folder with a decoder lists the decoder's keys as unexpected:
               export with --encoder-only for a clean encoder folder.
  safetensors  OUTPUT.safetensors: the encoder in timm names (--decoder adds the official decoder_* keys) and
               emae's model config as metadata.
  vitdet       OUTPUT.pth: {"model": encoder} in the layout of the official mae_pretrain_vit_*.pth (no decoder, no
               mask token), for detectron2's ViTDet and mmdet's ViTDet project (ViT only; mmdet on a ViT: the same).
  mmseg        ViT: mmseg's MAE backbone names (its beit2mmseg mapping); Swin: as mmdet.
  mmdet        Swin: mmdet's / mmseg's SwinTransformer keys under backbone.*; the position MLP becomes each block's
               relative-position table for --window-size (default: the fine-tuning window); the 2x2 merges are
               converted approximately (logged). PVT is refused (no faithful mapping).
               Beside every dense export, OUTPUT.json holds the backbone arguments and what the framework
               initialises itself.

examples:
  emae export runs/cifar/checkpoint-00019500.pt --to timm --output exported/vit_tiny_p4.pth
  emae export mae_visualize_vit_large.pth --to hf --output exported/mae-large
  emae export mae_pretrain_vit_base.pth --to mmseg --output exported/mae_base_mmseg.pth
  emae export runs/umae-swin/checkpoint-00010000.pt --to mmdet --window-size 16 --output exported/swin_t.pth
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export an encoder to timm, Hugging Face, safetensors, ViTDet, mmseg or mmdet",
                       epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP.rsplit(", or 'random'", 1)[0])
    p.add_argument("--to", required=True, choices=["timm", "hf", "safetensors", "vitdet", "mmseg", "mmdet"],
                   help="target format")
    p.add_argument("--output", required=True, metavar="PATH", help="file (all but hf) or folder (hf)")
    p.add_argument("--decoder", action="store_true", help="safetensors: include the decoder")
    p.add_argument("--encoder-only", action="store_true", help="hf: a ViTMAEModel folder without the decoder")
    p.add_argument("--window-size", type=int, metavar="W",
                   help="Swin --to mmdet/mmseg: the window of the relative-position tables (default: fine-tuning's)")
    p.add_argument("--num-heads", type=int, help="encoder heads, where a plain state dict leaves them open")
    p.add_argument("--decoder-num-heads", type=int, help="decoder heads (default: decoder width / 32)")
    add_trust_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..interop.dense_export import DENSE_TARGETS, export_dense
    from ..interop.export import export
    from ..interop.load import read_checkpoint

    if args.encoder_only and args.to != "hf":
        raise ConfigError(f"--encoder-only is for --to hf (--to {args.to} exports the encoder alone already)")
    if args.decoder and args.to in DENSE_TARGETS:
        raise ConfigError(f"--decoder is for --to safetensors (--to {args.to} exports a backbone, no decoder)")
    loaded = read_checkpoint(args.checkpoint, num_heads=args.num_heads, decoder_num_heads=args.decoder_num_heads,
                             trust=args.trust_checkpoint)
    if args.to in DENSE_TARGETS:
        report = export_dense(loaded, args.to, args.output, args.window_size)
        print(f"export: {loaded.source} checkpoint {args.checkpoint} -> {args.to} {report.file} "
              f"(+ {Path(report.file).with_suffix('.json')})")
        for line in report.lines():
            print(f"  {line}")
        return 0
    out = export(loaded, args.to, args.output, args.decoder, args.encoder_only, args.window_size)
    print(f"export: {loaded.source} checkpoint {args.checkpoint} -> {args.to} {out}")
    return 0
