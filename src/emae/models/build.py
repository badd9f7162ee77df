"""Build a method's model from the ``model`` and ``mask`` sections of a config.

A method is a mask strategy + encoder + decoder + loss: MAE / EMAE (ViT + MAE decoder), UM-MAE (ViT with a
secondary-mask token + MAE decoder, or Swin / PVT on the compact grid + :class:`UMDecoder`), SimMIM (Swin / PVT
on the full grid + :class:`SimMIMHead`).
"""

from __future__ import annotations

from functools import partial

from ..config import Config, ModelConfig
from ..errors import ConfigError
from ..losses import PixelReconstructionLoss, SelfConsistencyLoss
from ..masks import PARALLEL_MASKS, UNIFORM_MASKS, get_mask_fn
from .decoder import MAEDecoder
from .mae import MaskedAutoencoder
from .pvt import FULL_SR, PRETRAIN_SR, PVT_SIZES, PVTEncoder
from .pyramid import PyramidEncoder, stage_grids, stem_stride
from .pyramid_decoder import SimMIMHead, UMDecoder
from .swin import SWIN_SIZES, SwinEncoder, stage_windows
from .vit import VIT_SIZES, UMViTEncoder, ViTEncoder

PYRAMID_ARCHS = {**SWIN_SIZES, **PVT_SIZES}
ARCHS = {**VIT_SIZES, **PYRAMID_ARCHS}


def encoder_dims(m: ModelConfig) -> tuple[int, int, int]:
    """(width, depth, heads) of a ViT: the named size, with any explicit value taking precedence."""
    width, depth, heads = VIT_SIZES[m.arch]
    return (m.embed_dim or width, m.depth or depth, m.num_heads or heads)


def pyramid_dims(m: ModelConfig) -> tuple[list[int], list[int], list[int]]:
    """(widths, depths, heads) per stage of a Swin / PVT: the named size, scaled by ``embed_dim`` / ``num_heads``."""
    if m.arch in SWIN_SIZES:
        width, depths, heads = SWIN_SIZES[m.arch]
        dims, heads_ = [width * 2**i for i in range(4)], [heads * 2**i for i in range(4)]
    else:
        dims, depths, heads_, _ = PVT_SIZES[m.arch]
    dims = [d * m.embed_dim // dims[0] for d in dims] if m.embed_dim else list(dims)
    heads_ = [h * m.num_heads // heads_[0] for h in heads_] if m.num_heads else list(heads_)
    return dims, list(m.depths or depths), heads_


def sr_ratios(m: ModelConfig, compact: bool) -> list[int]:
    return list(m.sr_ratios or (PRETRAIN_SR if compact else FULL_SR))


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
        return
    srs = sr_ratios(m, compact)
    if len(srs) != 4 or any(r < 1 or gh % r or gw % r for r, (gh, gw) in zip(srs, grids)):
        raise ConfigError(f"model.sr_ratios: {srs} is not allowed; give 4 ratios that divide the stage grids "
                          f"{[f'{a}x{b}' for a, b in grids]}")


def build_pyramid(m: ModelConfig, compact: bool, window_size: int | None = None, sr: list[int] | None = None,
                  drop_path: float = 0.0, img_size: tuple[int, int] | None = None) -> PyramidEncoder:
    """A Swin / PVT encoder; ``compact`` for UM-MAE pre-training, else on the full grid (SimMIM, fine-tuning)."""
    dims, depths, heads = pyramid_dims(m)
    size = tuple(img_size or m.image_size)
    if m.arch in SWIN_SIZES:
        return SwinEncoder(size, m.patch_size, m.in_chans, dims[0], depths, heads[0], window_size or m.window_size,
                           m.mlp_ratio, drop_path, compact)
    ratios = PVT_SIZES[m.arch][3]
    return PVTEncoder(size, m.patch_size, m.in_chans, dims, depths, heads, ratios, sr or sr_ratios(m, compact),
                      drop_path, compact)


def build_model(cfg: Config) -> MaskedAutoencoder:
    m = cfg.model
    out_dim = m.patch_size**2 * m.in_chans
    if m.decoder_embed_dim % m.decoder_num_heads or m.decoder_embed_dim % 4:
        raise ConfigError(
            f"model.decoder_embed_dim: {m.decoder_embed_dim} must be divisible by 4 and by "
            f"model.decoder_num_heads ({m.decoder_num_heads})"
        )
    dec = (m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads, m.mlp_ratio)
    if m.arch in PYRAMID_ARCHS:
        encoder = build_pyramid(m, compact=cfg.method == "umae")
        if cfg.method == "umae":
            decoder = UMDecoder(encoder.grid, encoder.num_features, out_dim, *dec)
        else:
            decoder = SimMIMHead(encoder.num_features, out_dim)
    else:
        width, depth, heads = encoder_dims(m)
        if width % heads or width % 4:
            raise ConfigError(f"model.embed_dim: {width} must be divisible by 4 and by model.num_heads ({heads})")
        vit = UMViTEncoder if cfg.method == "umae" else ViTEncoder  # MAE checkpoints may be shown uniform masks
        encoder = vit(m.image_size, m.patch_size, m.in_chans, width, depth, heads, m.mlp_ratio)
        decoder = MAEDecoder(encoder.grid, width, out_dim, *dec)
    c = cfg.consistency
    consistency = SelfConsistencyLoss(c.distance) if cfg.mask.type in PARALLEL_MASKS and c.enabled else None
    loss = PixelReconstructionLoss(m.patch_size, m.norm_pix_loss, consistency, c.weight)
    mask_fn = get_mask_fn(cfg.mask.type)
    if cfg.mask.type in UNIFORM_MASKS:
        mask_fn = partial(mask_fn, secondary_ratio=cfg.mask.secondary_ratio)
    return MaskedAutoencoder(encoder, decoder, loss, mask_fn, cfg.mask.ratio)
