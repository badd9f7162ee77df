"""Build a method's model from the ``model`` and ``mask`` sections of a config.

A method is a mask strategy + encoder + decoder + loss: MAE / EMAE (ViT + MAE decoder), UM-MAE (ViT with a
secondary-mask token + MAE decoder, or Swin / PVT on the compact grid + :class:`UMDecoder`), SimMIM (Swin / PVT
on the full grid + :class:`SimMIMHead`). Which (encoder, method, mask) triples exist is
:data:`emae.archs.FAMILY_MASKS`: the config accepts those and nothing else.
"""

from __future__ import annotations

from functools import partial

from ..archs import (ARCHS, PVT_SIZES, PYRAMID_ARCHS, SWIN_SIZES, VIT_SIZES, encoder_dims, family, pyramid_dims,
                     sr_ratios)
from ..config import Config, ModelConfig
from ..errors import ConfigError
from ..losses import PixelReconstructionLoss, SelfConsistencyLoss
from ..masks import PARALLEL_MASKS, UNIFORM_MASKS, get_mask_fn
from .decoder import MAEDecoder
from .mae import MaskedAutoencoder
from .pvt import PVTEncoder
from .pyramid import PyramidEncoder
from .pyramid_decoder import SimMIMHead, UMDecoder
from .swin import SwinEncoder
from .vit import UMViTEncoder, ViTEncoder

__all__ = ["ARCHS", "PYRAMID_ARCHS", "VIT_SIZES", "build_model", "build_pyramid", "encoder_dims", "pixel_loss",
           "pyramid_dims", "sr_ratios"]


def build_pyramid(m: ModelConfig, compact: bool, window_size: int | None = None, sr: list[int] | None = None,
                  drop_path: float = 0.0, img_size: tuple[int, int] | None = None) -> PyramidEncoder:
    """A Swin / PVT encoder; ``compact`` for UM-MAE pre-training, else on the full grid (SimMIM, fine-tuning)."""
    dims, depths, heads = pyramid_dims(m)
    size = tuple(img_size or m.image_size)
    if m.arch in SWIN_SIZES:
        return SwinEncoder(size, m.patch_size, m.in_chans, dims[0], depths, heads[0], window_size or m.window_size,
                           m.mlp_ratio, drop_path, compact, pos_hidden=SWIN_SIZES[m.arch][3])
    ratios = PVT_SIZES[m.arch][3]
    return PVTEncoder(size, m.patch_size, m.in_chans, dims, depths, heads, ratios, sr or sr_ratios(m, compact),
                      drop_path, compact)


def pixel_loss(cfg: Config) -> str:
    """``model.pixel_loss``, with ``auto`` resolved: L1 for SimMIM (models_simmim_swin.py: "Following SimMIM, use L1
    loss"), MSE for the MAE family."""
    if cfg.model.pixel_loss != "auto":
        return cfg.model.pixel_loss
    return "l1" if cfg.method == "simmim" else "mse"


def build_model(cfg: Config) -> MaskedAutoencoder:
    m = cfg.model
    out_dim = m.patch_size**2 * m.in_chans
    if m.decoder_embed_dim % m.decoder_num_heads or m.decoder_embed_dim % 4:
        raise ConfigError(
            f"model.decoder_embed_dim: {m.decoder_embed_dim} must be divisible by 4 and by "
            f"model.decoder_num_heads ({m.decoder_num_heads})"
        )
    dec = (m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads, m.mlp_ratio)
    if family(m.arch) in ("swin", "pvt"):
        encoder = build_pyramid(m, compact=cfg.method == "umae")
        if cfg.method == "umae":
            decoder = UMDecoder(encoder.grid, encoder.num_features, out_dim, *dec)
        else:
            decoder = SimMIMHead(encoder.num_features, out_dim)
    else:
        width, depth, heads = encoder_dims(m)
        if width % heads or width % 4:
            raise ConfigError(f"model.embed_dim: {width} must be divisible by 4 and by model.num_heads ({heads})")
        vit = UMViTEncoder if cfg.method == "umae" else ViTEncoder
        encoder = vit(m.image_size, m.patch_size, m.in_chans, width, depth, heads, m.mlp_ratio)
        decoder = MAEDecoder(encoder.grid, width, out_dim, *dec)
    c = cfg.consistency
    consistency = SelfConsistencyLoss(c.distance) if cfg.mask.type in PARALLEL_MASKS and c.enabled else None
    loss = PixelReconstructionLoss(m.patch_size, m.norm_pix_loss, consistency, c.weight, pixel_loss(cfg))
    mask_fn = get_mask_fn(cfg.mask.type)
    if cfg.mask.type in UNIFORM_MASKS:
        mask_fn = partial(mask_fn, secondary_ratio=cfg.mask.secondary_ratio)
    return MaskedAutoencoder(encoder, decoder, loss, mask_fn, cfg.mask.ratio)
