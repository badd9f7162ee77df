"""Segmentation metrics against a hand-computed confusion matrix (with the ignore label), and inference: sliding
windows against the whole image."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emae.errors import ConfigError
from emae.eval.seginference import evaluate_segmentation, predict_logits, slide_logits, window_starts
from emae.eval.segmetrics import confusion_matrix, segmentation_metrics

IGNORE = 255


def test_confusion_matrix_and_metrics_by_hand():
    # 3 classes; the ignore pixels (255) must not count, whatever is predicted there
    target = torch.tensor([[0, 0, 0, 1], [1, 1, 2, 255], [255, 0, 2, 2]])
    pred = torch.tensor([[0, 0, 1, 1], [1, 0, 2, 0], [2, 0, 2, 1]])
    conf = confusion_matrix(pred, target, 3, IGNORE)
    # rows = ground truth, columns = prediction
    assert conf.tolist() == [[3, 1, 0], [1, 2, 0], [0, 1, 2]]
    m = segmentation_metrics(conf, ["a", "b", "c"])
    iou = [3 / (4 + 4 - 3), 2 / (3 + 4 - 2), 2 / (3 + 2 - 2)]  # TP / (GT + pred - TP)
    acc = [3 / 4, 2 / 3, 2 / 3]
    assert m["per_class_iou"] == pytest.approx({n: 100 * v for n, v in zip("abc", iou)}, abs=1e-3)
    assert m["miou"] == pytest.approx(100 * sum(iou) / 3, abs=1e-3)
    assert m["pixel_acc"] == pytest.approx(100 * 7 / 10, abs=1e-3)
    assert m["mean_class_acc"] == pytest.approx(100 * sum(acc) / 3, abs=1e-3)
    assert m["per_class_acc"]["a"] == pytest.approx(75.0) and m["pixels"] == 10 and m["confusion"] == conf.tolist()


def test_miou_counts_classes_in_ground_truth_or_prediction_only():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])  # class 2 predicted, never true: IoU 0, counted; class 3 nowhere: left out
    m = segmentation_metrics(confusion_matrix(pred, target, 4, IGNORE))
    assert m["per_class_iou"] == {"class 0": 50.0, "class 1": 100.0, "class 2": 0.0, "class 3": None}
    assert m["classes_in_miou"] == 3 and m["miou"] == pytest.approx(50.0)
    assert m["per_class_acc"]["class 2"] is None and m["mean_class_acc"] == pytest.approx(75.0)
    empty = segmentation_metrics(torch.zeros(2, 2, dtype=torch.int64))
    assert empty["miou"] is None and empty["pixel_acc"] is None


def test_bad_confusion_input():
    with pytest.raises(ValueError, match="class ids"):
        confusion_matrix(torch.tensor([0]), torch.tensor([3]), 3, IGNORE)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3, IGNORE)


class Pointwise(nn.Module):
    """Logits that depend on each pixel alone (a 1x1 conv): any tiling of windows gives the whole image's."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.num_classes = k
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x)


class FixedSize(Pointwise):
    """Refuses any input but its window size, like timm's ViT; its logits depend on the position in the window."""

    def __init__(self, size, k: int = 4) -> None:
        super().__init__(k)
        self.size = size
        self.bias = nn.Parameter(torch.randn(1, k, *size))

    def forward(self, x):
        assert tuple(x.shape[-2:]) == self.size, x.shape
        return self.conv(x) + self.bias


def test_window_starts_cover_every_pixel():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 4, 2) == [0] and window_starts(3, 4, 2) == [0]
    for length, window, stride in [(37, 8, 5), (8, 8, 8), (9, 8, 8)]:
        covered = set()
        for s in window_starts(length, window, stride):
            covered |= set(range(s, min(s + window, length)))
        assert covered == set(range(length))


def test_sliding_window_equals_whole_image_when_one_window_covers_it():
    model = FixedSize((12, 16)).eval()
    x = torch.randn(2, 3, 12, 16)
    whole = predict_logits(model, x)
    assert torch.equal(predict_logits(model, x, mode="slide", window=(12, 16), stride=(8, 8)), whole)
    smaller = torch.randn(1, 3, 10, 13)  # padded to the window, logits cut back
    padded = nn.functional.pad(smaller, (0, 3, 0, 2))
    assert torch.equal(slide_logits(model, smaller, (12, 16), (6, 6), 4), model(padded)[:, :, :10, :13])


def test_overlapping_windows_average_their_logits():
    model = Pointwise().eval()
    x = torch.randn(1, 3, 23, 31)
    whole = predict_logits(model, x)
    slide = predict_logits(model, x, mode="slide", window=(8, 12), stride=(5, 7))
    assert torch.allclose(slide, whole, atol=1e-6)
    fixed = FixedSize((8, 12)).eval()  # windows now disagree: the result is their mean
    out = slide_logits(fixed, x, (8, 12), (8, 12), 4)
    tiles = [fixed(x[:, :, t:t + 8, l:l + 12]) for t in window_starts(23, 8, 8) for l in window_starts(31, 12, 12)]
    assert torch.allclose(out[:, :, :8, :12], tiles[0], atol=1e-6)
    pix = (20, 30)  # covered by the last row / column windows only
    assert torch.allclose(out[0, :, pix[0], pix[1]], tiles[-1][0, :, pix[0] - 15, pix[1] - 19], atol=1e-6)
    assert torch.allclose(out[0, :, 15, 0], (tiles[3][0, :, 7, 0] + tiles[6][0, :, 0, 0]) / 2, atol=1e-6)


def test_logits_upsampled_to_label_resolution_and_evaluated():
    model = Pointwise().eval()
    x = torch.randn(2, 3, 8, 12)
    logits = predict_logits(model, x, out_size=(16, 24))
    assert logits.shape == (2, 4, 16, 24)
    labels = logits.argmax(1)
    labels[0, 0, :5] = IGNORE
    other = predict_logits(model, x[1:], out_size=(12, 20)).argmax(1)[0]  # another label size
    loader = [(x, labels, []), ([x[0], x[1]], [labels[0], other], ["bad.jpg"])]  # stacked, then lists
    m = evaluate_segmentation(model, loader, torch.device("cpu"), 4, IGNORE)
    assert m["pixel_acc"] == 100.0 and m["miou"] == 100.0 and m["skipped"] == 1
    assert m["pixels"] == (2 * 16 * 24 - 5) + (16 * 24 - 5) + 12 * 20
    wrong = [(x, (labels + 1) % 4, [])]
    assert evaluate_segmentation(model, wrong, torch.device("cpu"), 4, IGNORE)["pixel_acc"] < 5


def test_bad_inference_options():
    model = Pointwise()
    with pytest.raises(ConfigError, match="mode"):
        predict_logits(model, torch.randn(1, 3, 4, 4), mode="tiles")
    with pytest.raises(ConfigError, match="window and a stride"):
        predict_logits(model, torch.randn(1, 3, 4, 4), mode="slide")
    with pytest.raises(ConfigError, match="larger than the window"):
        predict_logits(model, torch.randn(1, 3, 4, 4), mode="slide", window=(2, 2), stride=(3, 1))


def test_picture_rows_palette_and_legend():
    import numpy as np

    from emae.viz.segmentation import CAMVID_PALETTE, colourise, default_palette, segmentation_picture

    palette = default_palette(150)
    assert len(set(palette)) == 150 and (0, 0, 0) not in palette and len(CAMVID_PALETTE) == 11
    label = torch.tensor([[0, 1], [IGNORE, 2]])
    assert colourise(label, palette, IGNORE).tolist() == [[list(palette[0]), list(palette[1])],
                                                          [[0, 0, 0], list(palette[2])]]
    labels = [torch.zeros(20, 30, dtype=torch.long), torch.full((10, 10), 2, dtype=torch.long)]
    labels[0][:5] = IGNORE
    preds = [torch.ones(20, 30, dtype=torch.long), torch.full((10, 10), 2, dtype=torch.long)]
    images = [torch.zeros(3, 8, 12), torch.zeros(3, 4, 4)]  # any size: shown at the label's
    pic = segmentation_picture(images, labels, preds, ["a", "b", "c"], [0.5] * 3, [0.2] * 3, IGNORE, height=20)
    arr = np.asarray(pic)
    width = 30  # every row 20 px high; the square one 20 px wide
    assert pic.width == 3 * width + 4 * 2
    gt_cell = arr[16 + 2 + 10, 2 + width + 2 + 5]  # first row, ground truth, below the ignore band
    assert tuple(gt_cell) == default_palette(3)[0]
    assert tuple(arr[16 + 2 + 2, 2 + width + 2 + 5]) == (0, 0, 0)  # ignore is black
