"""Arguments shared by the evaluation commands: the checkpoint, the data, the run folder, the machine."""

from __future__ import annotations

import argparse
import sys

from ..config import Config, ModelConfig, validate
from ..errors import ConfigError
from ..interop.load import Loaded, random_checkpoint, read_checkpoint

CHECKPOINT_HELP = ("emae checkpoint, official MAE .pth (encoder-only or full), timm ViT state dict (.pth / "
                   ".safetensors), Hugging Face ViTMAE folder, or 'random' (a fresh encoder, see --arch)")
TRUST_HELP = ("unpickle checkpoint files in full, which can run code stored in them: only for files from a source you "
              "trust (default: weights only, refusing anything but tensors and plain values)")


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    add_trust_arg(p)
    g = p.add_argument_group("model (for 'random', or where the checkpoint leaves it open)")
    g.add_argument("--arch", default="vit_tiny", help="random: named size vit_tiny|small|base|large|huge (vit_tiny)")
    g.add_argument("--embed-dim", type=int, help="random: width (overrides --arch)")
    g.add_argument("--depth", type=int, help="random: depth (overrides --arch)")
    g.add_argument("--num-heads", type=int, help="attention heads (not stored in plain state dicts; inferred from width)")
    g.add_argument("--patch-size", type=int, default=4, help="random: patch size (4)")
    g.add_argument("--in-chans", type=int, default=3, help="random: input channels (3)")
    g.add_argument("--model-img-size", type=int, metavar="N",
                   help="pre-training image size, where the position embedding is not a square grid; random: default 32")


def load_source(args: argparse.Namespace) -> Loaded:
    if args.checkpoint == "random":
        m = ModelConfig(arch=args.arch, embed_dim=args.embed_dim, depth=args.depth, num_heads=args.num_heads,
                        img_size=args.model_img_size or getattr(args, "img_size", None) or 32,
                        patch_size=args.patch_size, in_chans=args.in_chans)
        cfg = Config(model=m)
        if m.in_chans != 3:
            cfg.data.mean, cfg.data.std = [0.5] * m.in_chans, [0.5] * m.in_chans
        validate(cfg)
        return random_checkpoint(m, getattr(args, "seed", 0))
    return read_checkpoint(args.checkpoint, num_heads=args.num_heads, img_size=args.model_img_size,
                           trust=args.trust_checkpoint)


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (ImageFolder trees: <dir>/<class>/*.jpg)")
    g.add_argument("--data", metavar="DIR", help="folder with train/ and val/ (or test/)")
    g.add_argument("--train", metavar="DIR", help="training images (with --val)")
    g.add_argument("--val", metavar="DIR", help="validation images (with --train)")
    g.add_argument("--max-train", type=int, metavar="N", help="use a seeded class-balanced subset of N training images")
    g.add_argument("--max-val", type=int, metavar="N", help="... and of N validation images")
    g.add_argument("--img-size", type=int, metavar="N",
                   help="evaluation resolution (default: the checkpoint's; position embeddings are interpolated)")
    g.add_argument("--mean", type=float, nargs="+", help="normalisation mean (default: the checkpoint's, else ImageNet)")
    g.add_argument("--std", type=float, nargs="+", help="normalisation std (default: the checkpoint's, else ImageNet)")
    g.add_argument("--crop-pct", type=float, help="eval: resize to size/crop_pct, centre crop (default 0.875 from 128 px, else 1)")


def add_run_args(p: argparse.ArgumentParser, batch_size: int, seeds: bool = False) -> None:
    """``seeds``: also ``--seeds`` (the command runs once per seed, see :mod:`emae.eval.seeds`)."""
    g = p.add_argument_group("run")
    g.add_argument("--output", metavar="DIR", help="results folder (default: runs/<command>-<timestamp>)")
    g.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    g.add_argument("--batch-size", type=int, default=batch_size, help=f"images per batch ({batch_size})")
    g.add_argument("--workers", type=int, default=0, help="data loader processes (0: in the main process)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast precision (fp32)")
    g.add_argument("--seed", type=int, default=0)
    if seeds:
        g.add_argument("--seeds", type=int, nargs="+", metavar="S",
                       help="run once per seed, report mean ± std: N (N seeds from --seed on) or a list, e.g. 0 1 2; "
                            "each seed's results in <output>/seed-<s>/")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def seed_args(args: argparse.Namespace, seed: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "seed": seed})


class SeededSources:
    """The checkpoint and data of each seed (``sources[seed]`` = (args, loaded, train, val)): a 'random' encoder and
    class-balanced subsets are drawn from the seed. The first seed's are read at once, so bad input fails before
    any work; a checkpoint file is read only once."""

    def __init__(self, args: argparse.Namespace, seeds: list[int]) -> None:
        self.args, self.seeds = args, seeds
        a = seed_args(args, seeds[0])
        loaded = load_source(a)
        self.first = (a, loaded, *eval_data(a, loaded))

    def __getitem__(self, seed: int):
        if seed == self.seeds[0]:
            return self.first
        a = seed_args(self.args, seed)
        loaded = load_source(a) if self.args.checkpoint == "random" else self.first[1]
        return (a, loaded, *eval_data(a, loaded))


def warn(message: str) -> None:
    print(f"emae: warning: {message}", file=sys.stderr)


def add_tracking_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracking (log.jsonl is always written)")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files in OUTPUT/tb")
    g.add_argument("--wandb", action="store_true", help="also log to Weights & Biases (pip install 'emae[wandb]'; "
                   "WANDB_MODE=offline keeps it local)")
    g.add_argument("--wandb-project", default="emae", help="W&B project (emae)")
    g.add_argument("--wandb-name", help="W&B run name (default: the output folder's name)")


def tracking_options(args: argparse.Namespace) -> dict:
    if not hasattr(args, "no_tensorboard"):  # commands without a training log (knn)
        return {}
    return {"tensorboard": not args.no_tensorboard, "wandb": args.wandb, "wandb_project": args.wandb_project,
            "wandb_name": args.wandb_name}


def eval_options(args: argparse.Namespace, **extra):
    from ..eval.common import EvalOptions

    return EvalOptions(batch_size=args.batch_size, workers=args.workers, device=args.device, precision=args.precision,
                       seed=args.seed, img_size=args.img_size, mean=args.mean, std=args.std, crop_pct=args.crop_pct,
                       max_train=args.max_train, max_val=args.max_val, progress=not args.no_progress,
                       **tracking_options(args), **extra)


def eval_data(args: argparse.Namespace, loaded: Loaded):
    from ..eval.data import eval_sources, split_folders

    train, val = split_folders(args.data, args.train, args.val)
    return eval_sources(train, val, loaded.config.model.in_chans, args.max_train, args.max_val, args.seed)


def positive(name: str, value: float | None) -> None:
    """A one-line error for a non-positive option (None means 'not given' and passes)."""
    if value is not None and value <= 0:
        raise ConfigError(f"{name}: {value!r} must be positive")
