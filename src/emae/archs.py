"""Named encoders: their sizes, their family, the (method, mask type) pairs each family is accepted with, and the
pyramid geometry checks. Pure data and arithmetic (no torch, no models), so that the configuration validates a
run without importing the model code, and the model builder reads the same tables.

Every family listed in :data:`FAMILY_MASKS` is property-tested for the invariant "no pixel hidden from a
sequence (removed or secondarily masked) influences that sequence's encoder output" over every pair it lists
(``tests/test_no_leak.py``); the config accepts nothing else, so a new encoder is usable only once it passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

ModelLike = Any  # a ModelConfig (arch, embed_dim, depth, num_heads, depths, sr_ratios); not imported: config reads us

# width, depth, heads
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
    "vit_huge": (1280, 32, 16),
}
# stage-1 width, depths, stage-1 heads (doubling every stage), position-MLP width (UM-MAE's models_mae_swin.py:
# 32, and 64 for Swin-L: mae_swin_large_256_dec512d8b64pmd)
SWIN_SIZES: dict[str, tuple[int, tuple[int, ...], int, int]] = {
    "swin_t": (96, (2, 2, 6, 2), 3, 32),
    "swin_s": (96, (2, 2, 18, 2), 3, 32),
    "swin_b": (128, (2, 2, 18, 2), 4, 32),
    "swin_l": (192, (2, 2, 18, 2), 6, 64),
}
# PVT-v1 (Wang et al. 2021, and UM-MAE's models_mae_pvt.py for pvt_s): widths, depths, heads, mlp ratios
PVT_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[float, ...]]] = {
    "pvt_t": ((64, 128, 320, 512), (2, 2, 2, 2), (1, 2, 5, 8), (8, 8, 4, 4)),
    "pvt_s": ((64, 128, 320, 512), (3, 4, 6, 3), (1, 2, 5, 8), (8, 8, 4, 4)),
    "pvt_m": ((64, 128, 320, 512), (3, 4, 18, 3), (1, 2, 5, 8), (8, 8, 4, 4)),
    "pvt_l": ((64, 128, 320, 512), (3, 8, 27, 3), (1, 2, 5, 8), (8, 8, 4, 4)),
}
PVT_PRETRAIN_SR = (4, 2, 1, 1)  # UM-MAE on the compact grid (models_mae_pvt.py)
PVT_FULL_SR = (8, 4, 2, 1)  # the full grid: SimMIM (models_simmim_pvt.py) and fine-tuning (models_pvt.py)

PYRAMID_ARCHS = {**SWIN_SIZES, **PVT_SIZES}
ARCHS = {**VIT_SIZES, **PYRAMID_ARCHS}

# encoder family -> method -> the mask types it is accepted (and tested leak-free) with
FAMILY_MASKS: dict[str, dict[str, frozenset[str]]] = {
    "vit": {"mae": frozenset({"random", "block", "grid"}), "emae": frozenset({"parallel"}),
            "umae": frozenset({"uniform", "parallel_uniform"})},
    "swin": {"umae": frozenset({"uniform", "parallel_uniform"}), "simmim": frozenset({"random", "uniform"})},
    "pvt": {"umae": frozenset({"uniform", "parallel_uniform"}), "simmim": frozenset({"random", "uniform"})},
}
# names emae no longer builds, and why
RETIRED = {name: "timm's PVT-v2 (overlapping 7x7 stem, 3x3 merges, depthwise convs in every MLP) lets hidden pixels "
                 "into visible tokens; use the reference's PVT-v1-style pvt_t/pvt_s/pvt_m/pvt_l"
           for name in ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_s", "pvt_v2_b2")}


def family(arch: str) -> str:
    if arch in VIT_SIZES:
        return "vit"
    if arch in SWIN_SIZES:
        return "swin"
    if arch in PVT_SIZES:
        return "pvt"
    if arch in RETIRED:
        raise ConfigError(f"model.arch: {arch!r} is not available for masked pre-training: {RETIRED[arch]}")
    raise ConfigError(f"model.arch: {arch!r} is not allowed; choose one of {sorted(ARCHS)}")


def check_method_mask(arch: str, method: str, mask_type: str) -> None:
    """The encoder family must list the method, and the method the mask type (one-line ConfigErrors)."""
    fam = family(arch)
    methods = FAMILY_MASKS[fam]
    if method not in methods:
        raise ConfigError(f"model.arch: {arch} ({fam}) is not accepted with method {method}; it takes method "
                          f"{' or '.join(sorted(methods))}")
    if mask_type not in methods[method]:
        owners = sorted(m for m, types in methods.items() if mask_type in types)
        hint = (f"{mask_type} masks need method: {' or '.join(owners)}" if method == "mae" and owners
                else f"method {method} needs one of {sorted(methods[method])}")
        raise ConfigError(f"mask.type: {mask_type!r} is not allowed; {hint}")


def encoder_dims(m: ModelLike) -> tuple[int, int, int]:
    """(width, depth, heads) of a ViT: the named size, with any explicit value taking precedence."""
    width, depth, heads = VIT_SIZES[m.arch]
    return (m.embed_dim or width, m.depth or depth, m.num_heads or heads)


def pyramid_dims(m: ModelLike) -> tuple[list[int], list[int], list[int]]:
    """(widths, depths, heads) per stage of a Swin / PVT: the named size, scaled by ``embed_dim`` / ``num_heads``."""
    if m.arch in SWIN_SIZES:
        width, depths, heads, _ = SWIN_SIZES[m.arch]
        dims, heads_ = [width * 2**i for i in range(4)], [heads * 2**i for i in range(4)]
    else:
        dims, depths, heads_, _ = PVT_SIZES[m.arch]
    dims = [d * m.embed_dim // dims[0] for d in dims] if m.embed_dim else list(dims)
    heads_ = [h * m.num_heads // heads_[0] for h in heads_] if m.num_heads else list(heads_)
    return dims, list(m.depths or depths), heads_


def sr_ratios(m: ModelLike, compact: bool) -> list[int]:
    """PVT's reduction ratios: ``model.sr_ratios``, or the reference's for the grid the encoder runs on."""
    return list(m.sr_ratios or (PVT_PRETRAIN_SR if compact else PVT_FULL_SR))


# ---------------------------------------------------------------- pyramid geometry


def full_grid_geometry(m: ModelLike, from_compact: bool) -> tuple[int, list[int]]:
    """Swin's window and PVT's reduction ratios on the full grid (fine-tuning, frozen features, exports): after
    UM-MAE's compact-grid pre-training (``from_compact``) the window doubles, so that it covers the same image area,
    and PVT takes the reference's [8, 4, 2, 1]; a SimMIM or fine-tuned model keeps its own."""
    if from_compact:
        return m.window_size * 2, list(PVT_FULL_SR)
    return m.window_size, sr_ratios(m, compact=False)


NUM_STAGES = 4


def stem_stride(patch_size: int) -> int:
    if patch_size % 4:
        raise ConfigError(f"model.patch_size: {patch_size} is not allowed for a pyramid encoder; it must be a multiple "
                          f"of 4 (the stem has stride patch_size / 4 and the last stage 2 x patch_size)")
    return patch_size // 4


def stage_grids(grid: tuple[int, int], compact: bool) -> list[tuple[int, int]]:
    """Token grid of every stage for a mask-token grid ``grid`` (halved when the encoder runs on the compact grid)."""
    h, w = (grid[0] // 2, grid[1] // 2) if compact else grid
    return [(h * 4 >> i, w * 4 >> i) for i in range(NUM_STAGES)]


def stage_windows(grids: list[tuple[int, int]], window: int) -> list[int]:
    """The window of every stage (the window, or the whole grid when smaller); an error if it does not tile."""
    out = []
    for i, (h, w) in enumerate(grids):
        win = min(window, h, w)
        if h % win or w % win:
            raise ConfigError(f"model.window_size: {window} does not divide the {h}x{w} token grid of stage {i + 1} "
                              f"(the compact grid in UM-MAE pre-training); choose a window that tiles every stage")
        out.append(win)
    return out


def check_sr_ratios(srs: list[int], grids: list[tuple[int, int]]) -> None:
    if len(srs) != NUM_STAGES or any(r < 1 or gh % r or gw % r for r, (gh, gw) in zip(srs, grids)):
        raise ConfigError(f"model.sr_ratios: {srs} is not allowed; give 4 ratios that divide the stage grids "
                          f"{[f'{a}x{b}' for a, b in grids]}")


def check_model(m: ModelLike, compact: bool) -> None:
    """The encoder geometry a config asks for, checked where the size tables are (one-line ConfigErrors): a ViT's
    heads divide its width; a pyramid's stages, windows and reduction ratios fit its token grids (``compact``: the
    half-size grid of UM-MAE pre-training)."""
    fam = family(m.arch)
    if fam == "vit":
        width, _, heads = encoder_dims(m)
        if width % heads:
            raise ConfigError(f"model.num_heads: {heads} is not allowed; must divide the encoder width {width}")
        if width % 4:
            raise ConfigError(f"model.embed_dim: {width} is not allowed; the sin-cos positions need a multiple of 4")
        for key, what in (("depths", "is for pyramid encoders; a ViT takes model.depth"),
                          ("sr_ratios", "is for PVT encoders")):
            if getattr(m, key) is not None:
                raise ConfigError(f"model.{key}: {getattr(m, key)!r} is not allowed; {what}")
        return
    stem_stride(m.patch_size)
    if m.depth is not None:
        raise ConfigError(f"model.depth: {m.depth} is for ViTs; a pyramid encoder takes model.depths (4 stages)")
    if m.sr_ratios is not None and fam != "pvt":
        raise ConfigError(f"model.sr_ratios: {m.sr_ratios} is for PVT encoders, not {m.arch}")
    dims, depths, heads = pyramid_dims(m)
    if len(depths) != NUM_STAGES or min(depths) < 1:
        raise ConfigError(f"model.depths: {m.depths!r} is not allowed; give 4 positive block counts, one per stage")
    for d, h in zip(dims, heads):
        if h < 1 or d % h:
            raise ConfigError(f"model.embed_dim: stage width {d} is not divisible by its heads {h} (model.num_heads)")
    grid = (m.image_size[0] // m.patch_size, m.image_size[1] // m.patch_size)
    base = (grid[0] // 2, grid[1] // 2) if compact else grid
    if base[0] % 2 or base[1] % 2 or min(base) < 2:
        what = "compact grid (half the token grid)" if compact else "token grid"
        raise ConfigError(f"model.img_size: {m.image_size[0]}x{m.image_size[1]} gives a {what} of {base[0]}x{base[1]}; "
                          f"the last stage (stride 2 x model.patch_size on it) needs both sides even")
    grids = stage_grids(grid, compact)
    if fam == "swin":
        stage_windows(grids, m.window_size)
    else:
        check_sr_ratios(sr_ratios(m, compact), grids)


# ---------------------------------------------------------------- what evaluation needs to know of a family


@dataclass(frozen=True)
class FamilyTraits:
    cls_token: bool  # frozen features can be the cls token (else the global average only)
    layer_decay: float  # fine-tuning's default layer-wise lr decay


FAMILY_TRAITS = {
    "vit": FamilyTraits(cls_token=True, layer_decay=0.65),  # MAE's ViT-B fine-tuning recipe (§A.3)
    "swin": FamilyTraits(cls_token=False, layer_decay=0.85),  # UM-MAE's Makefile: finetune_*_swin_tiny_256_*
    "pvt": FamilyTraits(cls_token=False, layer_decay=0.85),  # ... and finetune_*_pvt_small_256_*
}


def traits(arch: str) -> FamilyTraits:
    return FAMILY_TRAITS[family(arch)]


def resolve_pool(arch: str, pool: str | None, option: str = "--pool") -> str:
    """The frozen-feature pooling of an encoder: None is 'cls' where there is a cls token, else 'avg'; 'cls'
    without one is a one-line error."""
    has_cls = traits(arch).cls_token
    if pool is None:
        return "cls" if has_cls else "avg"
    if pool == "cls" and not has_cls:
        raise ConfigError(f"{option} cls: a {arch} encoder has no cls token; its features are the global average of "
                          f"the last stage ({option} avg)")
    return pool
