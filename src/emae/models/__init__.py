"""Encoders, decoders, and the masked-autoencoder method that joins them."""

from .build import build_model, encoder_dims
from .decoder import MAEDecoder
from .mae import MAEOutput, MaskedAutoencoder
from .vit import VIT_SIZES, ViTEncoder

__all__ = ["MAEDecoder", "MAEOutput", "MaskedAutoencoder", "VIT_SIZES", "ViTEncoder", "build_model", "encoder_dims"]
