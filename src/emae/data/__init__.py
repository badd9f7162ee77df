"""Data: image folders, shards, the embedded default set, transforms, a resumable loader, segmentation pairs."""

from .embedded import EmbeddedDigits
from .folder import IMG_EXTENSIONS, ImageFiles, TransformedImages, scan_images
from .shards import ShardSet, is_shards, open_images
from .loader import ResumableSampler, batch_to_device, close_loader, collate, image_source, pretrain_loader
from .transforms import eval_transform, pretrain_transform
from .seg_layouts import ADE20K, CAMVID, SegLayout, seg_layout
from .seg_transforms import SegEvalTransform, SegTrainTransform
from .segmentation import SegmentationDataset, SegmentationFiles, limit_pairs, seg_collate, segmentation_splits

__all__ = [
    "EmbeddedDigits", "IMG_EXTENSIONS", "ImageFiles", "ResumableSampler", "ShardSet", "TransformedImages",
    "batch_to_device", "close_loader", "collate", "eval_transform", "image_source", "is_shards", "open_images",
    "pretrain_loader",
    "pretrain_transform", "scan_images",
    "ADE20K", "CAMVID", "SegEvalTransform", "SegLayout", "SegTrainTransform", "SegmentationDataset", "SegmentationFiles",
    "limit_pairs", "seg_collate", "seg_layout", "segmentation_splits",
]
