"""Segmentation data: layouts, the up-front check of every pair (bad input: one line naming the file), label-aware
augmentation that keeps image and label aligned, and seeds that make a sample a pure function of its seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from emae.data.loader import ResumableSampler
from emae.data.seg_layouts import seg_layout
from emae.data.seg_transforms import SegEvalTransform, SegTrainTransform
from emae.data.segmentation import SegmentationDataset, SegmentationFiles, limit_pairs, seg_collate, segmentation_splits
from emae.data.seeds import sample_seed
from emae.errors import ConfigError, DataError

from segkit import CAMVID, ade_like, block_label, camvid_like, colour_image, decode_classes

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
IGNORE = 11


def pil_pair(h: int = 40, w: int = 56, k: int = 11, block: int = 4):
    label = block_label(h, w, k, block=block)
    return Image.fromarray(colour_image(label)), Image.fromarray(label)


def pixels(x: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) image back to (H, W, 3) uint8."""
    img = x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    return (img.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("crop", [(24, 32), (64, 96)])
def test_augmentation_keeps_image_and_label_aligned(crop):
    img, label = pil_pair()
    tf = SegTrainTransform(crop, MEAN, STD, IGNORE, scale=(0.5, 2.0), interpolation="nearest")
    padded = 0
    for seed in range(60):
        x, y = tf(img, label, torch.Generator().manual_seed(seed))
        assert x.shape == (3, *crop) and y.shape == crop and y.dtype == torch.int64
        valid = y != IGNORE
        assert (decode_classes(pixels(x))[valid.numpy()] == y[valid].numpy()).all()
        assert (x[:, ~valid] == 0).all()  # padding: image 0 (normalised), label ignore
        padded += int((~valid).any())
    assert 0 < padded < 60  # scales of 0.5 pad, scales near 2 do not


def test_bilinear_augmentation_is_aligned_away_from_block_edges():
    img, label = pil_pair(80, 112, block=8)
    tf = SegTrainTransform((48, 64), MEAN, STD, IGNORE, scale=(0.75, 2.0))
    for seed in range(20):
        x, y = tf(img, label, torch.Generator().manual_seed(seed))
        assert (decode_classes(pixels(x)) == y.numpy()).mean() > 0.9  # only pixels at block edges blend
        assert (decode_classes(pixels(x.flip(-1))) == y.numpy()).mean() < 0.5


def test_a_misaligned_pair_is_caught():
    """The alignment check can fail: the image flipped alone disagrees with its label."""
    img, label = pil_pair()
    x, y = SegTrainTransform((40, 56), MEAN, STD, IGNORE, scale=(1.0, 1.0), hflip=False,
                             interpolation="nearest")(img, label, torch.Generator().manual_seed(0))
    assert (decode_classes(pixels(x)) == y.numpy()).all()
    assert (decode_classes(pixels(x.flip(-1))) != y.numpy()).mean() > 0.5


def test_same_seed_same_sample_and_seeds_differ():
    img, label = pil_pair()
    tf = SegTrainTransform((24, 32), MEAN, STD, IGNORE, base_size=(40, 56))
    a = tf(img, label, torch.Generator().manual_seed(7))
    b = tf(img, label, torch.Generator().manual_seed(7))
    c = tf(img, label, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1]) or not torch.equal(a[0], c[0])


def test_base_size_fits_the_image_keeping_its_aspect():
    img, label = pil_pair(40, 80)
    tf = SegTrainTransform((15, 30), MEAN, STD, IGNORE, base_size=(20, 30), scale=(1.0, 1.0), hflip=False)
    tf.crop_size = (15, 30)  # factor min(20/40, 30/80) = 0.375: the image becomes 15x30
    x, y = tf(img, label, torch.Generator().manual_seed(0))
    assert (y != IGNORE).all()
    tf.crop_size = (16, 30)
    assert (tf(img, label, torch.Generator().manual_seed(0))[1][15] == IGNORE).all()


def test_eval_transform_resizes_the_image_and_keeps_the_label():
    img, label = pil_pair(40, 56)
    x, y = SegEvalTransform(MEAN, STD, size=(16, 24))(img, label)
    assert x.shape == (3, 16, 24) and y.shape == (40, 56) and torch.equal(y, torch.from_numpy(np.array(label)).long())
    x, _ = SegEvalTransform(MEAN, STD)(img, label)
    assert x.shape == (3, 40, 56)


def test_bad_transform_options():
    with pytest.raises(ConfigError, match="scale"):
        SegTrainTransform((8, 8), MEAN, STD, IGNORE, scale=(2.0, 1.0))
    with pytest.raises(ConfigError, match="interpolation"):
        SegEvalTransform(MEAN, STD, interpolation="lanczos9")


def test_dataset_is_the_same_with_workers_and_after_a_resume(tmp_path):
    root = camvid_like(tmp_path / "d", n_train=8, n_val=2)
    train, _ = segmentation_splits(root, progress=False)
    ds = SegmentationDataset(train, SegTrainTransform((16, 16), MEAN, STD, IGNORE))

    def batches(workers: int, start: int = 0):
        sampler = ResumableSampler(len(ds), 2, seed=3)
        sampler.set_epoch(1, start)
        dl = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=seg_collate)
        return [(x.clone(), y.clone()) for x, y, _ in dl]

    ref = batches(0)
    assert len(ref) == 4
    for (x, y), (x2, y2) in zip(ref, batches(2)):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    for (x, y), (x2, y2) in zip(ref[2:], batches(0, start=2)):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    index = ResumableSampler(len(ds), 2, seed=3)._indices()[0]
    x, y, _ = ds[(index, sample_seed(3, 0, index))]
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)


def test_splits_pixel_counts_and_subsets(tmp_path):
    root = camvid_like(tmp_path / "d", n_train=5, n_val=2, size=(32, 48))
    train, val = segmentation_splits(root, progress=False)
    assert (len(train), len(val)) == (5, 2) and train.num_classes == 11 and train.ignore_index == 11
    assert train.pixel_counts.sum() == 5 * 32 * 48 and train.pixel_counts[-1] == 5 * 4 * 12  # the void strip
    img, label, skipped = train.fetch(1)
    assert img.size == label.size == (48, 32) and skipped == []
    sub = limit_pairs(train, 3, seed=0)
    assert len(sub) == 3 and sub.indices == sorted(sub.indices) and sub.paths[0] == train.paths[sub.indices[0]]
    assert limit_pairs(train, None) is train
    items = [(torch.zeros(3, 2, 2), torch.zeros(4, 4), []), (torch.zeros(3, 2, 2), torch.zeros(5, 4), ["p"])]
    x, y, skipped = seg_collate(items)
    assert x.shape == (2, 3, 2, 2) and isinstance(y, list) and skipped == ["p"]


def test_ade20k_layout_reduces_zero_label(tmp_path):
    root = ade_like(tmp_path / "ade", num_classes=5)
    train, val = segmentation_splits(root, progress=False)
    assert train.layout.name == "ade20k" and train.num_classes == 150 and train.ignore_index == 255
    assert train.class_names[:3] == ("wall", "building", "sky") and len(train.class_names) == 150
    raw = np.array(Image.open(train.label_paths[0]))
    stored = train.read_label(0)
    assert (stored[raw == 0] == 255).all() and (stored[raw > 0] == raw[raw > 0] - 1).all()
    assert train.pixel_counts[-1] == sum((np.array(Image.open(p)) == 0).sum() for p in train.label_paths)
    lay = seg_layout(root, num_classes=5)
    assert lay.class_names == tuple(f"class {i}" for i in range(5)) and lay.ignore_index == 255


def test_layout_options(tmp_path):
    root = camvid_like(tmp_path / "d", 1, 1)
    assert seg_layout(root).class_names[0] == "Sky" and seg_layout(root).palette is not None
    lay = seg_layout(root, num_classes=19, ignore_index=255)
    assert lay.palette is None and lay.class_names[18] == "class 18"
    with pytest.raises(ConfigError, match="one of the 11 classes"):
        seg_layout(root, ignore_index=3)
    with pytest.raises(ConfigError, match="2 names for 11 classes"):
        seg_layout(root, class_names=["a", "b"])
    with pytest.raises(DataError, match="neither"):
        seg_layout(tmp_path)


def _one_line_error(root, match: str, name: str) -> None:
    with pytest.raises(DataError) as e:
        segmentation_splits(root, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and match in msg and name in msg, msg


def test_bad_input_is_one_line_naming_the_file(tmp_path):
    def fresh(tag):
        return camvid_like(tmp_path / tag, n_train=3, n_val=1, size=(16, 24))

    root = fresh("size")
    Image.fromarray(np.zeros((16, 20), np.uint8)).save(root / "train/labels/img001.png")
    _one_line_error(root, "is 20x16 but its image", "train/labels/img001.png")

    root = fresh("value")
    Image.fromarray(np.full((16, 24), 12, np.uint8)).save(root / "train/labels/img002.png")
    _one_line_error(root, "has value 12, outside the 11 classes", "train/labels/img002.png")

    root = fresh("corrupt-label")
    (root / "val/labels/img000.png").write_bytes(b"not a png")
    _one_line_error(root, "unreadable label map", "val/labels/img000.png")

    root = fresh("corrupt-image")
    (root / "train/images/img000.jpg").write_bytes(b"")
    _one_line_error(root, "unreadable image", "train/images/img000.jpg")

    root = fresh("rgb-label")
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(root / "train/labels/img000.png")
    _one_line_error(root, "is a RGB image", "train/labels/img000.png")

    root = fresh("no-label")
    (root / "train/labels/img001.png").unlink()
    _one_line_error(root, "has no label map", "train/images/img001.jpg")

    root = fresh("no-image")
    (root / "train/images/img002.jpg").unlink()
    _one_line_error(root, "has no image", "train/labels/img002.png")

    root = fresh("empty")
    for p in (root / "val/images").iterdir():
        p.unlink()
    _one_line_error(root, "no image files", "val/images")

    ade = ade_like(tmp_path / "ade-bad", num_classes=5)
    Image.fromarray(np.full((32, 48), 151, np.uint8)).save(ade / "annotations/training/img000.png")
    _one_line_error(ade, "has value 151 (150 after reduce-zero-label)", "annotations/training/img000.png")


def test_an_image_truncated_after_the_check_is_skipped_or_fatal(tmp_path):
    root = camvid_like(tmp_path / "d", n_train=3, n_val=1, size=(16, 24))
    train, _ = segmentation_splits(root, progress=False)
    strict = SegmentationFiles(root, "train", train.layout, strict=True, progress=False)
    path = root / "train/images/img000.jpg"
    path.write_bytes(path.read_bytes()[:60])
    img, label, skipped = train.fetch(0)
    assert skipped == [str(path)] and img.size == (24, 16)
    with pytest.raises(DataError, match="unreadable image .*img000.jpg"):
        strict.fetch(0)


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid is not at {CAMVID}")
def test_real_camvid_checks_and_class_shares():
    train, val = segmentation_splits(CAMVID, progress=False)
    assert (len(train), len(val)) == (367, 101) and train.layout.name == "folders"
    share = train.pixel_counts / train.pixel_counts.sum()
    assert abs(share[0] - 0.168) < 0.002 and abs(share[3] - 0.317) < 0.002 and abs(share[-1] - 0.039) < 0.002
    x, y = SegTrainTransform((176, 240), MEAN, STD, IGNORE, base_size=(180, 240))(*train.fetch(0)[:2],
                                                                                 torch.Generator().manual_seed(0))
    assert x.shape == (3, 176, 240) and set(y.unique().tolist()) <= set(range(12))
