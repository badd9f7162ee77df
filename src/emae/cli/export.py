"""``emae export``: an encoder to timm, to a Hugging Face ViTMAE folder, or to safetensors."""

from __future__ import annotations

import argparse

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

examples:
  emae export runs/cifar/checkpoint-00019500.pt --to timm --output exported/vit_tiny_p4.pth
  emae export mae_visualize_vit_large.pth --to hf --output exported/mae-large
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export an encoder to timm, Hugging Face or safetensors", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP.rsplit(", or 'random'", 1)[0])
    p.add_argument("--to", required=True, choices=["timm", "hf", "safetensors"], help="target format")
    p.add_argument("--output", required=True, metavar="PATH", help="file (timm, safetensors) or folder (hf)")
    p.add_argument("--decoder", action="store_true", help="safetensors: include the decoder")
    p.add_argument("--encoder-only", action="store_true", help="hf: a ViTMAEModel folder without the decoder")
    p.add_argument("--num-heads", type=int, help="encoder heads, where a plain state dict leaves them open")
    p.add_argument("--decoder-num-heads", type=int, help="decoder heads (default: decoder width / 32)")
    add_trust_arg(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..interop.export import export
    from ..interop.load import read_checkpoint

    if args.encoder_only and args.to != "hf":
        raise ConfigError(f"--encoder-only is for --to hf (--to {args.to} exports the encoder alone already)")
    loaded = read_checkpoint(args.checkpoint, num_heads=args.num_heads, decoder_num_heads=args.decoder_num_heads,
                             trust=args.trust_checkpoint)
    out = export(loaded, args.to, args.output, args.decoder, args.encoder_only)
    print(f"export: {loaded.source} checkpoint {args.checkpoint} -> {args.to} {out}")
    return 0
