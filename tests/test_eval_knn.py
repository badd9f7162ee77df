"""Weighted k-NN on frozen features, and the labelled-data checks every evaluation shares."""

from __future__ import annotations

import json
import math

import pytest
import torch

from emae.cli.main import main
from emae.errors import DataError
from emae.eval.data import eval_sources, limit, labelled_images
from emae.eval.knn import knn_eval, knn_scores

from evalkit import colour_data, labelled_data, save_emae_checkpoint
from helpers import write_images

RANDOM_TINY = ["random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--img-size", "16"]


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emae: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_separable_features_give_100_percent():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 16) * 10
    train_y = torch.arange(400) % 4
    test_y = torch.arange(100) % 4
    train = centres[train_y] + torch.randn(400, 16, generator=g)
    test = centres[test_y] + torch.randn(100, 16, generator=g)
    result = knn_eval(train, train_y, test, test_y, num_classes=4, ks=(20, 200))
    assert result["k=20"]["top1"] == 100.0 and result["k=200"]["top1"] == 100.0


def test_votes_are_weighted_by_exp_sim_over_temperature():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    test = torch.tensor([[1.0, 1.0]])  # cosine 1/sqrt(2) with everything
    scores = knn_scores(train, labels, test, num_classes=2, k=3, temperature=0.5)
    w = math.exp(2**-0.5 / 0.5)
    assert torch.allclose(scores, torch.tensor([[w, 2 * w]]))
    scores = knn_scores(train, labels, test, num_classes=2, k=10)  # k above the training set size: all of it
    assert scores.shape == (1, 2)


def test_cli_knn_on_separable_images_is_100_percent(tmp_path, capsys):
    data = colour_data(tmp_path / "d")
    out = tmp_path / "knn"
    assert main(["knn", *RANDOM_TINY, "--data", str(data), "--output", str(out), "--no-progress",
                 "--feature-cache", str(tmp_path / "cache")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("knn: k=20 top-1 100.00%") and "k=200" in line and "\n" not in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["k=20"]["top1"] == 100.0 and metrics["k=200"]["top1"] == 100.0 and metrics["train_images"] == 16
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and cached[0].startswith("train-")
    # a second run reuses the cache (same files) and the result
    assert main(["knn", *RANDOM_TINY, "--data", str(data), "--output", str(out), "--overwrite", "--no-progress",
                 "--feature-cache", str(tmp_path / "cache"), "--k", "5"]) == 0
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cached
    assert json.loads((out / "metrics.json").read_text())["k=5"]["top1"] == 100.0


def test_error_folder_without_class_subfolders(tmp_path, capsys):
    write_images(tmp_path / "d" / "train", 6)  # flat: no labels
    write_images(tmp_path / "d" / "val", 4, classes=("a", "b"))
    err = one_line_error(capsys, ["knn", *RANDOM_TINY, "--data", str(tmp_path / "d"), "--output", str(tmp_path / "o")])
    assert "has no class sub-folders; evaluation needs labels" in err


def test_error_data_layout(tmp_path, capsys):
    labelled_data(tmp_path / "d")
    err = one_line_error(capsys, ["knn", *RANDOM_TINY, "--data", str(tmp_path / "d" / "train"), "--output",
                                  str(tmp_path / "o")])
    assert "needs train/ and val/ (or test/)" in err
    assert "--train" in one_line_error(capsys, ["knn", *RANDOM_TINY, "--output", str(tmp_path / "o")])


def test_error_train_and_val_classes_differ(tmp_path):
    labelled_data(tmp_path / "d")
    write_images(tmp_path / "d" / "val" / "zebra", 2)
    with pytest.raises(DataError, match="different class folders"):
        eval_sources(tmp_path / "d" / "train", tmp_path / "d" / "val", 3)


def test_class_balanced_subset(tmp_path):
    source = labelled_images(labelled_data(tmp_path / "d", classes=("a", "b", "c"), n_train=30) / "train")
    sub = limit(source, 9, seed=3)
    assert len(sub) == 9 and sorted(sub.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert sub.fetch(0)[1] == sub.labels[0] and limit(source, None) is source


def test_knn_from_emae_checkpoint_at_another_resolution(tmp_path, capsys):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    data = labelled_data(tmp_path / "d")
    assert main(["knn", str(ckpt), "--data", str(data), "--output", str(tmp_path / "o"), "--img-size", "24",
                 "--pool", "avg", "--no-progress"]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["options"]["img_size"] == 24
