"""Masking invariants, property-tested."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emae.errors import ConfigError
from emae.masks import MASKS, block_mask, get_mask_fn, grid_mask, random_mask
from emae.masks.uniform import cell_tokens

grids = st.tuples(st.integers(1, 12), st.integers(1, 12))


@pytest.mark.parametrize("fn", [random_mask, block_mask], ids=["random", "block"])
@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 5), grid=grids, ratio=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_random_and_block_mask_invariants(fn, batch, grid, ratio, seed):
    length = grid[0] * grid[1]
    num_keep = int(length * (1 - ratio))
    if num_keep < 1:
        with pytest.raises(ConfigError, match="keeps no patch"):
            fn(batch, grid, ratio, generator=torch.Generator().manual_seed(seed))
        return
    m = fn(batch, grid, ratio, generator=torch.Generator().manual_seed(seed))
    assert_valid(m, batch, length, num_keep)
    again = fn(batch, grid, ratio, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(m.mask, again.mask)  # the generator reproduces it


def assert_valid(m, batch: int, length: int, num_keep: int) -> None:
    """The Mask contract for a single-part mask that keeps ``num_keep`` of ``length`` patches."""
    assert m.ids_keep.shape == (batch, num_keep)  # kept count is exact
    assert m.mask.shape == m.ids_restore.shape == (batch, length)
    assert (m.mask.sum(1) == length - num_keep).all()
    # the mask agrees with the indices: kept patches are exactly ids_keep
    kept = torch.zeros(batch, length).scatter_(1, m.ids_keep, 1.0)
    assert torch.equal(kept, 1 - m.mask)
    # ids_restore inverts the shuffle: shuffled order (ids_keep first) gathered by ids_restore is identity
    ids_shuffle = torch.argsort(m.ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :num_keep], m.ids_keep)
    assert torch.equal(torch.gather(ids_shuffle, 1, m.ids_restore), torch.arange(length).expand(batch, -1))
    assert m.parts == 1 and m.secondary is None


def test_noise_and_generator_reproduce():
    noise = torch.rand(3, 16)
    a, b = random_mask(3, (4, 4), 0.75, noise=noise), random_mask(3, (4, 4), 0.75, noise=noise)
    assert torch.equal(a.ids_keep, b.ids_keep)
    c = random_mask(3, (4, 4), generator=torch.Generator().manual_seed(1))
    d = random_mask(3, (4, 4), generator=torch.Generator().manual_seed(1))
    assert torch.equal(c.mask, d.mask)
    # keeps the lowest-noise patches, as MAE does
    assert torch.equal(a.ids_keep.sort(1).values, noise.argsort(1)[:, :4].sort(1).values)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval(ratio):
    with pytest.raises(ConfigError, match="outside"):
        random_mask(2, (4, 4), ratio)


def test_wrong_noise_shape_and_unknown_strategy():
    with pytest.raises(ConfigError, match="noise has shape"):
        random_mask(2, (4, 4), noise=torch.rand(2, 15))
    with pytest.raises(ConfigError, match="unknown mask strategy"):
        get_mask_fn("nope")
    assert "random" in MASKS


# ---------------------------------------------------------------- block-wise and grid masks (MAE Table 1f)


def components(removed: torch.Tensor) -> int:
    """4-connected groups of removed patches in a (h, w) bool grid."""
    h, w = removed.shape
    seen, count = set(), 0
    for start in zip(*torch.nonzero(removed, as_tuple=True)):
        start = (int(start[0]), int(start[1]))
        if start in seen:
            continue
        count += 1
        stack = [start]
        while stack:
            r, c = stack.pop()
            if (r, c) in seen or not (0 <= r < h and 0 <= c < w) or not removed[r, c]:
                continue
            seen.add((r, c))
            stack += [(r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)]
    return count


def test_block_masks_remove_large_blocks():
    """At MAE's 50% on ViT-B's 14x14 grid, removed patches come in a few large blocks, unlike random masks, and
    in rectangles: most removed patches have at least 2 removed 4-neighbours in a straight line."""
    g = torch.Generator().manual_seed(0)
    blocks = block_mask(32, (14, 14), 0.5, generator=g).mask.view(32, 14, 14).bool()
    scattered = random_mask(32, (14, 14), 0.5, generator=g).mask.view(32, 14, 14).bool()
    mean = lambda masks: sum(components(x) for x in masks) / len(masks)  # noqa: E731
    assert mean(blocks) < 4 < 12 < mean(scattered)
    pad = torch.nn.functional.pad(blocks, (1, 1, 1, 1))
    interior = (pad[:, :-2, 1:-1] & pad[:, 2:, 1:-1]) | (pad[:, 1:-1, :-2] & pad[:, 1:-1, 2:])
    assert (interior & blocks).sum() / blocks.sum() > 0.8


def test_block_mask_noise_orders_only_what_no_block_covers():
    noise = torch.rand(2, 196)
    a = block_mask(2, (14, 14), 0.5, noise=noise, generator=torch.Generator().manual_seed(1))
    b = block_mask(2, (14, 14), 0.5, noise=noise, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.mask, b.mask)
    with pytest.raises(ConfigError, match="noise has shape"):
        block_mask(2, (14, 14), 0.5, noise=torch.rand(2, 195))


even = st.integers(1, 7).map(lambda x: 2 * x)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 4), gh=even, gw=even)
def test_grid_mask_keeps_the_top_left_of_every_cell(batch, gh, gw):
    m = grid_mask(batch, (gh, gw), 0.75, generator=torch.Generator().manual_seed(0))
    assert_valid(m, batch, gh * gw, gh * gw // 4)
    rows, cols = m.ids_keep // gw, m.ids_keep % gw
    assert (rows % 2 == 0).all() and (cols % 2 == 0).all()  # the fixed offset (0, 0)
    assert torch.equal(m.ids_keep, cell_tokens((gh, gw))[:, 0].expand(batch, -1))  # compact raster order
    assert torch.equal(m.mask, m.mask[:1].expand(batch, -1))  # the same for every image


def test_grid_mask_errors():
    with pytest.raises(ConfigError, match="mask.ratio: 0.5 is not allowed with grid masks"):
        grid_mask(1, (4, 4), 0.5)
    with pytest.raises(ConfigError, match="not divisible by 2, which grid masks need"):
        grid_mask(1, (3, 4))
    with pytest.raises(ConfigError, match="noise has shape"):
        grid_mask(1, (4, 4), noise=torch.rand(1, 15))
    assert {"block", "grid"} <= set(MASKS)


@pytest.mark.parametrize("over", [["mask.type=block", "mask.ratio=0.5"], ["mask.type=grid"]])
def test_block_and_grid_masks_are_selected_by_the_mae_recipe(over):
    from emae import build_model
    from emae.config import load_config

    cfg = load_config("mae_vit_tiny_p4_cifar10", [*over, "model.depth=1", "model.decoder_depth=1"])
    model = build_model(cfg)
    out = model(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    removed = 32.0 if over[0] == "mask.type=block" else 48.0  # of the 8x8 grid
    assert out.mask.mask.sum(1).tolist() == [removed, removed] and torch.isfinite(out.loss)
