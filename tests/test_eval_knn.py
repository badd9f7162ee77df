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
                 "--feature-cache", str(tmp_path / "cache"), "--k", "4", "8"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("knn: k=4 top-1 100.00%") and ", centred k=8 top-1 100.00%" in line and "\n" not in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["k=4"]["top1"] == 100.0 and metrics["k=8"]["top1"] == 100.0 and metrics["train_images"] == 16
    assert metrics["centred"]["k=8"]["top1"] == 100.0 and metrics["center"] == "both" and metrics["warnings"] == []
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
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["options"]["data"]["img_size"] == 24


def test_centring_recovers_a_class_signal_along_a_common_offset():
    """Classes differ only along dim 0 (+-1), with nuisance noise elsewhere. Add an offset of 100 along dim 0:
    the cosine of two features then depends on their components perpendicular to the offset (the noise) and not
    on the class, so uncentred k-NN drops to chance (50%); centring on the training mean removes the offset and
    gives back exactly the offset-free result (100%)."""
    def features(n, seed):
        y = torch.arange(n) % 2
        f = 0.3 * torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
        f[:, 0] = 2.0 * y - 1
        return f, y

    (train, train_y), (test, test_y) = features(200, 0), features(100, 1)
    offset = torch.zeros(8)
    offset[0] = 100.0
    plain = knn_eval(train, train_y, test, test_y, 2, ks=(20,))["k=20"]["top1"]
    shifted = knn_eval(train + offset, train_y, test + offset, test_y, 2, ks=(20,))["k=20"]["top1"]
    centred = knn_eval(train + offset, train_y, test + offset, test_y, 2, ks=(20,), center=True)["k=20"]["top1"]
    assert plain == 100.0 and centred == 100.0
    assert abs(shifted - 50.0) <= 15.0


def test_k_above_the_training_set_is_reported_under_the_k_used(tmp_path, capsys):
    data = colour_data(tmp_path / "d")  # 16 training images
    out = tmp_path / "o"
    assert main(["knn", *RANDOM_TINY, "--data", str(data), "--output", str(out), "--no-progress",
                 "--k", "4", "20", "200", "--center", "none"]) == 0
    captured = capsys.readouterr()
    assert "emae: warning: --k 20, 200 capped to 16, the number of training images" in captured.err
    assert captured.out.startswith("knn: k=4 top-1 100.00% top-5 100.00%, k=16 top-1 100.00%")
    assert "k=20" not in captured.out
    m = json.loads((out / "metrics.json").read_text())
    assert "k=16" in m and "k=20" not in m and "k=200" not in m and "centred" not in m
    assert m["k_requested"] == [4, 20, 200] and "capped to 16" in m["warnings"][0]


@pytest.mark.parametrize("bad", [["--max-train", "0"], ["--max-train", "-5"], ["--max-val", "0"]])
def test_error_subset_size_not_positive(tmp_path, capsys, bad):
    data = labelled_data(tmp_path / "d")
    err = one_line_error(capsys, ["knn", *RANDOM_TINY, "--data", str(data), "--output", str(tmp_path / "o"), *bad])
    assert f"{bad[0]} (data.{bad[0][2:].replace('-', '_')}): {bad[1]} is not allowed; must be a positive" in err
    assert not (tmp_path / "o").exists()


def test_seeds_random_encoder_mean_and_std(tmp_path, capsys):
    data = labelled_data(tmp_path / "d", n_train=24, n_val=30)
    out = tmp_path / "o"
    assert main(["knn", *RANDOM_TINY, "--data", str(data), "--output", str(out), "--no-progress", "--k", "5",
                 "--max-train", "20", "--seeds", "0", "1"]) == 0
    line = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    runs = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert m["seeds"] == [0, 1] and m["per_seed"] == runs
    assert [r["checkpoint"] for r in runs] == ["random:0", "random:1"] and "checkpoint" not in m
    for path in (("k=5",), ("centred", "k=5")):
        a, b = (r[path[0]] if len(path) == 1 else r[path[0]][path[1]] for r in runs)
        mean = m[path[0]] if len(path) == 1 else m[path[0]][path[1]]
        std = m["std"][path[0]] if len(path) == 1 else m["std"][path[0]][path[1]]
        assert a["top1"] != b["top1"]
        assert mean["top1"] == pytest.approx((a["top1"] + b["top1"]) / 2)
        assert std["top1"] == pytest.approx(abs(a["top1"] - b["top1"]) / 2**0.5)  # sample std of two values
    assert f"k=5 top-1 {m['k=5']['top1']:.2f} ± {m['std']['k=5']['top1']:.2f}%" in line and "2 seeds" in line


def test_seeds_fixed_checkpoint_full_data_give_identical_results(tmp_path, capsys):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    data = labelled_data(tmp_path / "d")
    out = tmp_path / "o"
    assert main(["knn", str(ckpt), "--data", str(data), "--output", str(out), "--no-progress", "--k", "3",
                 "--seeds", "3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["seeds"] == [0, 1, 2]
    first = m["per_seed"][0]
    for run in m["per_seed"][1:]:
        assert run["k=3"] == first["k=3"] and run["centred"] == first["centred"]
    assert m["std"]["k=3"]["top1"] == 0.0 and m["k=3"] == first["k=3"]
    # the folder holds results now: a second run needs --overwrite, which also clears the seed folders
    err = one_line_error(capsys, ["knn", str(ckpt), "--data", str(data), "--output", str(out), "--k", "3"])
    assert "already holds results" in err


@pytest.mark.parametrize("seeds, message", [(["0"], "positive number of seeds"), (["1", "1"], "repeats a seed")])
def test_error_bad_seeds(tmp_path, capsys, seeds, message):
    data = labelled_data(tmp_path / "d")
    err = one_line_error(capsys, ["knn", *RANDOM_TINY, "--data", str(data), "--output", str(tmp_path / "o"),
                                  "--seeds", *seeds])
    assert message in err
