"""The frozen dense probe: the linear map commutes with bilinear upsampling, the whitening folds into the head, and
``segprobe`` / ``emae segprobe`` run end to end on synthetic data (and on CamVid when it is there)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from emae.cli.main import main
from emae.config import ModelConfig
from emae.data.segmentation import limit_pairs, segmentation_splits
from emae.eval import segprobe as segprobe_module
from emae.eval.segfeatures import features_at, sample_pixels
from emae.eval.seginference import upsample
from emae.config import SegprobeConfig
from emae.eval.segprobe import ABSENT, full_head, head_logits, segprobe, whitened, whitening
from emae.interop.load import random_checkpoint

from segkit import CAMVID, camvid_like

TINY = ["--arch", "vit_tiny", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--patch-size", "8"]



def probe_config(img_size, progress=False, batch_size=16, seed=0, **probe):
    """The probe's config as the CLI builds it (data.img_size, run.*, probe.*)."""
    cfg = SegprobeConfig(checkpoint="random")
    cfg.data.img_size, cfg.data.path = list(img_size), "unused"
    cfg.run.batch_size, cfg.run.seed = batch_size, seed
    for key, value in probe.items():
        setattr(cfg.probe, key, list(value) if isinstance(value, tuple) else value)
    cfg.validate()
    return cfg


def tiny_random(size=(32, 48), patch: int = 8, seed: int = 0):
    m = ModelConfig(arch="vit_tiny", embed_dim=32, depth=2, num_heads=2, img_size=list(size), patch_size=patch)
    return random_checkpoint(m, seed)


def test_the_linear_map_commutes_with_bilinear_upsampling():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(6, 5, 7, generator=g, dtype=torch.float64)
    weight, bias = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    size = (23, 31)
    full = upsample(head_logits(weight, bias, fmap[None]), size)[0]  # logits, then upsampled
    rows, cols = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    at = features_at(fmap, rows.flatten(), cols.flatten(), size) @ weight.T + bias  # upsampled features, then logits
    assert torch.allclose(at.T.reshape(3, *size), full, atol=1e-10)


def test_the_whitening_folds_into_the_head():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 6)) * 3 + 2  # 6 features of rank 5
    y = np.array([0, 2, 3] * 133 + [0])  # class 1 never seen
    t = whitening(x)
    assert t[2].shape == (6, 5)  # the null direction dropped
    z = whitened(x, t)
    assert np.allclose(z.mean(0), 0, atol=1e-9) and np.allclose(z.T @ z / len(z), np.eye(5), atol=1e-6)
    clf = LogisticRegression(C=1.0, tol=1e-8, max_iter=1000).fit(z, y)
    weight, bias = full_head(clf, t, 4)
    logits = torch.from_numpy(x).float() @ weight.T + bias
    assert np.allclose(logits[:, [0, 2, 3]].numpy(), clf.decision_function(z), atol=1e-3)
    assert (logits[:, 1] == ABSENT).all()
    binary = LogisticRegression().fit(z, (y == 2).astype(int))
    w2, b2 = full_head(binary, t, 2)
    pred = (torch.from_numpy(x).float() @ w2.T + b2).argmax(1).numpy()
    assert (pred == binary.predict(z)).mean() > 0.99


def test_pixels_are_drawn_among_labelled_ones():
    label = torch.full((10, 12), 255, dtype=torch.uint8)
    label[2:5, 3:9] = 1
    rows, cols = sample_pixels(label, 7, 255, torch.Generator().manual_seed(0))
    assert len(rows) == 7 and (label[rows, cols] == 1).all()
    rows, cols = sample_pixels(label, 100, 255, torch.Generator().manual_seed(0))
    assert len(rows) == 18


def test_segprobe_end_to_end(tmp_path, monkeypatch):
    root = camvid_like(tmp_path / "data", n_train=10, n_val=3)
    train, val = segmentation_splits(root, progress=False)
    opts = probe_config(img_size=(32, 48), pixels_per_image=120, c_grid=(0.1, 1.0), holdout=0.2, progress=False,
                           batch_size=4, feature_cache=str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    m = segprobe(tiny_random(), train, val, out, opts)
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["miou"] == m["miou"] and m["converged"] and m["iterations"] < opts.probe.max_iter
    assert m["miou"] > 60  # one colour per 8x8 block, one block per patch: easy for any encoder
    assert list(m["per_class_iou"]) == list(train.class_names) and len(m["confusion"]) == 11
    assert m["pixels"] == 3 * (32 * 48 - 4 * 12) and m["train_pixels"] == 10 * 120
    assert set(m["holdout"]["candidates"]) == {"0.1", "1.0"} and m["holdout"]["held_out_images"] == 2
    assert m["feature_map"] == [4, 6] and m["stride"] == 8 and m["C"] in (0.1, 1.0)
    assert (out / "segprobe.png").stat().st_size > 1000
    head = torch.load(out / "head.pt", weights_only=True)
    assert head["weight"].shape == (11, 32) and head["img_size"] == [32, 48]
    assert len(list((tmp_path / "cache").iterdir())) == 2

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cached features were extracted again")

    monkeypatch.setattr(segprobe_module, "dense_encoder", no_extraction)
    again = segprobe(tiny_random(), train, val, out, opts)
    drop = ("seconds", "seconds_features", "seconds_fit")
    assert {k: v for k, v in again.items() if k not in drop} == {k: v for k, v in m.items() if k not in drop}


def test_segprobe_command_and_its_errors(tmp_path, capsys):
    root = camvid_like(tmp_path / "data", n_train=6, n_val=2)
    out = tmp_path / "out"
    args = ["segprobe", "random", *TINY, "--img-size", "32", "48", "--data", str(root), "--output", str(out),
            "--C", "1", "--pixels-per-image", "50", "--no-progress"]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert line.startswith("segprobe: mIoU ") and "converged in" in line and "6 train / 2 val images at 32x48" in line
    assert json.loads((out / "metrics.json").read_text())["miou"] > 0
    assert main(args) == 2 and "already holds results" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--img-size", "30", "48"]) == 2
    assert "30x48 is not divisible by model.patch_size 8" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--holdout", "1.5", "--C", "1", "10"]) == 2
    assert "--holdout (probe.holdout): 1.5 is not allowed" in capsys.readouterr().err
    from PIL import Image

    Image.fromarray(np.full((32, 48), 40, np.uint8)).save(root / "val/labels/img001.png")
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "val/labels/img001.png has value 40" in err


def test_segprobe_is_deterministic_and_the_seed_draws_the_pixels(tmp_path):
    root = camvid_like(tmp_path / "data", n_train=6, n_val=2)
    train, val = segmentation_splits(root, progress=False)

    def run(seed, name):
        (tmp_path / name).mkdir()
        opts = probe_config(img_size=(32, 48), pixels_per_image=40, c_grid=(1.0,), progress=False, seed=seed,
                               picture_images=0)
        return segprobe(tiny_random(), train, val, tmp_path / name, opts)

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    assert a["confusion"] == b["confusion"] and a["miou"] == b["miou"]
    assert torch.load(tmp_path / "a/head.pt")["weight"].equal(torch.load(tmp_path / "b/head.pt")["weight"])
    assert not torch.load(tmp_path / "a/head.pt")["weight"].equal(torch.load(tmp_path / "c/head.pt")["weight"])
    assert not (tmp_path / "a/segprobe.png").exists()


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid is not at {CAMVID}")
def test_real_camvid_random_encoder_is_above_chance(tmp_path):
    train, val = segmentation_splits(CAMVID, progress=False)
    train, val = limit_pairs(train, 24, seed=0), limit_pairs(val, 6, seed=0)
    opts = probe_config(img_size=(96, 128), pixels_per_image=100, c_grid=(1.0,), progress=False, picture_images=1)
    m = segprobe(tiny_random((96, 128), patch=16), train, val, tmp_path, opts)
    assert m["converged"] and 100 / 11 < m["miou"] < 60 and m["pixel_acc"] > 40
    assert m["per_class_iou"]["Sky"] > 50  # the easiest class, even for random features


@pytest.mark.parametrize("arch,method", [("swin_t", "umae"), ("pvt_t", "simmim")])
def test_segprobe_on_pyramid_checkpoints(tmp_path, arch, method):
    from emae.interop.load import read_checkpoint

    from test_umae import PYR, UMAE, save_checkpoint

    over = [*(UMAE if method == "umae" else ["method=simmim", "mask.type=random"]), *PYR, f"model.arch={arch}"]
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, *over)
    root = camvid_like(tmp_path / "data", n_train=6, n_val=2, size=(32, 64))
    train, val = segmentation_splits(root, progress=False)
    opts = probe_config(img_size=(32, 64), pixels_per_image=60, c_grid=(1.0,), progress=False, picture_images=1)
    m = segprobe(read_checkpoint(ckpt), train, val, tmp_path, opts)
    # patch 4: stem stride 1, the last stage at stride 8 with the final norm
    assert m["feature_map"] == [4, 8] and m["stride"] == 8 and m["dim"] == 16 * 8 and m["converged"]
    assert m["miou"] is not None and (tmp_path / "segprobe.png").is_file()
