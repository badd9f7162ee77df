"""``emae data``: the archives' conversion to ImageFolder trees, on small archives built here (never the network)."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
from PIL import Image

from emae.cli.main import main
from emae.data import ImageFiles

CLASSES = ["airplane", "automobile", "bird"]


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_cifar(path, per_batch: int = 3) -> dict:
    """CIFAR-10's python layout: pickled dicts with bytes keys, rows of 3072 = 3 x 32 x 32 channel-major values."""
    rng = np.random.default_rng(0)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}))
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, len(CLASSES), per_batch).tolist()
            batches[name] = (data, labels)
            add(tar, f"cifar-10-batches-py/{name}", pickle.dumps({b"data": data, b"labels": labels}))
    return batches


def test_cifar10_archive_becomes_an_imagefolder_tree(tmp_path, capsys):
    batches = fake_cifar(tmp_path / "c.tar.gz")
    out = tmp_path / "cifar"
    assert main(["data", "cifar10", "--archive", str(tmp_path / "c.tar.gz"), "--output", str(out), "--no-progress"]) == 0
    assert "train: 15 images" in capsys.readouterr().out and (tmp_path / "c.tar.gz").exists()  # yours: kept
    train, test = ImageFiles(out / "train"), ImageFiles(out / "test")
    assert len(train) == 15 and len(test) == 3 and set(train.classes) <= set(CLASSES)
    first_data, first_labels = batches["data_batch_1"]
    img = np.asarray(Image.open(out / "train" / CLASSES[first_labels[0]] / "00000.png"))
    assert np.array_equal(img, first_data[0].reshape(3, 32, 32).transpose(1, 2, 0))  # pixels exact, HWC, lossless
    assert main(["data", "cifar10", "--archive", str(tmp_path / "c.tar.gz"), "--output", str(out)]) == 2
    assert "already holds train/; pass --overwrite" in capsys.readouterr().err
    (tmp_path / "junk.tgz").write_bytes(b"not a tar")
    assert main(["data", "cifar10", "--archive", str(tmp_path / "junk.tgz"), "--output", str(tmp_path / "x")]) == 2
    assert "not a readable tar archive" in capsys.readouterr().err


def test_imagenette_archive_becomes_train_and_val(tmp_path, capsys):
    with tarfile.open(tmp_path / "imagenette2-160.tgz", "w:gz") as tar:
        for split, n in (("train", 4), ("val", 2)):
            for i in range(n):
                buf = io.BytesIO()
                Image.new("RGB", (20, 16), (i * 40, 0, 0)).save(buf, "JPEG")
                wnid = ("n01440764", "n02102040")[i % 2]
                add(tar, f"imagenette2-160/{split}/{wnid}/ILSVRC_{i}.JPEG", buf.getvalue())
        add(tar, "imagenette2-160/noisy_imagenette.csv", b"path,label\n")
    out = tmp_path / "nette"
    assert main(["data", "imagenette", "--archive", str(tmp_path / "imagenette2-160.tgz"), "--output", str(out)]) == 0
    assert "train: 4 images" in capsys.readouterr().out
    train, val = ImageFiles(out / "train"), ImageFiles(out / "val")
    assert len(train) == 4 and len(val) == 2 and train.classes == val.classes == ["n01440764", "n02102040"]
    assert not (out / "noisy_imagenette.csv").exists()
