"""The pre-training monitor: online k-NN, RankMe and masked reconstruction loss every N steps, in log.jsonl and
TensorBoard; it leaves the run's numbers alone, and its k-NN is what ``emae knn`` says of the same checkpoint."""

import json
import shutil

import pytest
import torch

from emae.cli.main import main
from emae.config import load_config
from emae.engine import list_checkpoints, load_checkpoint, read_log
from emae.engine.metrics import rankme
from emae.engine.monitor import MonitorSet

from evalkit import colour_data
from helpers import TINY, tb_scalars, write_images

RUN = [*TINY, "train.batch_size=8", "train.max_steps=4", "train.log_every=1", "train.num_vis=0",
       "data.num_workers=0", "train.monitor.every=2", "train.monitor.images=16", "train.monitor.k=3",
       "train.save_every_steps=2"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    write_images(root / "pre", 24, size=20)
    colour_data(root / "lab", n_train=16, n_val=4)
    return root


def pretrain(images, out, *extra):
    assert main(["pretrain", "--data", str(images / "pre"), "--output", str(out), "--no-progress", *RUN, *extra]) == 0
    return read_log(out / "log.jsonl")


def test_monitor_logs_every_n_steps_to_the_log_and_tensorboard(images, tmp_path, capsys):
    records = pretrain(images, tmp_path / "run", "--monitor-data", str(images / "lab" / "train"))
    monitor = [r for r in records if r["type"] == "monitor"]
    assert [r["step"] for r in monitor] == [0, 2, 4]  # step 0: the starting weights, the baseline
    assert all({"knn_top1", "rankme", "recon"} <= r.keys() for r in monitor)
    assert all(0 <= r["knn_top1"] <= 100 and 1 <= r["rankme"] <= 32 and r["recon"] > 0 for r in monitor)
    tb = tb_scalars(tmp_path / "run" / "tb")
    for key in ("knn_top1", "rankme", "recon"):
        assert tb[f"monitor/{key}"] == [(r["step"], pytest.approx(r[key])) for r in monitor]
    cost = next(r for r in records if r["type"] == "monitor_cost")
    assert 0 < cost["share"] < 1 and "monitor: " in capsys.readouterr().out


def test_step_0_is_measured_once_and_is_the_starting_weights(images, tmp_path):
    """A run stopped at step 2 (a stop skips that measurement) and resumed measures step 0 once, not at its
    restart; the step-0 figures are the initial weights': those of a fresh run from the same seed, unlike step 4's."""
    data = ["--monitor-data", str(images / "lab" / "train")]
    pretrain(images, tmp_path / "run", *data, "train.stop_after_steps=2")
    records = pretrain(images, tmp_path / "run", *data, "--resume", "auto")
    monitor = [r for r in records if r["type"] == "monitor"]
    assert [r["step"] for r in monitor] == [0, 4]
    other = [r for r in pretrain(images, tmp_path / "other", *data) if r["type"] == "monitor"]
    figures = ("knn_top1", "rankme", "recon")
    assert [other[0][k] for k in figures] == [monitor[0][k] for k in figures]
    assert other[0]["recon"] != other[-1]["recon"]


def test_monitor_changes_no_number_of_the_run(images, tmp_path):
    pretrain(images, tmp_path / "plain")
    pretrain(images, tmp_path / "watched", "--monitor-data", str(images / "lab" / "train"))
    a, b = (load_checkpoint(tmp_path / d / "checkpoint-00000004.pt")["model"] for d in ("plain", "watched"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_online_knn_equals_emae_knn_on_the_same_checkpoint(images, tmp_path, capsys):
    """The monitor's bank and queries written out as two ImageFolder trees: `emae knn` (timm's ViT, the CLI's
    path) on the step-2 checkpoint gives the monitor's step-2 top-1."""
    records = pretrain(images, tmp_path / "run", "--monitor-data", str(images / "lab" / "train"))
    online = next(r["knn_top1"] for r in records if r["type"] == "monitor" and r["step"] == 2)
    cfg = load_config(None, RUN, **{"train.monitor.data": str(images / "lab" / "train")})
    data = MonitorSet(cfg)
    files = sorted((images / "lab" / "train").rglob("*.png"))  # the folder's order: class, then name
    for split, rows in (("bank", data.bank), ("queries", data.queries)):
        for i in rows.tolist():
            dst = tmp_path / split / files[i].parent.name / files[i].name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(files[i], dst)
    ckpt = [p for p in list_checkpoints(tmp_path / "run") if p.name == "checkpoint-00000002.pt"][0]
    assert main(["knn", str(ckpt), "--train", str(tmp_path / "bank"), "--val", str(tmp_path / "queries"), "--k", "3",
                 "--pool", "avg", "--center", "none", "--output", str(tmp_path / "knn"), "--no-progress"]) == 0
    offline = json.loads((tmp_path / "knn" / "metrics.json").read_text())["k=3"]["top1"]
    assert offline == pytest.approx(online, abs=1e-9)


def test_unlabelled_monitor_data_gives_rankme_and_recon_only(images, tmp_path):
    records = pretrain(images, tmp_path / "run", "--monitor-data", str(images / "pre"))
    monitor = [r for r in records if r["type"] == "monitor"]
    assert len(monitor) == 3 and all("knn_top1" not in r and {"rankme", "recon"} <= r.keys() for r in monitor)


def test_rankme_measures_the_effective_rank():
    torch.manual_seed(0)
    assert rankme(torch.randn(500, 1) @ torch.randn(1, 16)) == pytest.approx(1.0, abs=1e-3)  # collapsed to a line
    assert rankme(torch.randn(4000, 16)) > 15  # isotropic: near full rank
    low = torch.randn(1000, 4) @ torch.randn(4, 16)
    assert 3 < rankme(low) < 4.1


def test_bad_monitor_data_is_one_line_before_any_work(images, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["pretrain", "--data", str(images / "pre"), "--output", str(tmp_path / "run"), "--no-progress", *RUN,
                 "--monitor-data", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emae: error: ") and err.count("\n") == 1 and str(tmp_path / "empty") in err
    assert not list_checkpoints(tmp_path / "run")
