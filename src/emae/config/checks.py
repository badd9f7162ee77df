"""Checks of a pre-training config: every value's range and the combinations that must agree (one-line errors).
The encoder-specific geometry is checked by :func:`emae.archs.check_model`, next to the size tables."""

from __future__ import annotations

import importlib.util

from ..archs import check_method_mask, check_model
from ..errors import ConfigError
from .loop import check_loop
from .typed import choose, positive, require

METHODS = ("mae", "emae", "umae", "simmim")
# emae: a parallel mask (K parts per image) + self-consistency; umae: uniform masks (ViT, Swin, PVT);
# simmim: a pyramid encoder on all tokens with mask tokens (UM-MAE's baseline)
PIXEL_LOSSES = ("auto", "l2", "l1")
DISTRIBUTED = ("auto", "none", "ddp", "fsdp")
DIST_BACKENDS = ("auto", "nccl", "gloo")
FSDP_CHECKPOINTS = ("full", "sharded")
LR_BATCH_UNITS = ("images", "sequences")
DECODERS = ("auto", "pil", "simplejpeg")  # emae.data.jpeg


def validate(cfg) -> None:
    """Check every value's range and the combinations that must agree, of a pre-training
    :class:`~emae.config.Config`."""
    from ..losses import DISTANCES
    from ..masks import CELL_MASKS, MASKS, PARALLEL_MASKS, UNIFORM_MASKS, num_parts
    from ..masks.uniform import check_cells

    m, k, d, t = cfg.model, cfg.mask, cfg.data, cfg.train
    choose(cfg.method, "method", METHODS)
    positive(m, "model.", "embed_dim", "depth", "num_heads")
    positive(m, "model.", "patch_size", "in_chans", "decoder_embed_dim", "decoder_depth", "decoder_num_heads",
             "mlp_ratio", "window_size", allow_none=False)
    choose(m.pixel_loss, "model.pixel_loss", PIXEL_LOSSES)
    require(m.decoder_embed_dim % m.decoder_num_heads == 0, "model.decoder_num_heads", m.decoder_num_heads,
            f"must divide model.decoder_embed_dim {m.decoder_embed_dim}")
    require(m.decoder_embed_dim % 4 == 0, "model.decoder_embed_dim", m.decoder_embed_dim,
            "the sin-cos positions need a multiple of 4")
    size = m.img_size
    require(isinstance(size, int) or len(size) == 2, "model.img_size", size, "give one side or [height, width]")
    h, w = m.image_size
    require(h > 0 and w > 0, "model.img_size", size, "sides must be positive")
    if h % m.patch_size or w % m.patch_size:
        raise ConfigError(f"model.img_size: {h}x{w} is not divisible by model.patch_size {m.patch_size}")
    choose(k.type, "mask.type", sorted(MASKS))
    require(0.0 < k.ratio < 1.0, "mask.ratio", k.ratio, "must be in (0, 1)")
    check_method_mask(m.arch, cfg.method, k.type)
    check_model(m, compact=cfg.method == "umae")
    if k.type in PARALLEL_MASKS:
        num_parts(k.ratio)
    if k.type in CELL_MASKS:
        check_cells((h // m.patch_size, w // m.patch_size), k.ratio, k.type)
    if k.type in UNIFORM_MASKS:
        require(0.0 <= k.secondary_ratio < 1.0, "mask.secondary_ratio", k.secondary_ratio, "must be in [0, 1)")
    if int((h // m.patch_size) * (w // m.patch_size) * (1 - k.ratio)) < 1:
        raise ConfigError(f"mask.ratio: {k.ratio} keeps no patch of the {h // m.patch_size}x{w // m.patch_size} grid")
    c = cfg.consistency
    require(c.weight >= 0, "consistency.weight", c.weight, "must be >= 0")
    choose(c.distance, "consistency.distance", DISTANCES)
    require(len(d.scale) == 2 and 0 < d.scale[0] <= d.scale[1] <= 1, "data.scale", d.scale, "need 0 < min <= max <= 1")
    require(len(d.mean) == m.in_chans, "data.mean", d.mean, f"need one value per channel ({m.in_chans})")
    require(len(d.std) == m.in_chans and all(s > 0 for s in d.std), "data.std", d.std,
            f"need one positive value per channel ({m.in_chans})")
    require(d.num_workers >= 0, "data.num_workers", d.num_workers, "must be >= 0")
    positive(d, "data.", "shuffle_buffer", allow_none=False)
    require(d.decode in ("cpu", "device"), "data.decode", d.decode, "choose cpu or device")
    if d.decode == "device":
        require(d.path is not None, "data.decode", d.decode, "device decoding reads image files: give data.path")
        require(not d.cache, "data.decode", d.decode, "device decoding and data.cache=true exclude each other")
    require(d.resize in ("pil", "torch"), "data.resize", d.resize, "choose pil or torch")
    if d.decode == "device":
        require(d.resize == "pil", "data.resize", d.resize, "is for data.decode=cpu (device decoding resizes there)")
    positive(d, "data.", "prefetch_factor", allow_none=False)
    choose(d.decoder, "data.decoder", DECODERS)
    if d.decoder == "simplejpeg":
        require(importlib.util.find_spec("simplejpeg") is not None, "data.decoder", d.decoder,
                "simplejpeg is not installed: pip install 'emae[simplejpeg]', or use auto or pil")
    require(m.in_chans in (1, 3, 4), "model.in_chans", m.in_chans,
            "images load as 1 (L), 3 (RGB) or 4 (RGBA) channels; other counts need tensors via the Python API")
    check_loop(t, "train.")
    choose(t.lr_batch_unit, "train.lr_batch_unit", LR_BATCH_UNITS)
    require(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas), "train.betas", t.betas, "need two values in [0, 1)")
    require(t.num_vis >= 0, "train.num_vis", t.num_vis, "must be >= 0")
    for key, allowed in (("distributed", DISTRIBUTED), ("dist_backend", DIST_BACKENDS),
                         ("fsdp_checkpoint", FSDP_CHECKPOINTS)):
        choose(getattr(t, key), f"train.{key}", allowed)
    if t.fsdp_checkpoint == "sharded":
        require(t.distributed == "fsdp", "train.fsdp_checkpoint", t.fsdp_checkpoint,
                "sharded checkpoints need train.distributed: fsdp")
    if t.dist_backend == "nccl":
        require(t.device != "cpu", "train.dist_backend", t.dist_backend,
                "nccl needs CUDA; use gloo with train.device cpu")
    check_step_options(t)
    mon = t.monitor
    require(mon.every >= 0, "train.monitor.every", mon.every, "must be >= 0 (0: at the end of every epoch)")
    positive(mon, "train.monitor.", "images", "k", "recon_images", "batch_size", allow_none=False)
    require(mon.images >= 2, "train.monitor.images", mon.images, "need at least 2 (a k-NN bank and its queries)")


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's


def check_step_options(t) -> None:
    """The GPU step options (issue 25): each needs the setting it changes."""
    choose(t.compile_mode, "train.compile_mode", COMPILE_MODES)
    if t.compile_mode != "default":
        require(t.compile, "train.compile_mode", t.compile_mode, "needs train.compile=true")
    if t.bf16_params:
        require(t.precision == "bf16", "train.bf16_params", True, "needs train.precision=bf16")
        require(t.accum_iter == 1, "train.bf16_params", True,
                "would add gradients up in bf16: use train.accum_iter=1")
        require(t.distributed != "fsdp", "train.bf16_params", True, "is not for FSDP (it has its own mixed precision)")
    if t.fused_norm:
        require(not t.compile, "train.fused_norm", True, "is for eager steps: train.compile fuses these already")
