"""Compatibility shims for the ecosystem's packages."""

from __future__ import annotations

from PIL import Image


def patch_timm_posterize() -> None:
    """timm's RandAugment can ask for 0 bits in Posterize (magnitude 10 of 'inc1'); Pillow >= 13 rejects 0, where
    older Pillow returned a black image. Keep the old result instead of crashing a worker mid-epoch."""
    from timm.data import auto_augment

    original = auto_augment.posterize
    if getattr(original, "_emae_patched", False):
        return

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)
        return original(img, bits_to_keep, **kwargs)

    posterize._emae_patched = True
    auto_augment.posterize = posterize
    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is original:
            auto_augment.NAME_TO_OP[name] = posterize
