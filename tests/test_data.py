"""Data: folder layouts, skipped and counted bad files, deterministic and shardable sampling."""

import numpy as np
import pytest
import torch
from PIL import Image

from emae.data import EmbeddedDigits, ImageFiles, ResumableSampler, TransformedImages, pretrain_transform, scan_images
from emae.data.loader import collate
from emae.errors import DataError

from helpers import write_images


def test_layouts(tmp_path):
    write_images(tmp_path / "tree", 6, classes=("cat", "dog"))
    paths, labels, classes = scan_images(tmp_path / "tree")
    assert classes == ["cat", "dog"] and sorted(labels) == [0, 0, 0, 1, 1, 1] and len(paths) == 6
    write_images(tmp_path / "flat", 3)
    write_images(tmp_path / "flat" / "deeper" / "more", 2, seed=1)
    paths, labels, classes = scan_images(tmp_path / "flat")
    assert len(paths) == 5 and labels is None and classes is None


def test_missing_empty_and_all_corrupt(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFiles(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="no image files"):
        ImageFiles(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("not an image")
    with pytest.raises(DataError, match="none of the 2 image files .* can be read"):
        ImageFiles(bad)


def make_mixed(folder):
    good = write_images(folder, 6)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a jpeg")
    data = good[0].read_bytes()
    (folder / "trunc.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((9, 9), np.uint16) + 4000).save(folder / "gray16.png")
    Image.new("CMYK", (9, 9), (10, 20, 30, 0)).save(folder / "cmyk.jpg")
    return {str(folder / n) for n in ("zero.jpg", "text.jpg", "trunc.jpg")}


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    bad = make_mixed(tmp_path)
    source = ImageFiles(tmp_path)
    assert len(source) == 11
    ds = TransformedImages(source, pretrain_transform((8, 8), (0.2, 1.0), True, [0.5] * 3, [0.5] * 3))
    loader = torch.utils.data.DataLoader(ds, batch_size=11, collate_fn=collate, num_workers=1)
    imgs, labels, skipped = next(iter(loader))
    assert imgs.shape == (11, 3, 8, 8) and set(skipped) == bad  # a bad file may be met more than once
    assert source.fetch(source.paths.index(str(tmp_path / "gray16.png")))[0].mode == "RGB"
    with pytest.raises(DataError, match="unreadable image"):
        ImageFiles(tmp_path, strict=True).fetch(source.paths.index(str(tmp_path / "zero.jpg")))


def test_sampler_shards_resumes_and_is_seeded():
    full = list(ResumableSampler(50, 4, seed=3))
    assert len(full) == 48 and full == list(ResumableSampler(50, 4, seed=3))
    s = ResumableSampler(50, 4, seed=3)
    s.set_epoch(0, start_batch=5)
    assert list(s) == full[20:]
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full]
    shards = [list(ResumableSampler(50, 5, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert not {i for i, _ in shards[0]} & {i for i, _ in shards[1]}
    assert len(shards[0]) == len(shards[1]) == 25


def test_augmentation_depends_only_on_sample_seed():
    src = EmbeddedDigits(16)
    ds = TransformedImages(src, pretrain_transform((16, 16), (0.2, 1.0), True, [0.5] * 3, [0.5] * 3))
    a = ds[(7, 123)][0]
    torch.rand(5)  # global RNG state must not matter
    assert torch.equal(a, ds[(7, 123)][0])
    assert not torch.equal(a, ds[(7, 124)][0])


def test_embedded_digits_are_real_images():
    src = EmbeddedDigits(32)
    assert len(src) == 1797 and src.images[0].size == (32, 32) and sorted(set(src.labels)) == list(range(10))
    assert np.asarray(src.images[0]).std() > 20


def test_randaugment_posterize_with_zero_bits():
    """timm's PosterizeIncreasing at magnitude 10 asks for 0 bits, which Pillow 13 rejects."""
    from timm.data import auto_augment

    from emae.data.compat import patch_timm_posterize

    patch_timm_posterize()
    img = Image.new("RGB", (8, 8), (200, 100, 50))
    op = auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    assert np.asarray(op(img)).max() == 0
