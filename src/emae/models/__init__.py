"""Encoders, decoders, the masked-autoencoder method that joins them, and the dense (segmentation) head."""

from ..archs import ARCHS, PYRAMID_ARCHS, VIT_SIZES, encoder_dims, pyramid_dims
from .build import build_model, build_pyramid
from .decoder import MAEDecoder
from .dense import SegmentationModel, SimpleFeaturePyramid, UperHead
from .mae import MAEOutput, MaskedAutoencoder
from .vit import ViTEncoder

__all__ = ["ARCHS", "PYRAMID_ARCHS", "build_pyramid", "pyramid_dims", "MAEDecoder", "MAEOutput", "MaskedAutoencoder",
           "SegmentationModel", "SimpleFeaturePyramid", "UperHead",
           "VIT_SIZES", "ViTEncoder", "build_model", "encoder_dims"]
