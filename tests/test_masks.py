"""Masking invariants, property-tested."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emae.errors import ConfigError
from emae.masks import MASKS, get_mask_fn, random_mask

grids = st.tuples(st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 5), grid=grids, ratio=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_random_mask_invariants(batch, grid, ratio, seed):
    length = grid[0] * grid[1]
    num_keep = int(length * (1 - ratio))
    if num_keep < 1:
        with pytest.raises(ConfigError):
            random_mask(batch, grid, ratio, generator=torch.Generator().manual_seed(seed))
        return
    m = random_mask(batch, grid, ratio, generator=torch.Generator().manual_seed(seed))
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
    assert m.parts == 1


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
