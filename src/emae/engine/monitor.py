"""The pre-training monitor: is pre-training working, before it ends and without labels for the training set?

Before the first step of a new run (step 0: the starting weights, the baseline to read the rest against), every
``train.monitor.every`` steps (0: every epoch) and at the end, on a fixed set of held-out images
(``train.monitor.data``, e.g. ``--monitor-data DIR``; a seeded class-balanced subset of ``train.monitor.images``):

- ``knn_top1``: weighted k-NN top-1 (k = ``train.monitor.k``, cosine, votes exp(sim / 0.07), as ``emae knn``) of
  the current encoder's mean patch token; the set is split (class-balanced, seeded) into a bank and queries of
  equal size, so it estimates what ``emae knn`` reports with a bank of that size. Needs class folders.
- ``rankme``: the effective rank of the same embeddings (Garrido et al. 2023): no labels needed.
- ``recon``: the masked reconstruction loss on the first ``recon_images`` images with fixed masks.

Records ``type: monitor`` in log.jsonl (``monitor/knn_top1`` ... in TensorBoard). The monitor runs with its own RNG
(``torch.random.fork_rng``) and its own mask generator, so a run's numbers do not depend on it; its cost is
measured, logged and printed at the end ("monitor: 3.1% of run time").
"""

from __future__ import annotations

import time

import torch

from ..config import Config
from ..data import eval_transform, open_images
from ..data.subset import limit
from ..errors import DataError
from .device import autocast
from .distributed import DistInfo, barrier
from .loop import Hook, Loop, StepInfo
from .metrics import knn_scores, rankme, topk_accuracy
from .sharded import plain_model

MASK_SEED = 1234  # the monitor's masks: the same at every measurement


class MonitorSet:
    """The monitor's images, decoded once and kept as tensors: eval transform (resize, centre crop, normalise)."""

    def __init__(self, cfg: Config, progress: bool = False) -> None:
        mon, m = cfg.train.monitor, cfg.model
        source = limit(open_images(mon.data, m.in_chans, progress=progress), mon.images, seed=0)
        if len(source) < 2:
            raise DataError(f"train.monitor.data: {mon.data} holds {len(source)} image(s); the monitor needs at "
                            f"least 2")
        tf = eval_transform(m.image_size, cfg.data.mean, cfg.data.std)
        self.images = torch.stack([tf(source.fetch(i)[0]) for i in range(len(source))])
        self.labels = None if source.labels is None else torch.tensor(source.labels)
        self.classes = len(source.classes) if source.classes else 0
        self.bank, self.queries = self.split()

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every other image of each class (in a seeded order) to the bank, the rest to the queries."""
        order = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(0))
        labels = self.labels if self.labels is not None else torch.zeros(len(self.images), dtype=torch.long)
        bank, queries, seen = [], [], {}
        for i in order.tolist():
            c = int(labels[i])
            (bank if seen.get(c, 0) % 2 == 0 else queries).append(i)
            seen[c] = seen.get(c, 0) + 1
        return torch.tensor(sorted(bank)), torch.tensor(sorted(queries))


class MonitorHook(Hook):
    def __init__(self, cfg: Config, info: DistInfo, progress: bool = False) -> None:
        self.cfg, self.info = cfg, info
        self.data = MonitorSet(cfg, progress) if info.is_main else None  # read before any training step
        self.seconds, self.start, self.measured = 0.0, 0.0, None

    def on_start(self, loop: Loop) -> None:
        self.start = time.perf_counter()
        if loop.pos.step == 0:  # the starting weights (random init, or --init's): the baseline for the rest
            self.measure(loop)

    def after_step(self, loop: Loop, info: StepInfo) -> None:
        every = self.cfg.train.monitor.every
        if every and loop.pos.step % every == 0 and loop.stop is None:
            self.measure(loop)

    def after_epoch(self, loop: Loop) -> None:
        if not self.cfg.train.monitor.every and loop.stop is None:
            self.measure(loop)

    def on_end(self, loop: Loop) -> None:
        if loop.done and self.measured != loop.pos.step and loop.pos.step > 0:
            self.measure(loop)
        total = time.perf_counter() - self.start
        if self.info.is_main and total > 0 and self.measured is not None:
            share = self.seconds / total
            loop.log.write(type="monitor_cost", step=loop.pos.step, seconds=round(self.seconds, 2), share=share)
            print(f"monitor: {100 * share:.1f}% of run time ({self.seconds:.1f} of {total:.0f} s)", flush=True)

    def measure(self, loop: Loop) -> None:
        """All ranks call (FSDP gathers the model); rank 0 measures, the others wait."""
        start = time.perf_counter()
        model = plain_model(loop.model, self.cfg, self.info)
        if self.info.is_main:
            was_training = model.training
            model.eval()
            devices = [loop.device] if loop.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                record = self.record(model, loop)
            model.train(was_training)
            loop.log.write(type="monitor", step=loop.pos.step, **record)
        barrier()
        self.measured = loop.pos.step
        self.seconds += time.perf_counter() - start

    def record(self, model, loop: Loop) -> dict[str, float]:
        return measure(model, self.data, self.cfg, loop.device)


@torch.no_grad()
def measure(model, data: MonitorSet, cfg: Config, device: torch.device) -> dict[str, float]:
    """The monitor's figures of a masked autoencoder (in eval mode) on its images: ``rankme``, ``recon`` and, with
    labels, ``knn_top1``."""
    mon = cfg.train.monitor
    feats = []
    for i in range(0, len(data.images), mon.batch_size):
        with autocast(device, cfg.train.precision):
            feats.append(model.extract_features(data.images[i:i + mon.batch_size].to(device), pool="avg").float())
    feats = torch.cat(feats).cpu()
    out = {"rankme": rankme(feats)}
    if data.labels is not None and data.classes > 1:
        scores = knn_scores(feats[data.bank], data.labels[data.bank], feats[data.queries], data.classes, mon.k)
        out["knn_top1"] = topk_accuracy(scores, data.labels[data.queries], (1,))[0]
    imgs = data.images[:mon.recon_images].to(device)
    mask = model.make_mask(imgs.shape[0], generator=torch.Generator(device).manual_seed(MASK_SEED), device=device)
    with autocast(device, cfg.train.precision):
        terms = model(imgs, mask=mask).terms
    out["recon"] = float(terms.get("recon", terms["loss"]))
    return out
