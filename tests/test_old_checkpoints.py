"""Checkpoints written before the one-loop refactor still load, through a conversion: fine-tuned classifiers of
format version 1 (their description under ``vit``, also for Swin / PVT) and pre-training checkpoints of version 2
(a scheduler state, no ``command``)."""

import torch

import emae
from emae.cli.main import main
from emae.engine import list_checkpoints, load_checkpoint

from evalkit import labelled_data
from helpers import TINY, write_images
from test_umae import PYR, UMAE, save_checkpoint

FT = ["--epochs", "1", "--batch-size", "4", "--no-progress", "--no-tensorboard"]


def as_version_1(path) -> None:
    obj = torch.load(path, weights_only=True)
    obj["vit"] = obj.pop("classifier")
    obj["version"] = 1
    torch.save(obj, path)


def test_version_1_classifiers_load_with_the_same_outputs(tmp_path):
    data = labelled_data(tmp_path / "d", n_train=8, n_val=4)
    save_checkpoint(tmp_path / "swin.pt", *UMAE, *PYR, "model.arch=swin_t")
    runs = {"vit": ["random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--img-size", "16"],
            "swin": [str(tmp_path / "swin.pt")]}
    for name, source in runs.items():
        out = tmp_path / name
        assert main(["finetune", *source, "--data", str(data), "--output", str(out), *FT]) == 0
        size = 16 if name == "vit" else 32
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            new = emae.load(out / "best.pt")(x)
        as_version_1(out / "best.pt")
        with torch.no_grad():
            old = emae.load(out / "best.pt")(x)
        assert torch.equal(new, old), name
        assert emae.read_checkpoint(out / "best.pt").num_classes == 2


def test_version_2_pretraining_checkpoints_resume(tmp_path):
    write_images(tmp_path / "imgs", 16, size=20)
    run = ["pretrain", "--data", str(tmp_path / "imgs"), "--output", str(tmp_path / "run"), "--no-progress", *TINY,
           "train.batch_size=4", "train.max_steps=8", "train.num_vis=0", "train.save_every_steps=4",
           "data.num_workers=0"]
    assert main([*run, "train.stop_after_steps=4"]) == 0
    path = list_checkpoints(tmp_path / "run")[0]
    ckpt = load_checkpoint(path)
    ckpt.pop("command")
    ckpt.update(version=2, scheduler={"last_epoch": 4, "base_lrs": [1e-3]})  # what version 2 stored
    torch.save(ckpt, path)
    assert main(["pretrain", "--output", str(tmp_path / "run"), "--resume", "auto", "--no-progress"]) == 0
    assert main([*run[:4], str(tmp_path / "straight"), *run[5:]]) == 0
    a, b = (load_checkpoint(list_checkpoints(tmp_path / d)[0])["model"] for d in ("run", "straight"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert emae.read_checkpoint(path).source == "emae"
