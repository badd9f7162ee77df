"""What the evaluation commands share on the command line: a typed config (``--config`` recipe, flags that are
aliases of its keys, ``key=value`` overrides anywhere), the checkpoint and its data per seed, resuming.

A flag is an alias: ``--epochs 2`` sets ``train.epochs``, as ``train.epochs=2`` does; precedence is defaults <-
recipe <- flags <- ``key=value``. Each command lists its aliases next to its parser.
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys

import torch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, ModelConfig, load
from ..engine.checkpoint import latest_valid_checkpoint, load_checkpoint
from ..errors import ConfigError
from ..interop.load import Loaded, random_checkpoint, read_checkpoint

CHECKPOINT_HELP = ("emae checkpoint, official MAE .pth (encoder-only or full), timm ViT state dict (.pth / "
                   ".safetensors), Hugging Face ViTMAE folder, or 'random' (a fresh encoder, see --arch)")
TRUST_HELP = ("unpickle checkpoint files in full, which can run code stored in them: only for files from a source you "
              "trust (default: weights only, refusing anything but tensors and plain values)")
PREFIX = "cfg:"  # argparse dest of an alias flag: cfg:<dotted key>
FLAGS: dict[str, str] = {}  # dotted key -> the flag that is its alias (for error lines)


def add_trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)


def default_of(root: type, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), root())


def alias(group, root: type, flag: str, key: str, help: str, **kwargs) -> None:
    """``flag`` as an alias of the config key ``key`` (its default shown in the help)."""
    FLAGS[key] = flag
    default = default_of(root, key)
    if "choices" not in kwargs and "action" not in kwargs:
        kwargs.setdefault("metavar", key.rsplit(".", 1)[-1].upper())
    shown = "" if kwargs.get("action") in ("store_const",) or default is None else f" ({default})"
    group.add_argument(flag, dest=PREFIX + key, default=None, help=help + shown, **kwargs)


def switch(group, flag: str, key: str, value: bool, help: str) -> None:
    FLAGS[key] = flag
    group.add_argument(flag, dest=PREFIX + key, action="store_const", const=value, default=None, help=help)


LOOP_FLAGS = {  # the recipe flags of the commands that train: flag -> (train.* key, help, argparse type)
    "--epochs": ("epochs", "epochs", int),
    "--warmup-epochs": ("warmup_epochs", "linear warmup, then cosine", float),
    "--base-lr": ("base_lr", "lr = base_lr x batch / 256", float),
    "--lr": ("lr", "absolute lr (overrides --base-lr)", float),
    "--min-lr": ("min_lr", "end of the cosine", float),
    "--layer-decay": ("layer_decay", "layer-wise lr decay (default: the encoder family's: ViT 0.65 as MAE, Swin / "
                      "PVT 0.85 as UM-MAE's Makefile)", float),
    "--weight-decay": ("weight_decay", "weight decay", float),
    "--drop-path": ("drop_path", "stochastic depth rate", float),
    "--log-every": ("log_every", "optimiser steps between log lines", int),
}


def loop_aliases(group, root: type, *flags: str) -> None:
    """The named recipe flags (:data:`LOOP_FLAGS`) as aliases of ``train.*``."""
    for flag in flags:
        key, help, tp = LOOP_FLAGS[flag]
        alias(group, root, flag, f"train.{key}", help, type=tp)


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k[len(PREFIX):]: v for k, v in vars(args).items() if k.startswith(PREFIX) and v is not None}


def add_config_args(p: argparse.ArgumentParser, root: type, run_section: str, trains: bool = False,
                    image_folders: bool = True) -> None:
    """The checkpoint (positional), ``--config``, ``key=value`` overrides, and the aliases every evaluation
    command has: the model hints, the data, the machine, the run folder (``run_section``: where batch_size, device,
    precision, seed and seeds live). ``trains``: also ``--resume`` / ``--force-config`` and the tracker flags;
    ``image_folders`` False: the command reads another data layout and adds its own data flags."""
    p.add_argument("checkpoint", nargs="?", help=CHECKPOINT_HELP + " (with --resume: the run's own)")
    p.add_argument("--config", help=f"YAML recipe (command: {root.command}): a path or a shipped recipe's name")
    add_trust_arg(p)
    g = p.add_argument_group("model (for 'random', or where the checkpoint leaves it open)")
    alias(g, root, "--arch", "model.arch", "random: named size vit_tiny|small|base|large|huge")
    alias(g, root, "--embed-dim", "model.embed_dim", "random: width (overrides --arch)", type=int)
    alias(g, root, "--depth", "model.depth", "random: depth (overrides --arch)", type=int)
    alias(g, root, "--num-heads", "model.num_heads", "attention heads (not stored in plain state dicts)", type=int)
    alias(g, root, "--patch-size", "model.patch_size", "random: patch size", type=int)
    alias(g, root, "--in-chans", "model.in_chans", "random: input channels", type=int)
    alias(g, root, "--model-img-size", "model.img_size", "pre-training image size, where the position embedding is "
          "not a square grid; random: default --img-size, else 32", type=int, metavar="N")
    if image_folders:
        add_image_folder_args(p, root)
    add_run_args(p, root, run_section, trains)


def add_image_folder_args(p: argparse.ArgumentParser, root: type) -> None:
    g = p.add_argument_group("data (ImageFolder trees: <dir>/<class>/*.jpg)")
    alias(g, root, "--data", "data.path", "folder with train/ and val/ (or test/)", metavar="DIR")
    alias(g, root, "--train", "data.train", "training images (with --val)", metavar="DIR")
    alias(g, root, "--val", "data.val", "validation images (with --train)", metavar="DIR")
    alias(g, root, "--max-train", "data.max_train", "a seeded class-balanced subset of N training images", type=int,
          metavar="N")
    alias(g, root, "--max-val", "data.max_val", "... and of N validation images", type=int, metavar="N")
    alias(g, root, "--img-size", "data.img_size", "evaluation resolution (default: the checkpoint's; position "
          "embeddings are interpolated)", type=int, metavar="N")
    alias(g, root, "--mean", "data.mean", "normalisation mean (default: the checkpoint's, else ImageNet)", type=float,
          nargs="+")
    alias(g, root, "--std", "data.std", "normalisation std (default: the checkpoint's, else ImageNet)", type=float,
          nargs="+")
    alias(g, root, "--crop-pct", "data.crop_pct", "eval: resize to size/crop_pct, centre crop (default 0.875 from "
          "128 px, else 1)", type=float)
    alias(g, root, "--workers", "data.num_workers", "data loader processes (0: in the main process)", type=int)


def add_run_args(p: argparse.ArgumentParser, root: type, s: str, trains: bool) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--output", dest=PREFIX + "output_dir", metavar="DIR",
                   help=f"results folder (default: runs/{root.command}-<timestamp>)")
    g.add_argument("--overwrite", action="store_true", help="replace results already in --output")
    alias(g, root, "--batch-size", f"{s}.batch_size", "images per batch", type=int)
    alias(g, root, "--device", f"{s}.device", "auto | cpu | cuda | cuda:N")
    alias(g, root, "--precision", f"{s}.precision", "autocast precision", choices=["fp32", "bf16", "fp16"])
    alias(g, root, "--seed", f"{s}.seed", "seed", type=int)
    alias(g, root, "--seeds", f"{s}.seeds", "run once per seed, report mean ± std: N (N seeds from --seed on) or a "
          "list, e.g. 0 1 2; each seed's results in <output>/seed-<s>/", type=int, nargs="+", metavar="S")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    if trains:
        g.add_argument("--resume", metavar="auto|PATH", help="continue the run in --output (auto: each seed's newest "
                       "valid checkpoint) or from a run checkpoint, with the config saved in it")
        g.add_argument("--force-config", action="store_true",
                       help="resume even though key=value / flags change keys a resumed run keeps (listed loudly)")
        g = p.add_argument_group("tracking (log.jsonl is always written)")
        switch(g, "--no-tensorboard", f"{s}.tensorboard", False, "no TensorBoard event files in OUTPUT/tb")
        switch(g, "--wandb", f"{s}.wandb", True, "also log to Weights & Biases (pip install 'emae[wandb]'; "
               "WANDB_MODE=offline keeps it local)")
        alias(g, root, "--wandb-project", f"{s}.wandb_project", "W&B project")
        alias(g, root, "--wandb-name", f"{s}.wandb_name", "W&B run name (default: the output folder's name)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=5")


def load_eval_config(args: argparse.Namespace, root: type, saved: dict | None = None):
    """The command's config from its recipe (or a resumed run's saved config), flags and overrides; validated."""
    flags = flags_of(args)
    if args.checkpoint is not None:
        flags["checkpoint"] = args.checkpoint
    if args.trust_checkpoint:
        flags["trust_checkpoint"] = True
    try:
        if saved is not None and not args.config:
            cfg = load(root, None, args.overrides, flags, data=saved)
        else:
            cfg = load(root, args.config, args.overrides, flags)
    except ConfigError as e:
        raise ConfigError(with_flag(str(e), flags)) from None
    if run_section(cfg).threads is not None:  # every command's CPU threads, set before any work
        torch.set_num_threads(run_section(cfg).threads)
    return cfg


def with_flag(message: str, flags: dict) -> str:
    """An error about a key set by its flag names the flag too: ``--holdout (probe.holdout): ...``."""
    key, _, rest = message.partition(":")
    return f"{FLAGS[key]} ({key}):{rest}" if key in flags and key in FLAGS else message


def run_section(cfg) -> Any:
    """The section that holds the machine options and the seeds (``train`` or ``run``)."""
    return cfg.train if hasattr(cfg, "train") else cfg.run


def with_seed(cfg, seed: int):
    cfg = copy.deepcopy(cfg)
    run_section(cfg).seed = seed
    return cfg


def load_source(cfg, size: tuple[int, int] | None = None) -> Loaded:
    """The checkpoint an evaluation config names: a file or folder, or a fresh 'random' encoder of the seed (at
    ``size``, else ``model.img_size``, else ``data.img_size``, else 32)."""
    m = cfg.model
    if cfg.checkpoint == "random":
        side = m.img_size or (cfg.data.img_size if isinstance(cfg.data.img_size, int) else None) or 32
        model = ModelConfig(arch=m.arch, embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
                            img_size=list(size) if size and not m.img_size else side, patch_size=m.patch_size,
                            in_chans=m.in_chans)
        check = Config(model=model)
        if model.in_chans != 3:
            check.data.mean, check.data.std = [0.5] * model.in_chans, [0.5] * model.in_chans
        check.validate()
        return random_checkpoint(model, run_section(cfg).seed)
    return read_checkpoint(cfg.checkpoint, num_heads=m.num_heads, img_size=m.img_size, trust=cfg.trust_checkpoint)


def eval_data(cfg, loaded: Loaded):
    from ..eval.data import eval_sources, split_folders

    d = cfg.data
    train, val = split_folders(d.path, d.train, d.val)
    return eval_sources(train, val, loaded.config.model.in_chans, d.max_train, d.max_val, run_section(cfg).seed)


@dataclass
class SeededSources:
    """The config, checkpoint and data of each seed (``sources[seed]`` = (cfg, loaded, train, val)): a 'random'
    encoder and class-balanced subsets are drawn from the seed. The first seed's are read at once, so bad input
    fails before any work; a checkpoint file is read only once."""

    cfg: Any
    seeds: list[int]
    first: tuple = field(init=False)

    def __post_init__(self) -> None:
        cfg = with_seed(self.cfg, self.seeds[0])
        loaded = load_source(cfg)
        self.first = (cfg, loaded, *eval_data(cfg, loaded))

    @staticmethod
    def load_only(cfg, seed: int) -> Loaded:
        """The checkpoint of the first seed (a dense command reads its data itself)."""
        return load_source(with_seed(cfg, seed), size=getattr(cfg.data, "size", None)
                           if cfg.checkpoint == "random" else None)

    @staticmethod
    def config_and_source(cfg, seed: int, first: Loaded, first_seed: int):
        """A seed's config and checkpoint: a 'random' encoder is drawn from the seed, a file is read once."""
        c = with_seed(cfg, seed)
        if cfg.checkpoint != "random" or seed == first_seed:
            return c, first
        return c, SeededSources.load_only(cfg, seed)

    def __getitem__(self, seed: int):
        if seed == self.seeds[0]:
            return self.first
        cfg = with_seed(self.cfg, seed)
        loaded = load_source(cfg) if self.cfg.checkpoint == "random" else self.first[1]
        return (cfg, loaded, *eval_data(cfg, loaded))


def resume_config(args: argparse.Namespace) -> dict | None:
    """The saved config of the run ``--resume`` continues (a path, or auto: the newest checkpoint in --output or
    in its first seed folder); None for a fresh run or a run folder without checkpoints yet."""
    if args.resume is None:
        return None
    saved = _saved_config(args)
    if saved is not None and isinstance(saved.get("train"), dict):
        saved["train"]["stop_after_steps"] = None  # a stop applies to the invocation that asked for it
    return saved


def _saved_config(args: argparse.Namespace) -> dict | None:
    output = vars(args).get(PREFIX + "output_dir")
    if args.resume != "auto":
        return load_checkpoint(args.resume, peek=True)["config"]
    if not output:
        raise ConfigError("--resume auto needs --output: the run folder to continue")
    for folder in [Path(output), *sorted(Path(output).glob("seed-*"))]:
        found = latest_valid_checkpoint(folder)
        if found:
            return found[1]["config"]
    return None


def resume_point(args: argparse.Namespace, folder: Path, cfg, force: bool) -> Path | None:
    """The run checkpoint a seed's folder continues from (checked against ``cfg``; see emae.engine.resume)."""
    from ..engine.resume import announce, check_resume_config

    if args.resume is None:
        return None
    found = latest_valid_checkpoint(folder) if args.resume == "auto" else (Path(args.resume),
                                                                           load_checkpoint(args.resume, peek=True))
    if not found:
        return None
    path, ckpt = found
    if ckpt.get("command") != cfg.command:
        raise ConfigError(f"{path} is a checkpoint of `emae {ckpt.get('command', 'pretrain')}`, not of "
                          f"`emae {cfg.command}`")
    changes = check_resume_config(cfg, ckpt, path, 1, force)
    announce(path, ckpt, changes, force)
    return path


def warn(message: str) -> None:
    print(f"emae: warning: {message}", file=sys.stderr)


def positive(name: str, value: float | None) -> None:
    """A one-line error for a non-positive option (None means 'not given' and passes)."""
    if value is not None and value <= 0:
        raise ConfigError(f"{name}: {value!r} must be positive")
