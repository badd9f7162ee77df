"""Build a method's model from the ``model`` and ``mask`` sections of a config.

A method is a mask strategy + encoder + decoder + loss: MAE / EMAE (ViT + MAE decoder), UM-MAE (ViT with a
secondary-mask token + MAE decoder, or Swin / PVT on the compact grid + :class:`UMDecoder`), SimMIM (Swin / PVT
on the full grid + :class:`SimMIMHead`). Which (encoder, method, mask) triples exist is
:data:`emae.archs.FAMILY_MASKS`: the config accepts those and nothing else.
"""

from __future__ import annotations

from functools import partial

from ..archs import ARCHS, PVT_SIZES, PYRAMID_ARCHS, SWIN_SIZES, VIT_SIZES, encoder_dims, family, pyramid_dims, sr_ratios
from ..config import Config, ModelConfig
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


def _swin(m: ModelConfig, compact: bool, window_size: int | None, sr: list[int] | None, drop_path: float,
          size: tuple[int, int]) -> SwinEncoder:
    dims, depths, heads = pyramid_dims(m)
    return SwinEncoder(size, m.patch_size, m.in_chans, dims[0], depths, heads[0], window_size or m.window_size,
                       m.mlp_ratio, drop_path, compact, pos_hidden=SWIN_SIZES[m.arch][3])


def _pvt(m: ModelConfig, compact: bool, window_size: int | None, sr: list[int] | None, drop_path: float,
         size: tuple[int, int]) -> PVTEncoder:
    dims, depths, heads = pyramid_dims(m)
    return PVTEncoder(size, m.patch_size, m.in_chans, dims, depths, heads, PVT_SIZES[m.arch][3],
                      sr or sr_ratios(m, compact), drop_path, compact)


PYRAMIDS = {"swin": _swin, "pvt": _pvt}


def build_pyramid(m: ModelConfig, compact: bool, window_size: int | None = None, sr: list[int] | None = None,
                  drop_path: float = 0.0, img_size: tuple[int, int] | None = None) -> PyramidEncoder:
    """A Swin / PVT encoder; ``compact`` for UM-MAE pre-training, else on the full grid (SimMIM, fine-tuning).
    ``window_size`` (Swin) and ``sr`` (PVT) override the config's for that grid."""
    return PYRAMIDS[family(m.arch)](m, compact, window_size, sr, drop_path, tuple(img_size or m.image_size))


def build_vit(m: ModelConfig, method: str) -> ViTEncoder:
    """MAE's ViT encoder; UM-MAE's adds the secondary-mask token."""
    width, depth, heads = encoder_dims(m)
    vit = UMViTEncoder if method == "umae" else ViTEncoder
    return vit(m.image_size, m.patch_size, m.in_chans, width, depth, heads, m.mlp_ratio)


def pixel_loss(cfg: Config) -> str:
    """``model.pixel_loss``, with ``auto`` resolved: L1 for SimMIM (models_simmim_swin.py: "Following SimMIM, use L1
    loss"), MSE for the MAE family."""
    if cfg.model.pixel_loss != "auto":
        return cfg.model.pixel_loss
    return "l1" if cfg.method == "simmim" else "l2"


def build_model(cfg: Config) -> MaskedAutoencoder:
    """The method's composition; ``cfg`` is validated (:func:`emae.config.load`)."""
    m = cfg.model
    out_dim = m.patch_size**2 * m.in_chans
    dec = (m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads, m.mlp_ratio)
    if family(m.arch) == "vit":
        encoder = build_vit(m, cfg.method)
        decoder = MAEDecoder(encoder.grid, encoder.embed_dim, out_dim, *dec)
    elif cfg.method == "umae":  # a pyramid on the compact grid of the kept patches
        encoder = build_pyramid(m, compact=True)
        decoder = UMDecoder(encoder.grid, encoder.num_features, out_dim, *dec)
    else:  # SimMIM: a pyramid on the full grid, a linear head
        encoder = build_pyramid(m, compact=False)
        decoder = SimMIMHead(encoder.num_features, out_dim)
    c = cfg.consistency
    consistency = SelfConsistencyLoss(c.distance) if cfg.mask.type in PARALLEL_MASKS and c.enabled else None
    loss = PixelReconstructionLoss(m.patch_size, m.norm_pix_loss, consistency, c.weight, pixel_loss(cfg))
    mask_fn = get_mask_fn(cfg.mask.type)
    if cfg.mask.type in UNIFORM_MASKS:
        mask_fn = partial(mask_fn, secondary_ratio=cfg.mask.secondary_ratio)
    return MaskedAutoencoder(encoder, decoder, loss, mask_fn, cfg.mask.ratio)
