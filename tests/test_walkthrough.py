"""Findings from a new user's walk through the README, each fixed: overrides anywhere, recipes that need data,
a killed run's log, labelled pictures, progress on long scans, PIL's bomb warnings, export side files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from emae.cli.main import build_parser, main, parse
from emae.config import load_config
from emae.data import folder
from emae.data.cache import DecodedCache
from emae.data.folder import ImageFiles, load_image
from emae.viz.reconstruction import labelled_grid

from helpers import write_images


def test_overrides_on_both_sides_of_an_option():
    argv = ["pretrain", "--method", "emae", "consistency.enabled=false", "--output", "X", "train.max_steps=3",
            "--no-progress", "train.log_every=2"]
    args = parse(build_parser(), argv)
    assert args.overrides == ["consistency.enabled=false", "train.max_steps=3", "train.log_every=2"]
    assert args.output == "X" and args.no_progress
    cfg = load_config(None, args.overrides)
    assert (cfg.consistency.enabled, cfg.train.max_steps, cfg.train.log_every) == (False, 3, 2)


def test_stray_words_are_still_rejected(capsys):
    with pytest.raises(SystemExit):
        parse(build_parser(), ["pretrain", "train.max_steps=3", "--output", "X", "oops"])
    assert "unrecognized arguments: oops" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # commands without overrides take none
        parse(build_parser(), ["plot", "run", "a=1"])


@pytest.mark.parametrize("recipe", ["mae_vit_tiny_p4_cifar10", "emae_vit_tiny_p4_cifar10", "umae_swin_t_p8_cifar10_64"])
def test_a_recipe_for_real_data_stops_without_data(capsys, tmp_path, recipe):
    code = main(["pretrain", "--config", recipe, "--output", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("emae: error: ") and "\n" not in err
    assert "give --data" in err and "data.required" in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_plot_skips_a_truncated_last_line(tmp_path, capsys):
    records = [{"type": "train", "step": s, "loss": 1.0 / s, "lr": 1e-3} for s in (1, 2, 3)]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"type": "train", "step": 4, "lo'
    (tmp_path / "log.jsonl").write_text(text)
    assert main(["plot", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "skipped the incomplete last line" in out and (tmp_path / "curves.png").stat().st_size > 1000
    (tmp_path / "log.jsonl").write_text('{"type": "tr\n' + text)  # damage elsewhere is an error, in one line
    assert main(["plot", str(tmp_path)]) == 2
    assert "line 1 is not a JSON record" in capsys.readouterr().err


def test_reconstruction_grid_has_a_labelled_header():
    rows = torch.zeros(8, 3, 64, 64)  # black images: any dark pixel in the header is text
    img = np.asarray(labelled_grid(rows).convert("L"))
    body_top = img.shape[0] - (2 * 64 + 3 * 2)
    assert body_top >= 12
    header = img[:body_top]
    col = 64 + 2
    for c in range(4):  # every column has its label, centred over it
        ink = np.nonzero((header[:, 2 + c * col: 2 + (c + 1) * col] < 128).any(axis=0))[0]
        assert len(ink) > 5, f"column {c} has no label"
        assert abs((ink.min() + ink.max()) / 2 - col / 2) < 8


def test_slow_scan_and_cache_show_progress(tmp_path, capsys, monkeypatch):
    write_images(tmp_path / "img", 6)
    monkeypatch.setattr(folder, "PROGRESS_DELAY", 0)
    files = ImageFiles(tmp_path / "img")
    DecodedCache(files)
    err = capsys.readouterr().err
    assert "scanning" in err and "6 images" in err and "data.cache" in err and "6/6" in err
    ImageFiles(tmp_path / "img", progress=False)
    assert capsys.readouterr().err == ""


def test_decompression_bomb_warnings_are_folded_into_the_skip_count(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40), "red").save(tmp_path / "big.png")
    Image.new("RGB", (60, 60), "red").save(tmp_path / "huge.png")
    write_images(tmp_path, 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40 is over the warning limit, 60x60 over the error one
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert load_image(str(tmp_path / "big.png"), "RGB").size == (40, 40)
        files = ImageFiles(tmp_path)  # big.png, huge.png, 0000.jpg
        assert [p.rsplit("/", 1)[-1] for p in files.paths] == ["0000.jpg", "big.png", "huge.png"]
        img, _, skipped = files.fetch(2)  # huge.png: skipped, replaced by the next readable file
    assert skipped == [str(tmp_path / "huge.png")] and img.size == (20, 20)
