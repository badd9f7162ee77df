"""``emae shards write``: an image folder into WebDataset tar shards plus the manifest :class:`ShardSet` reads.

The images keep their encoded bytes (no re-encoding); every file is decoded once to check it, and unreadable ones
are skipped and counted, as the folder loader does. With ``max_side`` (FFCV's trick), images whose longer side
exceeds it are resized to it (Lanczos, aspect kept) and re-encoded as JPEG at ``quality`` (PNG where there is
transparency): smaller shards and a cheaper decode, for crops that come from fewer pixels. Samples are written in
a seeded random order, so each shard is a random draw from every class (a streaming reader that shuffles within a
buffer then mixes well).
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import ConfigError, DataError
from .folder import decode_image, describe, open_image, progress_bar, scan_images
from .shards import FORMAT, LABEL_EXT, MANIFEST, VERSION

SHARD_NAME = "shard-{:06d}.tar"


@dataclass
class WriteReport:
    output: Path
    shards: int
    images: int
    skipped: int
    first_skipped: list[str] = field(default_factory=list)
    bytes: int = 0
    resized: int = 0  # images re-encoded at max_side


class _Shard:
    def __init__(self, path: Path) -> None:
        from webdataset import TarWriter

        self.path = path
        self.writer = TarWriter(str(path), encoder=False, mtime=0)
        self.count, self.size, self.labels = 0, 0, []

    def write(self, key: str, ext: str, data: bytes, label: int | None) -> None:
        sample = {"__key__": key, ext: data}
        if label is not None:
            sample[LABEL_EXT] = str(label).encode()
            self.labels.append(label)
        self.writer.write(sample)
        self.count += 1
        self.size += len(data)

    def close(self) -> dict:
        self.writer.close()
        return {"name": self.path.name, "count": self.count, "bytes": self.path.stat().st_size, "labels": self.labels}


def extension(path: str) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    return {"jpeg": "jpg", "tiff": "tif"}.get(ext, ext)


def shrink(data: bytes, max_side: int, quality: int) -> tuple[bytes, str] | None:
    """The image resized so that its longer side is ``max_side`` and re-encoded (JPEG at ``quality``; PNG where it
    has transparency), with its new extension; None when it is no larger than that already."""
    with open_image(io.BytesIO(data)) as img:
        width, height, alpha = img.width, img.height, img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
        grey = img.mode in ("L", "I;16", "I;16B", "I;16L", "I")
    if max(width, height) <= max_side:
        return None
    img = decode_image(io.BytesIO(data), "RGBA" if alpha else "L" if grey else "RGB")
    ratio = max_side / max(width, height)
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    small = img.resize(size, Image.LANCZOS, reducing_gap=3.0)  # reduce() first by large factors: faster, alike
    out = io.BytesIO()
    if alpha:
        small.save(out, "PNG")
        return out.getvalue(), "png"
    small.save(out, "JPEG", quality=quality)
    return out.getvalue(), "jpg"


def write_shards(data: str | Path, output: str | Path, shard_size: int = 2000, shard_bytes: int = 1 << 30,
                 seed: int = 0, shuffle: bool = True, overwrite: bool = False, progress: bool = True,
                 max_side: int | None = None, quality: int | None = None) -> WriteReport:
    """Write the images under ``data`` (an ImageFolder tree keeps its labels) into shards of at most
    ``shard_size`` images and about ``shard_bytes`` bytes in ``output``; the manifest is written last, atomically.
    ``max_side``: re-encode larger images at that longer side, JPEG ``quality`` (default 90)."""
    if shard_size < 1 or shard_bytes < 1:
        raise ConfigError(f"--shard-size {shard_size} / --shard-bytes {shard_bytes}: must be positive")
    if max_side is not None and max_side < 1:
        raise ConfigError(f"--max-side {max_side}: must be a positive number of pixels")
    if quality is not None and max_side is None:
        raise ConfigError("--quality is the JPEG quality of the images --max-side re-encodes: give --max-side too")
    if quality is not None and not 1 <= quality <= 100:
        raise ConfigError(f"--quality {quality}: must be between 1 and 100")
    quality = 90 if quality is None else quality
    out = Path(output)
    if (out / MANIFEST).exists() and not overwrite:
        raise ConfigError(f"--output {out} already holds shards; pass --overwrite to replace them")
    paths, labels, classes = scan_images(data, progress)
    order = list(range(len(paths)))
    if shuffle:
        random.Random(seed).shuffle(order)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a folder without a manifest is never taken for shards
    for old in out.glob("shard-*.tar"):
        old.unlink()
    report = WriteReport(out, 0, 0, 0)
    done: list[dict] = []
    shard: _Shard | None = None
    with progress_bar(progress, total=len(paths), desc=f"writing shards to {out}", unit=" images") as bar:
        for i in order:
            bar.update(1)
            try:
                with open(paths[i], "rb") as f:
                    data_bytes = f.read()
                decode_image(io.BytesIO(data_bytes), "RGB")  # unreadable files are skipped, as the loader would
            except Exception as e:  # noqa: BLE001 - any decoder failure means unreadable
                report.skipped += 1
                if len(report.first_skipped) < 10:
                    report.first_skipped.append(f"{paths[i]} ({describe(e)})")
                continue
            if shard is None or shard.count >= shard_size or shard.size >= shard_bytes:
                if shard is not None:
                    done.append(shard.close())
                shard = _Shard(out / SHARD_NAME.format(len(done)))
            ext = extension(paths[i])
            small = shrink(data_bytes, max_side, quality) if max_side is not None else None
            if small is not None:
                (data_bytes, ext), report.resized = small, report.resized + 1
            shard.write(f"{report.images:08d}", ext, data_bytes, labels[i] if labels else None)
            report.images += 1
    if shard is not None:
        done.append(shard.close())
    if not done:
        raise DataError(f"--data: none of the {len(paths)} image files in {data} can be read")
    manifest = {"format": FORMAT, "version": VERSION, "count": report.images, "classes": classes,
                "source": str(data), "seed": seed if shuffle else None, "skipped": report.skipped,
                "max_side": max_side, "quality": quality if max_side is not None else None, "resized": report.resized,
                "shards": done}
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest) + "\n")
    os.replace(tmp, out / MANIFEST)
    report.shards, report.bytes = len(done), sum(s["bytes"] for s in done)
    return report

