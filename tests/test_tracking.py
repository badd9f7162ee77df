"""Experiment tracking: log.jsonl, TensorBoard and W&B behind one interface, with the same numbers in each."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from emae.cli.main import main
from emae.engine import read_log
from emae.engine.tracking import RunLog
from emae.errors import ConfigError

from evalkit import labelled_data, save_emae_checkpoint
from helpers import TINY, tb_images, tb_scalars, write_images


def fake_run(log: RunLog) -> None:
    log.write(type="start", lr=0.1, images=10, data="somewhere")
    for step in (1, 2, 3):
        log.write(type="train", step=step, epoch=0, loss=1.0 / step, recon=0.5 / step, lr=0.01 * step, img_per_s=99.5)
    log.write(type="skipped", epoch=0, count=2, first=["a.jpg", "b.jpg"])  # no step: the last one seen
    log.image("reconstruction", Image.new("RGB", (24, 12), "red"), 3)
    log.write(type="end", global_step=3, loss=float("nan"), bad_steps=0)


def test_every_number_of_the_log_reaches_tensorboard(tmp_path):
    with RunLog(tmp_path) as log:
        fake_run(log)
    records = read_log(tmp_path / "log.jsonl")
    assert [r["type"] for r in records] == ["start", "train", "train", "train", "skipped", "end"]
    tb = tb_scalars(tmp_path / "tb")
    for key in ("loss", "recon", "lr", "img_per_s"):
        assert tb[f"train/{key}"] == [(r["step"], pytest.approx(r[key])) for r in records if r["type"] == "train"]
    assert tb["skipped/count"] == [(3, 2.0)] and tb["end/bad_steps"] == [(3, 0.0)]
    assert "end/loss" not in tb and not any("data" in t or "time" in t for t in tb)  # NaN, text, times: no
    assert tb_images(tmp_path / "tb") == {"reconstruction": [3]}


def test_resumed_log_continues_the_curve_without_overlap(tmp_path):
    with RunLog(tmp_path) as log:
        for step in range(1, 6):
            log.write(type="train", step=step, loss=10.0 + step)
    with RunLog(tmp_path, resume_step=3) as log:  # a kill after step 5, resumed from the checkpoint at 3
        for step in range(4, 8):
            log.write(type="train", step=step, loss=float(step))
    assert tb_scalars(tmp_path / "tb")["train/loss"] == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 4.0), (5, 5.0),
                                                         (6, 6.0), (7, 7.0)]


def test_disabled_and_turned_off(tmp_path):
    with RunLog(tmp_path / "rank1", enabled=False) as log:  # ranks other than 0
        fake_run(log)
    assert not (tmp_path / "rank1").exists()
    with RunLog(tmp_path / "plain", tensorboard=False) as log:
        fake_run(log)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["log.jsonl"]


def test_missing_wandb_extra_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb fails as when the extra is not installed
    with pytest.raises(ConfigError, match=r"pip install 'emae\[wandb\]'"):
        RunLog(tmp_path, wandb=True)
    assert not (tmp_path / "tb").exists()  # nothing written before the error


def read_wandb_records(path: Path) -> list:
    """The records of an offline W&B run's .wandb file (a LevelDB-style log: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, out, part = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, size, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part += data[pos + 7:pos + 7 + size]
        pos += 7 + size
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def test_wandb_offline_gets_the_same_numbers(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with RunLog(tmp_path, wandb=True, wandb_name="t", config={"seed": 0}) as log:
        fake_run(log)
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    train = [r for r in read_log(tmp_path / "log.jsonl") if r["type"] == "train"]
    for _ in range(40):  # W&B's service process may still be writing its file under a heavy load
        rows = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                for r in read_wandb_records(path) if r.WhichOneof("record_type") == "history"]
        losses = [(row["_step"], row["train/loss"]) for row in rows if "train/loss" in row]
        if len(losses) == len(train):
            break
        time.sleep(0.5)
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in train], rows
    assert any(row.get("reconstruction/_type") == "image-file" for row in rows)
    assert (tmp_path / "wandb-id.txt").read_text().strip() in path.name  # a resume continues this run


def test_linprobe_writes_event_files(tmp_path):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    data = labelled_data(tmp_path / "d")
    out = tmp_path / "lin"
    argv = ["linprobe", str(ckpt), "--data", str(data), "--output", str(out), "--protocol", "mae", "--epochs", "2",
            "--batch-size", "4", "--log-every", "1", "--no-progress"]
    assert main(argv) == 0
    epochs = [r for r in read_log(out / "log.jsonl") if r["type"] == "epoch"]
    assert tb_scalars(out / "tb")["epoch/val_top1"] == [(r["step"], pytest.approx(r["val_top1"])) for r in epochs]
    argv = ["linprobe", str(ckpt), "--data", str(data), "--output", str(out), "--no-progress", "--overwrite", "--C", "1"]
    assert main([*argv, "--no-tensorboard"]) == 0  # logreg protocol
    assert not (out / "tb").exists()  # --overwrite removed the old run's events too
    assert main(argv) == 0
    top1 = json.loads((out / "metrics.json").read_text())["top1"]
    assert [v for _, v in tb_scalars(out / "tb")["end/top1"]] == [pytest.approx(top1)]


def pretrain_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--output", str(out), "--no-progress", *TINY, "train.batch_size=8",
            "train.num_vis=2", "train.log_every=2", "data.num_workers=0", *extra]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, 40, size=20)  # 5 steps per epoch
    return root


def test_pretrain_events_equal_the_log_and_carry_the_picture(folder, tmp_path):
    assert main(pretrain_argv(folder, tmp_path, "train.epochs=3", "train.save_every=2")) == 0
    train = [r for r in read_log(tmp_path / "log.jsonl") if r["type"] == "train"]
    tb = tb_scalars(tmp_path / "tb")
    for key in ("loss", "lr", "img_per_s"):
        assert tb[f"train/{key}"] == [(r["step"], pytest.approx(r[key])) for r in train]
    assert [s for s, _ in tb["train/loss"]] == [2, 4, 5, 6, 8, 10, 12, 14, 15]  # every 2 steps and epoch ends
    assert tb_images(tmp_path / "tb") == {"reconstruction": [10, 15]}  # every save_every epochs, and the end
    assert main(pretrain_argv(folder, tmp_path / "off", "train.max_steps=2", "train.tensorboard=false")) == 0
    assert not (tmp_path / "off" / "tb").exists() and (tmp_path / "off" / "log.jsonl").exists()


def test_resumed_pretrain_continues_the_same_event_curve(folder, tmp_path):
    argv = pretrain_argv(folder, tmp_path, "train.max_steps=8", "train.log_every=1", "train.save_every_steps=3")
    assert main([*argv, "train.stop_after_steps=5"]) == 0  # logged steps 1-5; checkpoints at 3 and 5
    assert main([*argv, "--resume", str(tmp_path / "checkpoint-00000003.pt")]) == 0  # steps 4, 5 again, then on
    steps = [s for s, _ in tb_scalars(tmp_path / "tb")["train/loss"]]
    assert steps == list(range(1, 9))  # each step once: what the first process logged after step 3 was purged
    last = {r["step"]: r["loss"] for r in read_log(tmp_path / "log.jsonl") if r["type"] == "train"}
    assert tb_scalars(tmp_path / "tb")["train/loss"] == [(s, pytest.approx(last[s])) for s in steps]


def test_pretrain_without_the_wandb_extra_is_one_line(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(pretrain_argv(folder, tmp_path / "run", "train.wandb=true")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emae: error: W&B logging needs the optional extra") and "\n" not in err
    assert not (tmp_path / "run").exists()
