"""Data loading for pre-training: a resumable, shardable sampler, a collate that carries skipped paths, and a
shutdown that never hangs."""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401 - its exit handler must be registered before ours, so ours runs first
import signal
import time
import weakref

import torch
from torch.utils.data import DataLoader, Sampler

from ..config import Config
from ..errors import ConfigError, DataError
from .cache import DecodedCache
from .batch import normalize_uint8, stack_samples
from .crop import CropSampler, CroppedImages
from .device_decode import EncodedBatch, EncodedImages, collate_encoded, decode_batch
from .embedded import EmbeddedDigits
from .prefetch import DevicePrefetcher, Prepared
from .seeds import epoch_seed, sample_seed
from .shards import ShardSet, is_shards, open_images
from .stream import ShardBatchSampler, ShardStreams, as_is


class ResumableSampler(Sampler):
    """A seeded per-epoch permutation, sharded over ``world_size`` ranks like ``DistributedSampler``
    (padding by wrapping around), that can start mid-epoch. Yields ``(index, sample_seed)`` pairs."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        per_rank = -(-size // world_size)
        self.batches_per_epoch = per_rank // batch_size  # drop_last

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def _indices(self) -> list[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=g).tolist()
        total = -(-self.size // self.world_size) * self.world_size
        order += order[: total - self.size]
        mine = order[self.rank :: self.world_size]
        return mine[self.start_batch * self.batch_size : self.batches_per_epoch * self.batch_size]

    def __iter__(self):
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in self._indices()])

    def __len__(self) -> int:
        return max(0, (self.batches_per_epoch - self.start_batch) * self.batch_size)


class SeededShuffle(Sampler):
    """The order in which ``DataLoader(shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed))``
    visits a data set over the epochs in one process (each epoch the loader draws an int64 from the generator for
    its workers' base seed, torch's RandomSampler a permutation, and, once the epoch is read to its end, a second
    one for the empty remainder), as a sampler that can start at any epoch and batch, so fine-tuning and probing
    resume in place.
    Yields plain indices (the augmentation draws from the process's RNG, whose state checkpoints keep)."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.batches_per_epoch = size // batch_size  # drop_last
        self.epoch, self.start_batch = 0, 0
        self._replayed: tuple[int, torch.Tensor] | None = None  # (epochs drawn, the generator's state after them)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _permutation(self) -> list[int]:
        g = torch.Generator()
        done = 0
        if self._replayed is not None and self._replayed[0] <= self.epoch:
            done, state = self._replayed
            g.set_state(state)
        else:
            g.manual_seed(self.seed)
        for _ in range(done, self.epoch + 1):
            torch.empty((), dtype=torch.int64).random_(generator=g)
            order = torch.randperm(self.size, generator=g)
            torch.randperm(self.size, generator=g)
        self._replayed = (self.epoch + 1, g.get_state())
        return order.tolist()

    def __iter__(self):
        order = self._permutation()
        return iter(order[self.start_batch * self.batch_size: self.batches_per_epoch * self.batch_size])

    def __len__(self) -> int:
        return max(0, (self.batches_per_epoch - self.start_batch) * self.batch_size)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """``worker_init_fn``: workers ignore SIGINT/SIGTERM (a Ctrl-C reaches the whole process group); the main
    process handles them (``emae.engine.signals``) and shuts the workers down."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def close_loader(loader: DataLoader, timeout: float = 5.0) -> None:
    """Stop a loader's worker processes now, on any exit path. They ignore SIGTERM (see
    :func:`ignore_stop_signals`), so the interpreter's own exit, which terminates daemonic children with SIGTERM and
    then joins them, would wait for ever. Polite first (torch's shutdown: a stop message, a join with a timeout),
    then SIGKILL for any worker still alive ``timeout`` seconds later."""
    if isinstance(loader, DevicePrefetcher):  # data.device_prefetch: its thread first, then the loader it reads
        loader.close(timeout)
        loader = loader.loader
    it = loader.__dict__.get("_iterator")  # persistent workers: the loader keeps its iterator
    workers = list(getattr(it, "_workers", []))
    try:
        if it is not None:
            it._shutdown_workers()
    finally:
        loader._iterator = None
        deadline = time.monotonic() + timeout
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                w.kill()
                w.join(1.0)


_OPEN: weakref.WeakSet = weakref.WeakSet()  # loaders with workers that ignore SIGTERM


@atexit.register
def _close_open_loaders() -> None:
    """The last resort, before multiprocessing's exit handler joins the workers: a loader that the code holding it
    did not close (an exception kept it alive) is closed here."""
    for loader in list(_OPEN):
        close_loader(loader, timeout=2.0)


def collate(batch):
    imgs, labels, skipped = zip(*batch)
    return stack_samples(list(imgs)), torch.tensor(labels), [p for s in skipped for p in s]


def image_source(cfg: Config, progress: bool = True):
    """The images named by ``data.path``, or the embedded digits when it is None (and the recipe allows it)."""
    if cfg.data.path is None and cfg.data.required:
        raise DataError("this recipe trains on real data (data.required=true): give --data DIR (an ImageFolder tree, "
                        "a folder of images or shards; `emae data cifar10 --output DIR` downloads one)")
    if cfg.data.path is None:
        return EmbeddedDigits(max(cfg.model.image_size), cfg.model.in_chans)
    if is_shards(cfg.data.path) and (cfg.data.cache or cfg.data.decode == "device"):
        option = "data.cache=true" if cfg.data.cache else "data.decode=device"
        raise ConfigError(f"{option} needs an image folder; shards ({cfg.data.path}) stream and decode on the CPU")
    files = open_images(cfg.data.path, cfg.model.in_chans, cfg.data.strict, progress)
    return DecodedCache(files, progress) if cfg.data.cache else files


def pretrain_loader(cfg: Config, source, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                    device: torch.device | None = None) -> DataLoader:
    """Batches of (images, labels, skipped names) whose ``sampler`` has ``batches_per_epoch`` and
    ``set_epoch(epoch, start_batch)``: a seeded permutation of an image source, or shard streams. ``device``: the
    training device; with ``data.device_prefetch`` the batches come ready on it, one ahead (data/prefetch.py)."""
    loader = _pretrain_loader(cfg, source, rank, world_size, pin_memory)
    if cfg.data.device_prefetch and device is not None:
        return DevicePrefetcher(loader, lambda imgs: batch_to_device(imgs, cfg, device), device)
    return loader


def _pretrain_loader(cfg: Config, source, rank: int, world_size: int, pin_memory: bool) -> DataLoader:
    d = cfg.data
    if isinstance(source, ShardSet):
        return shard_loader(cfg, source, rank, world_size, pin_memory)
    if d.decode == "device":  # workers read bytes and draw crops; batch_to_device decodes
        dataset, collate_fn = EncodedImages(source, cfg.model.image_size, d.scale, d.hflip), collate_encoded
    else:  # workers crop first and send uint8; batch_to_device normalises
        dataset, collate_fn = CroppedImages(source, crop_sampler(cfg)), collate
    sampler = ResumableSampler(len(dataset), cfg.train.batch_size, cfg.train.seed, rank, world_size)
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=d.num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=True,
        persistent_workers=d.num_workers > 0,
        prefetch_factor=d.prefetch_factor if d.num_workers > 0 else None,
        worker_init_fn=ignore_stop_signals,
    )
    if d.num_workers > 0:
        _OPEN.add(loader)
    return loader


def shard_loader(cfg: Config, shards: ShardSet, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False) -> DataLoader:
    d = cfg.data
    dataset = ShardStreams(shards, crop_sampler(cfg), cfg.train.batch_size, cfg.train.seed, rank, world_size, d.num_workers,
                           d.shuffle_buffer)
    if dataset.batches_per_stream == 0:
        raise DataError(f"data: {len(shards)} images over {world_size} process(es) x {dataset.streams} stream(s) give "
                        f"no full batch of {cfg.train.batch_size} per stream; lower the batch size or data.num_workers")
    sampler = ShardBatchSampler(dataset.streams, dataset.batches_per_stream)
    loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=d.num_workers, collate_fn=as_is,
                        pin_memory=pin_memory, persistent_workers=d.num_workers > 0,
                        prefetch_factor=d.prefetch_factor if d.num_workers > 0 else None,
                        worker_init_fn=ignore_stop_signals)
    if d.num_workers > 0:
        _OPEN.add(loader)
    return loader


def crop_sampler(cfg: Config) -> CropSampler:
    d = cfg.data
    return CropSampler(cfg.model.image_size, d.scale, d.hflip, d.draft, d.resize, d.decoder)


def batch_to_device(imgs, cfg: Config, device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """A loader batch as a normalised float tensor on ``device``, and the paths that failed to decode there
    (``data.decode=device`` only; the CPU path reports its failures with the batch). uint8 batches (the workers'
    crops) are normalised here, on the device, to exactly the values of torchvision's ToTensor + Normalize."""
    if isinstance(imgs, Prepared):  # data.device_prefetch: ready already, on a side stream
        return imgs.take()
    if isinstance(imgs, EncodedBatch):
        return decode_batch(imgs, cfg.model.image_size, cfg.data.mean, cfg.data.std, device)
    imgs = imgs.to(device, non_blocking=True)
    if imgs.dtype == torch.uint8:
        return normalize_uint8(imgs, cfg.data.mean, cfg.data.std), []
    return imgs, []
