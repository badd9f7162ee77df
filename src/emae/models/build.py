"""Build a method's model from the ``model`` and ``mask`` sections of a config."""

from __future__ import annotations

from ..config import Config, ModelConfig
from ..errors import ConfigError
from ..losses import PixelReconstructionLoss, SelfConsistencyLoss
from ..masks import get_mask_fn
from .decoder import MAEDecoder
from .mae import MaskedAutoencoder
from .vit import VIT_SIZES, ViTEncoder


def encoder_dims(m: ModelConfig) -> tuple[int, int, int]:
    """(width, depth, heads): the named size, with any explicit value taking precedence."""
    width, depth, heads = VIT_SIZES[m.arch]
    return (m.embed_dim or width, m.depth or depth, m.num_heads or heads)


def build_model(cfg: Config) -> MaskedAutoencoder:
    m = cfg.model
    width, depth, heads = encoder_dims(m)
    if width % heads or width % 4:
        raise ConfigError(f"model.embed_dim: {width} must be divisible by 4 and by model.num_heads ({heads})")
    if m.decoder_embed_dim % m.decoder_num_heads or m.decoder_embed_dim % 4:
        raise ConfigError(
            f"model.decoder_embed_dim: {m.decoder_embed_dim} must be divisible by 4 and by "
            f"model.decoder_num_heads ({m.decoder_num_heads})"
        )
    encoder = ViTEncoder(m.image_size, m.patch_size, m.in_chans, width, depth, heads, m.mlp_ratio)
    out_dim = m.patch_size**2 * m.in_chans
    decoder = MAEDecoder(
        encoder.grid, width, out_dim, m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads, m.mlp_ratio
    )
    c = cfg.consistency
    consistency = SelfConsistencyLoss(c.distance) if cfg.method == "emae" and c.enabled else None
    loss = PixelReconstructionLoss(m.patch_size, m.norm_pix_loss, consistency, c.weight)
    return MaskedAutoencoder(encoder, decoder, loss, get_mask_fn(cfg.mask.type), cfg.mask.ratio)
