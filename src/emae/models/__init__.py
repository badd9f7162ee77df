"""Encoders, decoders, and the masked-autoencoder method that joins them."""

from .build import ARCHS, PYRAMID_ARCHS, build_model, build_pyramid, encoder_dims, pyramid_dims
from .decoder import MAEDecoder
from .mae import MAEOutput, MaskedAutoencoder
from .vit import VIT_SIZES, ViTEncoder

__all__ = ["ARCHS", "PYRAMID_ARCHS", "build_pyramid", "pyramid_dims", "MAEDecoder", "MAEOutput", "MaskedAutoencoder", "VIT_SIZES", "ViTEncoder", "build_model", "encoder_dims"]
