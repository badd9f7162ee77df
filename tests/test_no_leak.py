"""The invariant for every encoder the config accepts: no pixel hidden from a sequence (removed, or secondarily
masked) influences that sequence's encoder output.

Property-tested over every (encoder family, method, mask type) that ``emae.archs.FAMILY_MASKS`` lists; the config
accepts those and nothing else, so an encoder becomes usable only by being registered there, and then it must pass
here. Each example replaces every hidden pixel of a sequence by large noise and compares that sequence's encoder
output (exactly what the decoder or head receives), and checks that a visible pixel does change it.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import emae
from emae.archs import FAMILY_MASKS
from emae.config import METHODS
from emae.errors import ConfigError
from emae.masks import MASKS, Mask

from helpers import tiny_config
from test_umae import PYR

# one small model per registered encoder family: a new family needs a line here (test_every_family_is_tested)
TINY = {
    "vit": ["model.img_size=32", "model.patch_size=4"],
    "swin": [*PYR, "model.arch=swin_t"],
    "pvt": [*PYR, "model.arch=pvt_t"],
}
RATIO = {"block": 0.5, "random": 0.75}  # the others: 0.75
CASES = [(fam, method, mask) for fam, methods in FAMILY_MASKS.items() for method in sorted(methods)
         for mask in sorted(methods[method])]


@functools.lru_cache(maxsize=None)
def model_for(family: str, method: str, mask_type: str) -> emae.MaskedAutoencoder:
    torch.manual_seed(0)
    cfg = tiny_config(*TINY[family], f"method={method}", f"mask.type={mask_type}",
                      f"mask.ratio={RATIO.get(mask_type, 0.75)}", "mask.secondary_ratio=0.5")
    model = emae.build_model(cfg).eval()
    with torch.no_grad():  # nothing may hide behind the init (zero biases, a small mask token)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hidden_patches(mask: Mask) -> torch.Tensor:
    """(N, L) bool: removed, or kept but secondarily masked."""
    hidden = mask.mask.bool()
    if mask.secondary is not None:
        hidden = hidden.scatter(1, mask.ids_keep, mask.secondary.bool())
    return hidden


def to_pixels(patches: torch.Tensor, grid: tuple[int, int], p: int) -> torch.Tensor:
    """(N, L) bool per patch -> (N, 1, H, W) bool per pixel."""
    return patches.view(-1, *grid).repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)


def part_effect(model, imgs: torch.Tensor, mask: Mask, patches: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Max |change| of every sequence's encoder output when the pixels of ``patches`` (N, L) of *that* sequence are
    replaced by noise (K-part masks: one pass per part, other parts' sequences see other pixels changed)."""
    enc, parts = model.encoder, mask.parts
    with torch.no_grad():
        base = enc.encode_masked(imgs, mask)
        effect = torch.zeros(base.shape[0])
        for k in range(parts):
            rows = torch.arange(k, base.shape[0], parts)
            pixels = to_pixels(patches[rows], enc.grid, enc.patch_size)
            noise = torch.randn(imgs.shape, generator=gen) * 5
            out = enc.encode_masked(torch.where(pixels, noise, imgs), mask)
            effect[rows] = (out[rows] - base[rows]).abs().flatten(1).amax(1)
    return effect


def check_no_leak(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    enc = model.encoder
    imgs = torch.randn(2, enc.in_chans, *enc.img_size, generator=gen)
    mask = model.make_mask(2, generator=gen)
    hidden = hidden_patches(mask)
    leak = part_effect(model, imgs, mask, hidden, gen)
    assert leak.max() <= 1e-5, f"hidden pixels change the encoder output by up to {leak.max():.3g}"
    # and the test can see an effect: one visible patch per sequence does change its output
    visible = torch.multinomial((~hidden).float(), 1, generator=gen)
    one = torch.zeros_like(hidden).scatter(1, visible, True)
    assert part_effect(model, imgs, mask, one, gen).min() > 1e-3


@pytest.mark.parametrize("family,method,mask_type", CASES, ids=["-".join(c) for c in CASES])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_no_hidden_pixel_reaches_the_encoder(family, method, mask_type, seed):
    check_no_leak(model_for(family, method, mask_type), seed)


def test_every_family_is_tested_and_every_mask_is_reachable():
    assert set(TINY) == set(FAMILY_MASKS), "a registered encoder family needs a tiny config in TINY"
    assert {m for methods in FAMILY_MASKS.values() for masks in methods.values() for m in masks} == set(MASKS)


@pytest.mark.parametrize("family", sorted(FAMILY_MASKS))
def test_the_config_accepts_only_registered_pairs(family):
    """Every (method, mask) the family does not list is a one-line ConfigError; every listed one builds."""
    for method in METHODS:
        for mask_type in MASKS:
            over = [*TINY[family], f"method={method}", f"mask.type={mask_type}",
                    f"mask.ratio={RATIO.get(mask_type, 0.75)}"]
            if mask_type in FAMILY_MASKS[family].get(method, ()):
                tiny_config(*over)
                continue
            with pytest.raises(ConfigError) as err:
                tiny_config(*over)
            assert str(err.value).startswith(("model.arch", "mask.type")) and "\n" not in str(err.value)


@pytest.mark.parametrize("method,mask_type", [("simmim", "random"), ("umae", "uniform")])
def test_the_check_catches_an_overlapping_stem(method, mask_type):
    """A 3x3 stem that overlaps patch borders (as PVT-v2's 7x7 did) lets hidden pixels in: the check must fail."""
    torch.manual_seed(0)
    model = model_for("swin", method, mask_type)
    leaky = torch.nn.Conv2d(3, model.encoder.stem.proj.out_channels, 3, padding=1)  # stem stride 1 here
    original = model.encoder.stem.proj
    try:
        model.encoder.stem.proj = leaky
        with pytest.raises(AssertionError, match="hidden pixels change"):
            check_no_leak(model, 0)
    finally:
        model.encoder.stem.proj = original
