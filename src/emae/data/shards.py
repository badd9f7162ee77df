"""Image shards: WebDataset tar files and a manifest, read from a local folder or a URL.

A shard folder (``emae shards write``) holds ``shards.json`` and ``shard-000000.tar``, ``shard-000001.tar``, ...
Each tar is in WebDataset's layout: per sample ``KEY.jpg`` (the image's original encoded bytes; ``.png`` and so on
as found) and, for ImageFolder trees, ``KEY.cls`` (the class index). The manifest names the shards with their
sample counts and labels, so a reader knows the data set's size and classes without reading a shard.

Shards open through WebDataset's ``gopen``: local paths, ``file://``, ``http(s)://`` (curl), ``gs://``
(gsutil), ``pipe:COMMAND``; ``s3://`` goes through ``aws s3 cp URL -``.

:class:`ShardSet` is an image source like :class:`~emae.data.folder.ImageFiles` (``fetch(i)`` by random access:
local tars are indexed, remote ones copied to a local cache first); :mod:`emae.data.stream` streams them for
pre-training.
"""

from __future__ import annotations

import bisect
import io
import json
import os
import shlex
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ..errors import DataError
from .folder import PIL_MODES, ImageFiles, decode_image, describe, read_first

MANIFEST = "shards.json"
FORMAT, VERSION = "emae-shards", 1
LABEL_EXT = "cls"


def is_url(location: str) -> bool:
    return "://" in location or location.startswith("pipe:")


def is_shards(location: str | os.PathLike) -> bool:
    """A URL, a folder holding ``shards.json``, or that file itself."""
    text = str(location)
    path = Path(text)
    return is_url(text) or (path / MANIFEST).is_file() or (path.name == MANIFEST and path.is_file())


def open_images(location: str | os.PathLike, in_chans: int = 3, strict: bool = False, progress: bool = True):
    """A shard folder or URL as a :class:`ShardSet`, anything else as an image folder (:class:`ImageFiles`)."""
    if is_shards(location):
        return ShardSet(location, in_chans, strict)
    return ImageFiles(location, in_chans, strict, progress)


def open_location(location: str):
    """A readable binary stream for a local path or a URL."""
    if not is_url(location) or location.startswith("file://"):
        return open(location.removeprefix("file://"), "rb")
    from webdataset.gopen import gopen

    if location.startswith("s3://"):
        return gopen(f"pipe:aws s3 cp {shlex.quote(location)} -", "rb")
    return gopen(location, "rb")


def split_member(name: str) -> tuple[str, str]:
    """``00000012.jpg`` -> (``00000012``, ``jpg``): the key is everything before the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext.lower()


def image_member(sample: dict[str, bytes]) -> bytes:
    data = next((v for k, v in sample.items() if k != LABEL_EXT), None)
    if data is None:
        raise DataError("sample has no image member")
    return data


class ShardSet:
    """The samples of a shard folder or URL; ``fetch(i)`` returns (PIL image, label, skipped names)."""

    def __init__(self, location: str | os.PathLike, in_chans: int = 3, strict: bool = False,
                 cache_dir: str | None = None) -> None:
        location = str(location)
        self.root = location
        manifest_at = location if location.endswith(".json") else location.rstrip("/") + "/" + MANIFEST
        self.base = manifest_at[: -len(MANIFEST)] if manifest_at.endswith(MANIFEST) else manifest_at.rsplit("/", 1)[0] + "/"
        try:
            with open_location(manifest_at) as f:
                manifest = json.loads(f.read())
        except (OSError, ValueError) as e:
            raise DataError(f"data.path: cannot read the shard manifest {manifest_at} ({describe(e)}); shard "
                            f"folders are written by `emae shards write`") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DataError(f"data.path: {manifest_at} is not an emae shard manifest")
        if manifest.get("version", 0) > VERSION:
            raise DataError(f"data.path: {manifest_at} has format version {manifest['version']}; this emae reads "
                            f"up to {VERSION}: upgrade emae")
        shards = manifest["shards"]
        if not shards or not sum(s["count"] for s in shards):
            raise DataError(f"data.path: {manifest_at} lists no samples")
        self.names = [s["name"] for s in shards]
        self.counts = [int(s["count"]) for s in shards]
        self.starts = [0]
        for n in self.counts:
            self.starts.append(self.starts[-1] + n)
        self.classes = manifest.get("classes")
        self.labels = [y for s in shards for y in s["labels"]] if self.classes is not None else None
        self.mode = PIL_MODES[in_chans]
        self.strict = strict
        self.cache_dir = cache_dir
        self._index: dict[int, list[tuple[int, int]]] = {}  # shard -> (offset, size) of each sample's image

    def __len__(self) -> int:
        return self.starts[-1]

    def location(self, shard: int) -> str:
        return self.base + self.names[shard]

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, position in it) of sample ``index``."""
        shard = bisect.bisect_right(self.starts, index) - 1
        return shard, index - self.starts[shard]

    def name(self, index: int) -> str:
        shard, pos = self.locate(index)
        return f"{self.location(shard)}#{pos}"

    def label(self, index: int) -> int:
        return self.labels[index] if self.labels else -1

    def decode(self, data: bytes) -> Image.Image:
        return decode_image(io.BytesIO(data), self.mode)

    # ------------------------------------------------------------ streaming

    def samples(self, shard: int, start: int = 0) -> Iterator[tuple[int, dict[str, bytes]]]:
        """(position, {extension: bytes}) of the shard's samples from ``start`` on, read in order. Members before
        ``start`` are skipped unread where the file can seek. A damaged shard raises ``tarfile.TarError`` or
        ``OSError`` (the caller counts the rest as missing)."""
        where = self.location(shard)
        stream = None if not is_url(where) else open_location(where)
        try:
            tar = tarfile.open(where, "r:") if stream is None else tarfile.open(fileobj=stream, mode="r|")
            with tar:
                pos, key, sample = -1, None, {}
                for member in tar:
                    if not member.isfile():
                        continue
                    k, ext = split_member(member.name)
                    if k != key:
                        if key is not None and pos >= start:
                            yield pos, sample
                        pos, key, sample = pos + 1, k, {}
                    if pos >= start:
                        sample[ext] = tar.extractfile(member).read()
                if key is not None and pos >= start:
                    yield pos, sample
        finally:
            if stream is not None:
                stream.close()

    # ------------------------------------------------------------ random access

    def _local_copy(self, shard: int) -> str:
        where = self.location(shard)
        if not is_url(where) or where.startswith("file://"):
            return where.removeprefix("file://")
        if self.cache_dir is None:
            self.cache_dir = tempfile.mkdtemp(prefix="emae-shards-")
        path = os.path.join(self.cache_dir, self.names[shard])
        if not os.path.exists(path):
            with open_location(where) as src, open(path + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(path + ".part", path)
        return path

    def _offsets(self, shard: int) -> list[tuple[int, int]]:
        """Where each sample's image bytes lie in the (local copy of the) shard; built once per shard."""
        if shard not in self._index:
            entries: list[tuple[int, int]] = []
            key = None
            with tarfile.open(self._local_copy(shard), "r:") as tar:
                for member in tar:
                    k, ext = split_member(member.name)
                    if member.isfile() and k != key and ext != LABEL_EXT:
                        entries.append((member.offset_data, member.size))
                        key = k
            self._index[shard] = entries
        return self._index[shard]

    def read_bytes(self, index: int) -> bytes:
        shard, pos = self.locate(index)
        offsets = self._offsets(shard)
        if pos >= len(offsets):
            raise DataError(f"{self.location(shard)} ends after {len(offsets)} of {self.counts[shard]} samples")
        offset, size = offsets[pos]
        with open(self._local_copy(shard), "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise DataError(f"{self.location(shard)} is truncated")
        return data

    def fetch(self, index: int) -> tuple[Image.Image, int, list[str]]:
        img, i, skipped = read_first(index, len(self), lambda j: self.decode(self.read_bytes(j)), self.name, self.strict)
        return img, self.label(i), skipped

    def preview_indices(self, n: int) -> list[int]:
        """``n`` samples for pictures, spread over the first shard (one shard to read, even from a URL)."""
        first = self.counts[0]
        return sorted({round(i * (first - 1) / max(1, n - 1)) for i in range(min(n, first))})
