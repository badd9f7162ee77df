"""``emae segment``: end to end on the one loop (metrics, picture, log), exact resume with loader workers, a pyramid
encoder, and bad data stopped before any work."""

import json

import pytest
import torch
from PIL import Image

from emae.cli.main import main
from emae.engine import list_checkpoints, load_checkpoint, read_log

from segkit import camvid_like
from test_umae import PYR, UMAE, save_checkpoint

TINY = ["--arch", "vit_tiny", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--patch-size", "8"]
RUN = ["--img-size", "32", "48", "--batch-size", "2", "--no-progress", "--no-tensorboard", "train.neck_dim=16",
       "train.head_dim=16", "train.log_every=1", "--warmup-epochs", "0.5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return camvid_like(tmp_path_factory.mktemp("seg"), n_train=6, n_val=3)


def test_segment_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["segment", "random", *TINY, "--data", str(data), "--output", str(out), *RUN, "--epochs", "2",
                 "--eval-every", "1"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = json.loads((out / "metrics.json").read_text())
    assert line.startswith(f"segment: mIoU {m['miou']:.2f}% ")
    assert {"miou", "per_class_iou", "pixel_acc", "mean_class_acc", "confusion"} <= m.keys()
    assert len(m["confusion"]) == 11 and list(m["per_class_iou"]) == ["Sky", "Building", "Pole", "Road", "Pavement",
                                                                      "Tree", "SignSymbol", "Fence", "Car",
                                                                      "Pedestrian", "Bicyclist"]
    assert [r["epoch"] for r in m["evaluations"]] == [1, 2] and m["epochs_done"] == 2
    assert (out / "segment.png").stat().st_size > 1000
    records = read_log(out / "log.jsonl")
    assert sum(r["type"] == "train" for r in records) == 6  # 3 steps an epoch
    start = next(r for r in records if r["type"] == "start")
    assert start["crop"] == [32, 48] and start["loaded"] == []  # a random encoder is built at the crop
    assert load_checkpoint(list_checkpoints(out)[0])["command"] == "segment"


def test_segment_resumes_exactly_with_loader_workers(data, tmp_path):
    common = ["segment", "random", *TINY, "--data", str(data), *RUN, "--epochs", "2", "--eval-every", "2",
              "train.drop_path=0.1"]
    assert main([*common, "--output", str(tmp_path / "straight")]) == 0
    assert main([*common, "--output", str(tmp_path / "stopped"), "train.stop_after_steps=4"]) == 0
    assert main(["segment", "--output", str(tmp_path / "stopped"), "--resume", "auto", "--no-progress",
                 "--workers", "2"]) == 0
    a, b = (load_checkpoint(list_checkpoints(tmp_path / d)[0]) for d in ("straight", "stopped"))
    assert a["global_step"] == b["global_step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("straight", "stopped"))
    assert ma["miou"] == mb["miou"] and ma["confusion"] == mb["confusion"]


def test_segment_a_pyramid_checkpoint(data, tmp_path):
    save_checkpoint(tmp_path / "ck.pt", *UMAE, *PYR, "model.arch=swin_t")  # 32 px, token 4, window 2
    out = tmp_path / "run"
    assert main(["segment", str(tmp_path / "ck.pt"), "--data", str(data), "--output", str(out), *RUN,
                 "--epochs", "1", "--img-size", "32", "64"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["crop"] == [32, 64] and 0 <= m["miou"] <= 100 and m["layer_decay"] == 0.85


def test_bad_label_is_one_line_before_any_work(data, tmp_path, capsys):
    bad = tmp_path / "bad"
    camvid_like(bad, n_train=2, n_val=1)
    Image.new("L", (48, 32), 40).save(bad / "train" / "labels" / "img001.png")  # 40: not a class, not 11
    assert main(["segment", "random", *TINY, "--data", str(bad), "--output", str(tmp_path / "o"), *RUN]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "img001.png" in err
    assert not (tmp_path / "o").exists()


def test_a_run_that_max_steps_ends_inside_an_epoch_is_evaluated(data, tmp_path):
    out = tmp_path / "run"
    assert main(["segment", "random", *TINY, "--data", str(data), "--output", str(out), *RUN,
                 "train.max_steps=2", "--picture-images", "0"]) == 0  # 3 steps an epoch
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs_done"] == 0 and [r["step"] for r in m["evaluations"]] == [2] and 0 <= m["miou"] <= 100
