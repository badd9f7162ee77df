"""Run configuration: dataclass defaults <- YAML recipe <- ``key=value`` overrides, checked before any work.

Every field is reachable from the command line by its dotted name, e.g. ``train.epochs=10`` or
``model.img_size=[224,160]``. Values are parsed as YAML. Unknown keys, wrong types and out-of-range
values raise :class:`~emae.errors.ConfigError` with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .archs import (PVT_SIZES, PYRAMID_ARCHS, SWIN_SIZES, VIT_SIZES, check_method_mask, check_sr_ratios, family,
                    pyramid_dims, sr_ratios, stage_grids, stage_windows, stem_stride)
from .errors import ConfigError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
RECIPES_DIR = Path(__file__).parent / "configs"


@dataclass
class ModelConfig:
    arch: str = "vit_tiny"  # vit_tiny/small/base/large/huge; pyramids (umae, simmim): swin_t/s/b/l, pvt_t/s/m/l
    embed_dim: int | None = None  # override the named size's width (pyramids: stage 1's; later stages scale) ...
    depth: int | None = None  # ... depth (ViT) ...
    num_heads: int | None = None  # ... and heads (pyramids: stage 1's; later stages scale)
    depths: list[int] | None = None  # pyramids: blocks per stage (4 values), overrides the named size
    window_size: int = 8  # Swin: window on the pre-training grid (UM-MAE: 8 on the compact grid, x2 for fine-tuning;
    # SimMIM: 16 on the full grid, the same image area)
    sr_ratios: list[int] | None = None  # PVT: spatial reduction per stage; null: [4,2,1,1] for umae, [8,4,2,1] simmim
    img_size: int | list[int] = 32  # side, or [height, width]
    patch_size: int = 4
    in_chans: int = 3
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 128
    decoder_depth: int = 4
    decoder_num_heads: int = 4
    norm_pix_loss: bool = True
    pixel_loss: str = "auto"  # mse | l1 | auto: l1 for simmim (SimMIM and UM-MAE's models_simmim_*.py), mse otherwise

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.img_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])


@dataclass
class MaskConfig:
    type: str = "random"  # random | block | grid (mae) | parallel (emae) | uniform | parallel_uniform (umae)
    ratio: float = 0.75
    secondary_ratio: float = 0.25  # uniform masks: share of the kept tokens replaced by a mask token (UM-MAE's SM)


@dataclass
class ConsistencyConfig:
    """EMAE's self-consistency loss between parts; used with parallel masks (method emae)."""

    enabled: bool = True  # false: parallel mask without consistency (an ablation)
    weight: float = 1.0  # lambda in loss = reconstruction + lambda * consistency (unverified; paper gives none)
    distance: str = "l1"  # l1 | l2 (squared)


@dataclass
class DataConfig:
    path: str | None = None  # ImageFolder tree, folder of images, shard folder or shard URL; None: the embedded digits
    required: bool = False  # a recipe for real data: a run without data.path stops with one line (no embedded digits)
    scale: list[float] = field(default_factory=lambda: [0.2, 1.0])  # RandomResizedCrop area range
    hflip: bool = True
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    num_workers: int = 2
    cache: bool = False  # decode every image once into memory before training (small images: CIFAR is 150 MB)
    strict: bool = False  # a corrupt or unreadable file stops the run instead of being skipped
    decode: str = "cpu"  # cpu: workers decode and augment | device: workers read bytes, the GPU decodes (nvJPEG)
    shuffle_buffer: int = 2000  # shards: samples in each stream's shuffle buffer (more mixes better, holds more bytes)
    # --- issue 25: the crop-first uint8 pipeline and the loader's own settings
    draft: bool = True  # JPEG: decode at 1/2..1/8 scale (DCT) when the crop is >= 2x the output on both sides
    resize: str = "pil"  # crop resampler: pil (torchvision's numbers) | torch (uint8 bicubic: ~3x faster, within 1 level)
    prefetch_factor: int = 2  # batches each loader worker prepares ahead (torch's default)
    device_prefetch: bool = False  # prepare the next batch on the device (side CUDA stream, a thread) during the step


@dataclass
class TrainConfig:
    epochs: int = 6
    batch_size: int = 64  # per process, per micro-batch
    accum_iter: int = 1  # gradient accumulation: effective batch = batch_size * accum_iter * world size
    base_lr: float = 1.5e-3  # lr = base_lr * effective batch / 256 unless lr is given
    lr_batch_unit: str = "images"  # what "batch" counts in that rule: images | sequences (EMAE: K per image)
    lr: float | None = None
    min_lr: float = 0.0
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 uses a loss scaler)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # CPU threads for torch (set_num_threads); null: torch's default. Changes float rounding
    seed: int = 0
    save_every: int = 1  # write a checkpoint every N epochs (and always at the end)
    keep_last: int = 0  # keep only the newest N checkpoints; 0 keeps all
    max_steps: int | None = None  # run length in optimiser steps (the schedule spans it); overrides epochs
    save_every_steps: int = 0  # also write a checkpoint every N optimiser steps; 0: off
    stop_after_steps: int | None = None  # stop (with a checkpoint) after this many optimiser steps; schedule unchanged
    log_every: int = 10  # optimiser steps between log lines
    num_vis: int = 8  # images in the reconstruction picture
    compile: bool = False  # torch.compile the model's training forward (pays off on GPUs, not on CPUs)
    tf32: bool = True  # TF32 matmuls for fp32 work on CUDA (Ampere and newer); no effect on CPU
    max_bad_steps: int = 20  # stop after this many consecutive steps with a non-finite loss or gradient
    distributed: str = "auto"  # auto (ddp when launched with several processes) | none | ddp | fsdp
    dist_backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    fsdp_checkpoint: str = "full"  # full: one file gathered on rank 0 | sharded: a folder of per-rank shards
    activation_checkpointing: bool = False  # recompute each Transformer block in backward: less memory, ~30% slower
    tensorboard: bool = True  # TensorBoard event files in RUN/tb: every scalar of log.jsonl, the reconstruction grid
    wandb: bool = False  # also log to Weights & Biases (pip install 'emae[wandb]'; WANDB_MODE=offline keeps it local)
    wandb_project: str = "emae"
    wandb_name: str | None = None  # W&B run name; None: the run folder's name


@dataclass
class Config:
    method: str = "mae"
    output_dir: str | None = None  # None: runs/<method>-<timestamp>
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


METHODS = ("mae", "emae", "umae", "simmim")
# emae: a parallel mask (K parts per image) + self-consistency; umae: uniform masks (ViT, Swin, PVT);
# simmim: a pyramid encoder on all tokens with mask tokens (UM-MAE's baseline)
PRECISIONS = ("fp32", "bf16", "fp16")
PIXEL_LOSSES = ("auto", "mse", "l1")
DISTRIBUTED = ("auto", "none", "ddp", "fsdp")
DIST_BACKENDS = ("auto", "nccl", "gloo")
FSDP_CHECKPOINTS = ("full", "sharded")
LR_BATCH_UNITS = ("images", "sequences")


# ---------------------------------------------------------------- loading


def all_keys(obj: Any = None, prefix: str = "") -> list[str]:
    obj = obj if obj is not None else Config()
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown(key: str) -> ConfigError:
    near = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    if not near:  # try the last part alone, e.g. "epoch" -> "train.epochs"
        tails = {k.rsplit(".", 1)[-1]: k for k in all_keys()}
        hit = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(tails), n=1, cutoff=0.6)
        near = [tails[hit[0]]] if hit else []
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(key, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {_show(value)} is not a {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [_coerce(key, v, item_tp) for v in value]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: {_show(value)} is not a {_type_name(tp)}")


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(data)}")
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in hints:
            raise _unknown(str(full))
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(full, value, hints[key]))


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except Exception:  # noqa: BLE001 - YAMLError, or ValueError/RecursionError from e.g. "2001-13-45"
        value = raw
    return key.strip(), value


def set_key(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key, e.g. ``set_key(cfg, "train.epochs", 5)``."""
    node: dict = {}
    cursor = node
    parts = key.split(".")
    for p in parts[:-1]:
        cursor = cursor.setdefault(p, {})
    cursor[parts[-1]] = value
    _apply(cfg, node)


def resolve_recipe(name: str) -> Path:
    """A YAML path, or the name of a recipe shipped in ``configs/`` (with or without ``.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (RECIPES_DIR / name, RECIPES_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise ConfigError(f"config file {name!r} not found (shipped recipes: {', '.join(known)})")


def load_config(config_file: str | None = None, overrides: list[str] | None = None, **flags: Any) -> Config:
    """Defaults, then the YAML file, then ``flags`` (dotted keys), then ``key=value`` overrides; validated."""
    cfg = Config()
    _merge(cfg, flags, overrides, config_file)
    return cfg


def config_from_dict(data: dict, flags: dict | None = None, overrides: list[str] | None = None) -> Config:
    """A saved config (e.g. from a checkpoint), with optional flags and overrides on top; validated."""
    cfg = Config()
    _apply(cfg, data)
    _merge(cfg, flags or {}, overrides)
    return cfg


def _merge(cfg: Config, flags: dict, overrides: list[str] | None, config_file: str | None = None) -> None:
    if config_file:
        path = resolve_recipe(config_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError(f"config file {path}: cannot be read ({e.strerror or type(e).__name__})") from None
        except Exception as e:  # noqa: BLE001 - YAMLError, bad UTF-8, or ValueError/RecursionError from odd YAML
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"config file {path}: not valid YAML ({first})") from None
        _apply(cfg, data)
    for key, value in flags.items():
        if value is not None:
            set_key(cfg, key, value)
    for text in overrides or []:
        set_key(cfg, *parse_override(text))
    validate(cfg)


# ---------------------------------------------------------------- validation


MAX_INT = 2**31 - 1  # no count, size or seed needs more; bigger ones overflow torch and numpy


def _show(value: Any) -> str:
    """``repr`` of a value, shortened so that an error stays one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {_show(value)} is not allowed; {allowed}")


def _check_leaves(obj: Any, prefix: str = "") -> None:
    """Type-independent limits on every value: finite floats, ints within MAX_INT, strings without NUL."""
    for f in dataclasses.fields(obj):
        key, value = prefix + f.name, getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_leaves(value, key + ".")
            continue
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float):
                _require(math.isfinite(v), key, value, "values must be finite numbers")
            elif isinstance(v, int) and not isinstance(v, bool):
                _require(abs(v) <= MAX_INT, key, value, f"integers must lie within ±{MAX_INT}")
            elif isinstance(v, str):
                _require("\0" not in v, key, value, "text must not contain a NUL character")


def check_pyramid(cfg: Config) -> None:
    """The pyramid settings that must agree with the image and token grids (one-line ConfigErrors)."""
    m = cfg.model
    stem_stride(m.patch_size)
    if m.depth is not None:
        raise ConfigError(f"model.depth: {m.depth} is for ViTs; a pyramid encoder takes model.depths (4 stages)")
    if m.sr_ratios is not None and m.arch not in PVT_SIZES:
        raise ConfigError(f"model.sr_ratios: {m.sr_ratios} is for PVT encoders, not {m.arch}")
    dims, depths, heads = pyramid_dims(m)
    if len(depths) != 4 or min(depths) < 1:
        raise ConfigError(f"model.depths: {m.depths!r} is not allowed; give 4 positive block counts, one per stage")
    for d, h in zip(dims, heads):
        if h < 1 or d % h:
            raise ConfigError(f"model.embed_dim: stage width {d} is not divisible by its heads {h} (model.num_heads)")
    grid = (m.image_size[0] // m.patch_size, m.image_size[1] // m.patch_size)
    compact = cfg.method == "umae"
    base = (grid[0] // 2, grid[1] // 2) if compact else grid
    if base[0] % 2 or base[1] % 2 or min(base) < 2:
        what = "compact grid (half the token grid)" if compact else "token grid"
        raise ConfigError(f"model.img_size: {m.image_size[0]}x{m.image_size[1]} gives a {what} of {base[0]}x{base[1]}; "
                          f"the last stage (stride 2 x model.patch_size on it) needs both sides even")
    grids = stage_grids(grid, compact)
    if m.arch in SWIN_SIZES:
        stage_windows(grids, m.window_size)
    else:
        check_sr_ratios(sr_ratios(m, compact), grids)


def validate(cfg: Config) -> None:
    """Check every value's range and the combinations that must agree."""
    from .losses import DISTANCES
    from .masks import CELL_MASKS, MASKS, PARALLEL_MASKS, UNIFORM_MASKS, num_parts
    from .masks.uniform import check_cells

    m, k, d, t = cfg.model, cfg.mask, cfg.data, cfg.train
    _check_leaves(cfg)
    _require(cfg.method in METHODS, "method", cfg.method, f"choose one of {list(METHODS)}")
    family(m.arch)
    for key in ("embed_dim", "depth", "num_heads"):
        v = getattr(m, key)
        _require(v is None or v > 0, f"model.{key}", v, "must be a positive integer or null")
    for key in ("patch_size", "in_chans", "decoder_embed_dim", "decoder_depth", "decoder_num_heads"):
        v = getattr(m, key)
        _require(v > 0, f"model.{key}", v, "must be a positive integer")
    _require(m.mlp_ratio > 0, "model.mlp_ratio", m.mlp_ratio, "must be positive")
    _require(m.pixel_loss in PIXEL_LOSSES, "model.pixel_loss", m.pixel_loss, f"choose one of {list(PIXEL_LOSSES)}")
    if m.arch in VIT_SIZES:
        width, _, heads = VIT_SIZES[m.arch]
        width, heads = m.embed_dim or width, m.num_heads or heads
        _require(width % heads == 0, "model.num_heads", heads, f"must divide the encoder width {width}")
    _require(m.decoder_embed_dim % m.decoder_num_heads == 0, "model.decoder_num_heads", m.decoder_num_heads,
             f"must divide model.decoder_embed_dim {m.decoder_embed_dim}")
    size = m.img_size
    _require(isinstance(size, int) or len(size) == 2, "model.img_size", size, "give one side or [height, width]")
    h, w = m.image_size
    _require(h > 0 and w > 0, "model.img_size", size, "sides must be positive")
    if h % m.patch_size or w % m.patch_size:
        raise ConfigError(f"model.img_size: {h}x{w} is not divisible by model.patch_size {m.patch_size}")
    _require(k.type in MASKS, "mask.type", k.type, f"choose one of {sorted(MASKS)}")
    _require(0.0 < k.ratio < 1.0, "mask.ratio", k.ratio, "must be in (0, 1)")
    check_method_mask(m.arch, cfg.method, k.type)
    if k.type in PARALLEL_MASKS:
        num_parts(k.ratio)
    if k.type in CELL_MASKS:
        check_cells((h // m.patch_size, w // m.patch_size), k.ratio, k.type)
    if k.type in UNIFORM_MASKS:
        _require(0.0 <= k.secondary_ratio < 1.0, "mask.secondary_ratio", k.secondary_ratio, "must be in [0, 1)")
    _require(m.window_size > 0, "model.window_size", m.window_size, "must be a positive integer")
    if m.arch in PYRAMID_ARCHS:
        check_pyramid(cfg)
    else:
        _require(m.depths is None, "model.depths", m.depths, "is for pyramid encoders; a ViT takes model.depth")
        _require(m.sr_ratios is None, "model.sr_ratios", m.sr_ratios, "is for PVT encoders")
    c = cfg.consistency
    _require(c.weight >= 0, "consistency.weight", c.weight, "must be >= 0")
    _require(c.distance in DISTANCES, "consistency.distance", c.distance, f"choose one of {list(DISTANCES)}")
    if int((h // m.patch_size) * (w // m.patch_size) * (1 - k.ratio)) < 1:
        raise ConfigError(f"mask.ratio: {k.ratio} keeps no patch of the {h // m.patch_size}x{w // m.patch_size} grid")
    _require(len(d.scale) == 2 and 0 < d.scale[0] <= d.scale[1] <= 1, "data.scale", d.scale, "need 0 < min <= max <= 1")
    _require(len(d.mean) == m.in_chans, "data.mean", d.mean, f"need one value per channel ({m.in_chans})")
    _require(len(d.std) == m.in_chans and all(s > 0 for s in d.std), "data.std", d.std,
             f"need one positive value per channel ({m.in_chans})")
    _require(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    _require(d.shuffle_buffer > 0, "data.shuffle_buffer", d.shuffle_buffer, "must be a positive integer")
    _require(d.decode in ("cpu", "device"), "data.decode", d.decode, "choose cpu or device")
    if d.decode == "device":
        _require(d.path is not None, "data.decode", d.decode, "device decoding reads image files: give data.path")
        _require(not d.cache, "data.decode", d.decode, "device decoding and data.cache=true exclude each other")
    # --- issue 25
    _require(d.resize in ("pil", "torch"), "data.resize", d.resize, "choose pil or torch")
    if d.decode == "device":
        _require(d.resize == "pil", "data.resize", d.resize, "is for data.decode=cpu (device decoding resizes there)")
    _require(d.prefetch_factor > 0, "data.prefetch_factor", d.prefetch_factor, "must be a positive integer")
    _require(m.in_chans in (1, 3, 4), "model.in_chans", m.in_chans,
             "images load as 1 (L), 3 (RGB) or 4 (RGBA) channels; other counts need tensors via the Python API")
    for key in ("epochs", "batch_size", "accum_iter", "save_every", "log_every"):
        v = getattr(t, key)
        _require(v > 0, f"train.{key}", v, "must be a positive integer")
    _require(t.base_lr > 0, "train.base_lr", t.base_lr, "must be positive")
    _require(t.lr_batch_unit in LR_BATCH_UNITS, "train.lr_batch_unit", t.lr_batch_unit, f"choose one of {list(LR_BATCH_UNITS)}")
    _require(t.lr is None or t.lr > 0, "train.lr", t.lr, "must be positive or null")
    _require(t.min_lr >= 0, "train.min_lr", t.min_lr, "must be >= 0")
    _require(t.warmup_epochs >= 0, "train.warmup_epochs", t.warmup_epochs, "must be >= 0")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _require(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", t.betas, "need two values in [0, 1)")
    _require(t.precision in PRECISIONS, "train.precision", t.precision, f"choose one of {list(PRECISIONS)}")
    _require(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"), "train.device", t.device,
             "use auto, cpu, cuda or cuda:N")
    _require(t.threads is None or t.threads > 0, "train.threads", t.threads, "must be positive or null")
    _require(t.keep_last >= 0, "train.keep_last", t.keep_last, "must be >= 0")
    _require(t.max_steps is None or t.max_steps > 0, "train.max_steps", t.max_steps, "must be positive or null")
    _require(t.save_every_steps >= 0, "train.save_every_steps", t.save_every_steps, "must be >= 0")
    _require(t.stop_after_steps is None or t.stop_after_steps > 0, "train.stop_after_steps", t.stop_after_steps,
             "must be positive or null")
    _require(t.num_vis >= 0, "train.num_vis", t.num_vis, "must be >= 0")
    _require(0 <= t.seed, "train.seed", t.seed, f"must be in [0, {MAX_INT}]")
    _require(t.max_bad_steps > 0, "train.max_bad_steps", t.max_bad_steps, "must be a positive integer")
    for key, allowed in (("distributed", DISTRIBUTED), ("dist_backend", DIST_BACKENDS),
                         ("fsdp_checkpoint", FSDP_CHECKPOINTS)):
        v = getattr(t, key)
        _require(v in allowed, f"train.{key}", v, f"choose one of {list(allowed)}")
    if t.fsdp_checkpoint == "sharded":
        _require(t.distributed == "fsdp", "train.fsdp_checkpoint", t.fsdp_checkpoint,
                 "sharded checkpoints need train.distributed: fsdp")
    if t.dist_backend == "nccl":
        _require(t.device != "cpu", "train.dist_backend", t.dist_backend,
                 "nccl needs CUDA; use gloo with train.device cpu")
