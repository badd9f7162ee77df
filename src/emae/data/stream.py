"""Streaming shards for pre-training, exactly resumable.

Each epoch's plan is a pure function of (run seed, epoch):

- the shards are put in a seeded random order and their samples read one after another;
- that sequence is cut into ``world_size x streams`` contiguous streams of equal length (the ``N mod P`` samples
  left at the end are not used that epoch; which ones changes with the shard order); rank r's stream v is
  number ``r * streams + v``, so ranks and streams never share a sample;
- each stream is shuffled by a seeded buffer of ``data.shuffle_buffer`` samples (the usual streaming shuffle);
- rank r's batch j of the epoch is batch ``j // streams`` of its stream ``j % streams``.

``streams`` is ``max(1, data.num_workers)``: the DataLoader fills its workers' queues round robin, so worker w
gets every streams-th batch and reads one stream from front to back. What a batch holds depends only on (seed,
epoch, rank, j), never on which worker builds it, so a resume at batch j continues exactly: the worker that gets
batch j restarts its stream there, reading from the first sample it still needs (shards before it are not
opened; samples before it in a local shard are skipped unread). Each sample's augmentation runs under its own
seed, as in the folder loader, crop-first and in uint8 (:class:`~emae.data.crop.CropSampler`). Exact resume needs the same world size, batch size and ``data.num_workers``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..errors import DataError
from .batch import stack_samples
from .crop import CropSampler
from .folder import describe
from .seeds import epoch_seed, sample_seed
from .shards import ShardSet, image_member


def buffered_order(n: int, size: int, rng: np.random.Generator) -> list[int]:
    """The order in which a shuffle buffer of ``size`` emits the items 0..n-1 read in order: each new item
    replaces a uniformly drawn one, which is emitted; the last ``size`` leave in random order."""
    size = max(1, min(size, n))
    buf, out = list(range(size)), []
    for t, j in zip(range(size, n), rng.integers(0, size, max(0, n - size)).tolist()):
        out.append(buf[j])
        buf[j] = t
    return out + [buf[k] for k in rng.permutation(len(buf)).tolist()]


class ShardBatchSampler(Sampler):
    """Yields ``(epoch, stream, batch in stream)`` for the rank's batches of an epoch, from ``start_batch`` on."""

    def __init__(self, streams: int, batches_per_stream: int) -> None:
        self.streams = streams
        self.batches_per_epoch = streams * batches_per_stream
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __iter__(self):
        return iter([(self.epoch, j % self.streams, j // self.streams)
                     for j in range(self.start_batch, self.batches_per_epoch)])

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)


class _Stream:
    """One stream of one epoch, positioned at a batch: reads ahead in order, holds what the buffer emits later."""

    def __init__(self, ds: ShardStreams, epoch: int, stream: int, batch: int) -> None:
        self.key, self.batch = (epoch, stream), batch
        self.order = buffered_order(ds.per_stream, ds.buffer, np.random.default_rng([ds.seed, epoch, stream]))
        self.emit_at = np.empty(len(self.order), dtype=np.int64)
        self.emit_at[self.order] = np.arange(len(self.order))
        self.cursor = batch * ds.batch_size
        start = min(self.order[self.cursor:], default=ds.per_stream)
        self.held: dict[int, tuple[int, dict | None, str]] = {}
        self.reader = ds.read(epoch, stream, start)

    def take(self, n: int) -> list[tuple[int, dict | None, str]]:
        out = []
        for q in self.order[self.cursor:self.cursor + n]:
            while q not in self.held:
                pos, *item = next(self.reader)
                if self.emit_at[pos] >= self.cursor:  # anything earlier was emitted before this resume point
                    self.held[pos] = tuple(item)
            out.append(self.held.pop(q))
            self.cursor += 1
        self.batch += 1
        return out


class ShardStreams(Dataset):
    """Items are whole batches, ``(uint8 images, labels, skipped names)``, keyed ``(epoch, stream, batch)``;
    ``crop`` turns one sample's encoded bytes into its augmented (C, H, W) uint8 image."""

    def __init__(self, shards: ShardSet, crop: CropSampler, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 streams: int = 1, buffer: int = 2000) -> None:
        self.shards, self.crop = shards, crop
        self.batch_size, self.seed, self.rank, self.buffer = batch_size, seed, rank, buffer
        self.streams = max(1, streams)
        self.per_stream = len(shards) // (world_size * self.streams)
        self.batches_per_stream = self.per_stream // batch_size
        self._layout: tuple[int, list[int], list[int]] | None = None
        self._state: _Stream | None = None

    def __len__(self) -> int:
        return self.streams * self.batches_per_stream

    def layout(self, epoch: int) -> tuple[list[int], list[int]]:
        """The epoch's shard order and where each shard starts in the epoch's sequence."""
        if self._layout is None or self._layout[0] != epoch:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(len(self.shards.counts), generator=g).tolist()
            starts = np.concatenate([[0], np.cumsum([self.shards.counts[s] for s in order])]).tolist()
            self._layout = (epoch, order, starts)
        return self._layout[1], self._layout[2]

    def read(self, epoch: int, stream: int, start: int):
        """(position in stream, sample id, {ext: bytes} or None, why it is missing) from position ``start`` to
        the stream's end; a shard that ends early or breaks yields its remaining positions as missing."""
        order, starts = self.layout(epoch)
        lo = (self.rank * self.streams + stream) * self.per_stream
        hi = lo + self.per_stream
        first = lo + start
        t = int(np.searchsorted(starts, first, side="right")) - 1
        while t < len(order) and starts[t] < hi:
            shard, base = order[t], starts[t]
            begin, end = max(first, base) - base, min(hi, starts[t + 1]) - base
            pos, why = begin, ""
            try:
                for pos_in, sample in self.shards.samples(shard, begin):
                    if pos_in >= end:
                        break
                    yield base + pos_in - lo, self.shards.starts[shard] + pos_in, sample, ""
                    pos = pos_in + 1
                else:
                    why = f"{self.shards.location(shard)} ends after {pos} of {self.shards.counts[shard]} samples"
            except Exception as e:  # noqa: BLE001 - a truncated or unreadable shard: the rest is missing
                why = f"{self.shards.location(shard)} is damaged after sample {pos} ({describe(e)})"
            for missing in range(pos, end):
                yield base + missing - lo, self.shards.starts[shard] + missing, None, why
            t += 1

    def __getitem__(self, item: tuple[int, int, int]):
        epoch, stream, batch = item
        state = self._state
        if state is None or state.key != (epoch, stream) or state.batch != batch:
            state = self._state = _Stream(self, epoch, stream, batch)
        return self.collate(epoch, state.take(self.batch_size))

    def collate(self, epoch: int, items: list[tuple[int, dict | None, str]]):
        """Decode and augment; an unreadable slot takes the next readable image of the batch and is reported."""
        n, imgs, labels, bad = len(items), [None] * len(items), [-1] * len(items), []
        for slot, (gid, sample, why) in enumerate(items):
            try:
                if sample is None:
                    raise DataError(why)
                data = image_member(sample)
                with torch.random.fork_rng(devices=[]):
                    torch.default_generator.manual_seed(sample_seed(self.seed, epoch, gid))
                    imgs[slot] = self.crop.from_bytes(data, self.shards.mode)
            except Exception as e:  # noqa: BLE001 - any decoder failure means unreadable
                if self.shards.strict:
                    raise DataError(f"unreadable image {self.shards.name(gid)} ({describe(e)})") from None
                bad.append(self.shards.name(gid))
                continue
            labels[slot] = self.shards.label(gid)
        good = {i for i in range(n) if imgs[i] is not None}
        if not good:
            raise DataError(f"no image of a batch could be read, e.g. {bad[0]}: {items[0][2] or 'undecodable'}")
        for i in range(n):
            if imgs[i] is None:
                j = next(k % n for k in range(i, i + n) if k % n in good)
                imgs[i], labels[i] = imgs[j], labels[j]
        return stack_samples(imgs), torch.tensor(labels), bad


def as_is(batch):
    """``collate_fn`` for items that are whole batches already."""
    return batch
