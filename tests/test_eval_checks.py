"""What the evaluation commands share: the batch is checked against the data before any work (nothing already
written is lost), and several seeds are summarised as mean ± sample std."""

from __future__ import annotations

import importlib

import pytest

from emae.cli.main import main
from emae.eval.seeds import score, seed_list, summarise

from evalkit import labelled_data

RANDOM_TINY = ["random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--img-size", "16"]


@pytest.fixture
def no_work(monkeypatch):
    """Feature extraction and fine-tuning fail the test if reached."""
    def fail(*args, **kwargs):
        raise AssertionError("work started before the checks")

    common = importlib.import_module("emae.eval.common")
    monkeypatch.setattr(common, "extract_features", fail)
    monkeypatch.setattr(common, "frozen_encoder", fail)
    finetune = importlib.import_module("emae.eval.finetune")  # the module (emae.eval.finetune is also a function)
    monkeypatch.setattr(finetune, "classifier", fail)


@pytest.mark.parametrize("command", ["linprobe", "finetune"])
@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "16"], "12 training images give no full batch of 16"),
    (["--batch-size", "4", "--max-train", "2"], "2 training images give no full batch of 4"),  # the subset's size
    (["--batch-size", "0"], "--batch-size (train.batch_size): 0 is not allowed; must be a positive integer"),
])
def test_batch_checked_before_any_work(tmp_path, capsys, no_work, command, extra, message):
    data = labelled_data(tmp_path / "d")  # 12 training images
    out = tmp_path / "o"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier result
    argv = [command, *RANDOM_TINY, "--data", str(data), "--output", str(out), "--overwrite", "--no-progress", *extra]
    if command == "linprobe":
        argv += ["--protocol", "mae"]  # logreg has no batches
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emae: error: ") and message in err and "\n" not in err
    assert (out / "metrics.json").read_text() == "{}"  # --overwrite did not get to clear it


def test_finetune_mixup_batch_checked_before_any_work(tmp_path, capsys, no_work):
    data = labelled_data(tmp_path / "d")
    assert main(["finetune", *RANDOM_TINY, "--data", str(data), "--output", str(tmp_path / "o"), "--batch-size",
                 "3", "--no-progress"]) == 2
    assert "--batch-size (train.batch_size): 3 is not allowed; must be even for mixup / cutmix" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_seed_list_and_summary():
    assert seed_list(None, 4) == [4] and seed_list([3], 5) == [5, 6, 7] and seed_list([2, 0]) == [2, 0]
    runs = [{"top1": 10.0, "k=5": {"top5": 1.0}, "seconds": 2.0, "checkpoint": "random:0", "classes": 3},
            {"top1": 20.0, "k=5": {"top5": 3.0}, "seconds": 3.0, "checkpoint": "random:1", "classes": 3}]
    m = summarise(runs, [0, 1])
    assert m["top1"] == 15.0 and m["k=5"] == {"top5": 2.0} and m["seconds"] == 5.0 and m["classes"] == 3
    assert "checkpoint" not in m and m["per_seed"] == runs and m["seeds"] == [0, 1]
    assert m["std"] == {"top1": pytest.approx(50**0.5), "k=5": {"top5": pytest.approx(2**0.5)}}
    assert score(m, "top1") == "15.00 ± 7.07" and score(runs[0], "k=5", "top5") == "1.00"
