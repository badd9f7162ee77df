"""Real data in one command: CIFAR-10 and Imagenette, downloaded and written as the ImageFolder trees ``--data``
takes. Downloading goes through torchvision; the conversion reads the archive itself, so it runs (and is tested)
on any archive of the same layout."""

from __future__ import annotations

import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, DataError
from .folder import describe, progress_bar

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2{}.tgz"
IMAGENETTE_SIZES = {"160": "-160", "320": "-320", "full": ""}
FORMATS = ("png", "jpg")


def download(url: str, folder: Path, md5: str | None = None) -> Path:
    """The file at ``url`` in ``folder`` (torchvision's downloader: resumes nothing, checks ``md5`` when given)."""
    from torchvision.datasets.utils import download_url

    folder.mkdir(parents=True, exist_ok=True)
    name = url.rsplit("/", 1)[-1]
    try:
        download_url(url, str(folder), name, md5)
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, RuntimeError (checksum): one line
        raise DataError(f"download of {url} failed ({describe(e)}); download it by hand and pass "
                        f"--archive FILE") from None
    return folder / name


def prepare_output(output: Path, splits: tuple[str, ...], overwrite: bool) -> None:
    existing = [output / s for s in splits if (output / s).exists()]
    if existing and not overwrite:
        raise ConfigError(f"--output {output} already holds {existing[0].name}/; pass --overwrite to replace it")
    for path in existing:
        shutil.rmtree(path)
    output.mkdir(parents=True, exist_ok=True)


def open_archive(archive: str | Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"--archive {archive}: not a readable tar archive ({describe(e)})") from None


def _members(tar: tarfile.TarFile, suffix: str) -> dict[str, tarfile.TarInfo]:
    return {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.isfile() and m.name.endswith(suffix)}


def _unpickle(tar: tarfile.TarFile, member: tarfile.TarInfo) -> dict:
    return pickle.load(tar.extractfile(member), encoding="bytes")


def convert_cifar10(archive: str | Path, output: str | Path, fmt: str = "png", overwrite: bool = False,
                    progress: bool = True) -> dict[str, int]:
    """CIFAR-10's python archive (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``) as
    ``output/train/<class>/NNNNN.png`` and ``output/test/...``; returns the image count per split."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {list(FORMATS)}")
    output = Path(output)
    with open_archive(archive) as tar:
        files = _members(tar, "")
        needed = ["batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))]
        if missing := [n for n in needed if n not in files]:
            raise DataError(f"{archive} is not CIFAR-10's python archive (no {missing[0]})")
        classes = [c.decode() for c in _unpickle(tar, files["batches.meta"])[b"label_names"]]
        prepare_output(output, ("train", "test"), overwrite)
        counts = {}
        for split, batches in (("train", needed[2:]), ("test", ["test_batch"])):
            for c in classes:
                (output / split / c).mkdir(parents=True, exist_ok=True)
            n = 0
            with progress_bar(progress, desc=f"writing {output / split}", unit=" images") as bar:
                for name in batches:
                    batch = _unpickle(tar, files[name])
                    pixels = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                    for img, label in zip(pixels, batch[b"labels"]):
                        path = output / split / classes[label] / f"{n:05d}.{fmt}"
                        Image.fromarray(img).save(path, **({"quality": 95} if fmt == "jpg" else {}))
                        n += 1
                        bar.update(1)
            counts[split] = n
    return counts


def convert_imagenette(archive: str | Path, output: str | Path, overwrite: bool = False) -> dict[str, int]:
    """The fast.ai Imagenette tarball (``imagenette2*/train/<wnid>/*.JPEG`` and ``val/``) as ``output/train`` and
    ``output/val``; returns the image count per split."""
    output = Path(output)
    with open_archive(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        parts = {m.name: m.name.removeprefix("./").split("/") for m in members}
        images = [m for m in members if len(parts[m.name]) == 4 and parts[m.name][1] in ("train", "val")]
        if not images:
            raise DataError(f"{archive} is not an Imagenette archive (no imagenette2*/train/<class>/ images)")
        prepare_output(output, ("train", "val"), overwrite)
        counts = {"train": 0, "val": 0}
        for m in images:
            _, split, cls, name = parts[m.name]
            target = output / split / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            counts[split] += 1
    return counts
