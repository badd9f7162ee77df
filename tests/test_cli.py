"""The ``emae`` command: the README's default run, the CIFAR recipe, and one-line errors."""

import os
import subprocess
import sys

import pytest

from emae.cli.main import main
from emae.engine import list_checkpoints, read_log

from helpers import CIFAR, write_images

TINY_ARGS = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32",
             "model.decoder_depth=1", "model.img_size=16", "train.batch_size=4", "train.epochs=1"]


def one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("emae: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.slow
def test_default_run_writes_checkpoint_log_and_picture(tmp_path):
    """`emae pretrain` with nothing else: the README's first command (about two minutes on 2 cores)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMAE")}
    proc = subprocess.run([sys.executable, "-m", "emae", "pretrain", "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert list_checkpoints(run_dir) and (run_dir / "reconstruction.png").stat().st_size > 1000
    records = read_log(run_dir / "log.jsonl")
    losses = [r["loss"] for r in records if r["type"] == "train"]
    assert records[-1]["type"] == "end" and losses[-1] < 0.8 * losses[0]


@pytest.mark.skipif(not (CIFAR / "train").is_dir(), reason=f"CIFAR-10 not found at {CIFAR}")
def test_cifar_recipe_runs_a_few_steps(tmp_path, capsys):
    argv = ["pretrain", "--config", "mae_vit_tiny_p4_cifar10", "--data", str(CIFAR / "train"), "--output",
            str(tmp_path), "--no-progress", "train.stop_after_steps=2", "train.batch_size=32", "train.log_every=1"]
    assert main(argv) == 0, capsys.readouterr().err
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000002.pt"]
    start = read_log(tmp_path / "log.jsonl")[0]
    assert start["images"] == 50000


def test_error_image_size_not_divisible(capsys, tmp_path):
    err = one_line_error(capsys, ["pretrain", "--output", str(tmp_path), "model.img_size=30"])
    assert "model.img_size: 30x30 is not divisible by model.patch_size 4" in err


def test_error_mask_ratio_outside_unit_interval(capsys, tmp_path):
    assert "mask.ratio: 1.5" in one_line_error(capsys, ["pretrain", "--output", str(tmp_path), "mask.ratio=1.5"])


def test_error_missing_and_empty_data_folder(capsys, tmp_path):
    err = one_line_error(capsys, ["pretrain", "--data", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    assert "does not exist" in err
    (tmp_path / "empty").mkdir()
    assert "no image files" in one_line_error(capsys, ["pretrain", "--data", str(tmp_path / "empty")])


def test_error_only_corrupt_images(capsys, tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8\xff broken")
    err = one_line_error(capsys, ["pretrain", "--data", str(tmp_path), "--output", str(tmp_path / "o")])
    assert "none of the 3 image files" in err and not (tmp_path / "o").exists()


def test_error_unknown_config_key(capsys):
    err = one_line_error(capsys, ["pretrain", "train.batchsize=8"])
    assert "unknown config key 'train.batchsize'; did you mean 'train.batch_size'?" in err


def test_error_existing_run_is_kept(capsys, tmp_path):
    write_images(tmp_path / "data", 8, size=16)
    argv = ["pretrain", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "run"), "--no-progress", *TINY_ARGS]
    assert main(argv) == 0
    ckpt = list_checkpoints(tmp_path / "run")[0]
    before = ckpt.read_bytes()
    assert "already holds a run" in one_line_error(capsys, argv)
    assert ckpt.read_bytes() == before


def test_resume_from_path_continues_with_saved_config(capsys, tmp_path):
    write_images(tmp_path / "data", 8, size=16)
    out = tmp_path / "run"
    base = ["pretrain", "--data", str(tmp_path / "data"), "--output", str(out), "--no-progress", *TINY_ARGS]
    assert main([*base, "train.epochs=4", "train.stop_after_steps=4"]) == 0
    ckpt = list_checkpoints(out)[0]
    assert main(["pretrain", "--resume", str(ckpt), "--no-progress"]) == 0
    assert list_checkpoints(out)[0].name == "checkpoint-00000008.pt"
    assert "does not exist" in one_line_error(capsys, ["pretrain", "--resume", str(tmp_path / "x.pt")])
