"""Reliability in-process: the non-finite guard (injected NaN losses) and a folder of hostile image files."""

import os
import signal
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import emae.engine.trainer as trainer
from emae.cli.main import main
from emae.data import ImageFiles
from emae.engine import list_checkpoints, load_checkpoint, pretrain, read_log
from emae.engine.guard import NonFiniteGuard
from emae.engine.signals import StopSignals
from emae.errors import CheckpointError, ConfigError, TrainingError

from helpers import tiny_config, write_images


def inject_nan(monkeypatch, steps: set[int]) -> None:
    """Make the loss NaN at these optimiser steps (1-based; one micro-batch per step)."""
    build = trainer.build_model

    def build_with_nans(cfg):
        model = build(cfg)
        forward, calls = model.forward, [0]

        def nan_forward(*args, **kwargs):
            out = forward(*args, **kwargs)
            calls[0] += 1
            if calls[0] in steps:
                out.loss = out.loss * float("nan")
                out.terms = {k: v * float("nan") for k, v in out.terms.items()}
            return out

        model.forward = nan_forward
        return model

    monkeypatch.setattr(trainer, "build_model", build_with_nans)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, 40, size=20)
    return root


def test_guard_counts_and_reduces():
    guard = NonFiniteGuard(2, reduce=lambda bad: True)  # another rank saw a NaN: every rank skips
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    assert guard.is_bad(torch.tensor(1.0), [p])
    assert not NonFiniteGuard(2).is_bad(torch.tensor(1.0), [p])
    p.grad[0] = float("inf")
    assert NonFiniteGuard(2).is_bad(torch.tensor(1.0), [p])
    guard.record(True, 5, None)
    guard.record(False, 6, None)  # a good step resets the streak, not the total
    guard.record(True, 7, None)
    with pytest.raises(TrainingError, match=r"steps 7-8.*stopped at step 8; no checkpoint"):
        guard.record(True, 8, None)
    assert guard.total == 3


def test_nan_steps_are_skipped_and_counted(folder, tmp_path, monkeypatch):
    inject_nan(monkeypatch, {1, 3, 4, 7})
    cfg = tiny_config("train.max_steps=10", "train.batch_size=8", "train.log_every=1", "train.num_vis=0",
                      "train.max_bad_steps=3", **{"data.path": str(folder), "output_dir": str(tmp_path)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a bad first step moves the schedule without a PyTorch warning
        result = pretrain(cfg, progress=False)
    assert result.global_step == 10 and result.bad_steps == 4
    records = read_log(tmp_path / "log.jsonl")
    assert [r["step"] for r in records if r["type"] == "bad_step"] == [1, 3, 4, 7]
    assert [r["step"] for r in records if r["type"] == "train"] == [2, 5, 6, 8, 9, 10]
    assert all(np.isfinite(r["loss"]) for r in records if r["type"] == "train")
    assert records[-1]["bad_steps"] == 4
    ckpt = load_checkpoint(result.checkpoint)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    # skipped steps do not update (AdamW counted 6 steps) but do move the schedule (10 steps)
    assert {float(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {6.0}
    assert ckpt["global_step"] == 10 and ckpt["guard"] == {"total": 4, "consecutive": 0}  # skipped steps still count


def test_persistent_nans_stop_with_a_clear_message(folder, tmp_path, monkeypatch, capsys):
    inject_nan(monkeypatch, set(range(6, 100)))
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(folder), "--output", str(out), "--no-progress", "model.embed_dim=32",
                 "model.depth=1", "model.num_heads=2", "model.img_size=16", "model.decoder_embed_dim=32",
                 "model.decoder_depth=1", "model.decoder_num_heads=2", "train.batch_size=8", "train.max_steps=20",
                 "train.save_every_steps=2", "train.max_bad_steps=3", "train.num_vis=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    good = out / "checkpoint-00000005.pt"  # the epoch's end (5 steps); the one at step 6 is inside the bad stretch
    assert err == (f"emae: error: 3 consecutive steps with a non-finite loss or gradient (steps 6-8, "
                   f"train.max_bad_steps=3); stopped at step 8; last good checkpoint: {good}")
    assert [p.name for p in list_checkpoints(out)] == [f"checkpoint-0000000{s}.pt" for s in (6, 5, 4, 2)]
    ckpt = load_checkpoint(good)
    assert ckpt["global_step"] == 5 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert read_log(out / "log.jsonl")[-1]["type"] == "error"


def hostile_folder(root):
    """Every bad-file kind of the issue, generated here; returns (paths that must be skipped, converted paths)."""
    good = write_images(root, 13, size=20)
    data = good[0].read_bytes()
    (root / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.png").write_text("this is not a PNG")
    os.symlink(root / "missing.jpg", root / "dangling.jpg")  # unreadable: the target is gone
    os.mkfifo(root / "pipe.jpg")  # opening it would block forever
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / "gray.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(root / "gray16.png")
    Image.new("RGB", (6000, 6000), (30, 200, 60)).save(root / "huge.jpg")
    pal = Image.new("P", (20, 20))
    pal.putpalette([255, 0, 0] * 256)
    pal.save(root / "palette.png", transparency=0)
    Image.new("RGBA", (20, 20), (10, 20, 30, 128)).save(root / "rgba.png")
    bad = {str(root / n) for n in ("trunc.jpg", "zero.jpg", "text.png", "dangling.jpg", "pipe.jpg")}
    converted = {n: str(root / n) for n in ("gray.png", "cmyk.jpg", "gray16.png", "huge.jpg", "palette.png", "rgba.png")}
    return bad, converted  # 13 + 5 + 6 = 24 files: 3 full batches of 8, so every file is met in every epoch


def test_hostile_files_are_converted_or_skipped_and_counted(tmp_path):
    bad, converted = hostile_folder(tmp_path / "data")
    source = ImageFiles(tmp_path / "data")
    assert len(source) == 24
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning per image
        fetched = {name: source.fetch(source.paths.index(path)) for name, path in converted.items()}
    assert all(img.mode == "RGB" and not skipped for img, _, skipped in fetched.values())
    assert np.asarray(fetched["gray16.png"][0])[0, 0].tolist() == [156] * 3  # 40000 / 256, not clipped to 255
    assert np.asarray(fetched["palette.png"][0])[0, 0].tolist() == [255, 0, 0]  # via RGBA: colour kept
    assert max(fetched["huge.jpg"][0].size) == 3000  # decoded at half size (DCT scaling)
    cmyk = np.asarray(fetched["cmyk.jpg"][0])[0, 0]
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60  # cyan-free magenta + yellow = red

    cfg = tiny_config("train.epochs=2", "train.batch_size=8", "train.log_every=1", "train.num_vis=0",
                      "data.num_workers=2", **{"data.path": str(tmp_path / "data"), "output_dir": str(tmp_path / "r")})
    result = pretrain(cfg, progress=False)
    assert result.global_step == 6
    records = read_log(tmp_path / "r" / "log.jsonl")
    reports = [r for r in records if r["type"] == "skipped"]
    assert [(r["epoch"], r["count"], set(r["first"])) for r in reports] == [(0, 5, bad), (1, 5, bad)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads chmod-000 files; the dangling link stands in above")
def test_unreadable_permission_is_skipped(tmp_path):
    paths = write_images(tmp_path, 4, size=20)
    paths[1].chmod(0)
    source = ImageFiles(tmp_path)
    assert source.fetch(1)[2] == [str(paths[1])]


def test_stop_signals_flag_then_abort_and_restore():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM changes nothing
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a second stop by Ctrl-C aborts at once
    assert signal.getsignal(signal.SIGINT) is before and signals.received == "SIGTERM"


def test_resume_from_another_models_checkpoint_is_one_line(folder, tmp_path):
    """Another architecture is refused by the config check; forced, the weights' mismatch names keys and shapes."""
    common = ("train.max_steps=2", "train.batch_size=8", "train.num_vis=0")
    pretrain(tiny_config(*common, **{"data.path": str(folder), "output_dir": str(tmp_path)}), progress=False)
    cfg = tiny_config(*common, "model.depth=3", "model.decoder_embed_dim=16",
                      **{"data.path": str(folder), "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"^model.depth: the run .* has 2, not 3 \(and 1 more: model.decoder_embed"):
        pretrain(cfg, resume="auto", progress=False)
    with pytest.raises(CheckpointError) as e:
        pretrain(cfg, resume="auto", progress=False, force_config=True)
    assert "checkpoint-00000002.pt cannot resume this run (missing: encoder.blocks.2.norm1.weight" in str(e.value)
    assert "shape mismatch: decoder.mask_token (1, 1, 32) there, (1, 1, 16) here" in str(e.value)
    assert "\n" not in str(e.value)


def test_decompression_bombs_are_skipped(tmp_path, monkeypatch):
    paths = write_images(tmp_path, 2, size=20)
    Image.new("L", (60, 60)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3600 pixels: over twice the limit, like a real bomb
    source = ImageFiles(tmp_path)
    img, _, skipped = source.fetch(source.paths.index(str(tmp_path / "bomb.png")))
    assert skipped == [str(tmp_path / "bomb.png")] and img.size == (20, 20)
