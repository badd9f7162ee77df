"""Data pipeline against the training step: is the loader ever the bottleneck?

In one run: the pre-training loader on its own (JPEG decode + RandomResizedCrop + flip + normalise, with the
recipe's worker count), with and without the decoded-image cache (``data.cache=true``), and the training
step on its own (synthetic batch of the same shape, forward + backward + fused AdamW); then ``data.decode=device``:
the workers alone (reading bytes, drawing crops) and with the batch decoded in this process on the GPU (or the
host without one); then the same images as WebDataset shards (``emae shards write``), streamed. Prints img/s and
the ratio loader / step; the goal is >= 3.

    python benchmarks/loader.py [--data ../shared/data/cifar10/train] [--config mae_vit_tiny_p4_cifar10]
                                [--workers 2] [--batches 40] [--steps 6] [--shards DIR] [key=value ...]

On a machine with as many cores as this one (2), the loader's workers and the training step share the cores
in a real run; both are measured alone here, which is the standard loader benchmark. ``emae pretrain
--benchmark N`` reports the other side: the share of step time the real loop spends waiting for data.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from emae.config import load_config
from emae.data import batch_to_device, image_source, is_shards, pretrain_loader
from emae.data.shard_writer import write_shards
from emae.engine.optim import build_optimizer, effective_lr
from emae.models import build_model

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "train"


def loader_rate(cfg, batches: int, device: torch.device | None = None, skip: int = 1) -> tuple[float, float]:
    """(img/s over ``batches`` batches after the first ``skip``, seconds to build the source). With ``device``, each
    batch is also made ready there (``data.decode=device``: decoded in this process, as the training loop does).
    Skipping one batch per worker leaves out the batches that were prepared while the first was awaited; skipped
    batches are made ready on ``device`` too (the decoder's set-up is not throughput either)."""
    t0 = time.perf_counter()
    source = image_source(cfg)
    build = time.perf_counter() - t0
    loader = pretrain_loader(cfg, source, pin_memory=device is not None and device.type == "cuda")
    loader.sampler.set_epoch(0)
    it = iter(loader)
    for _ in range(skip):  # worker start-up is not throughput
        imgs, _, _ = next(it)
        if device is not None:
            batch_to_device(imgs, cfg, device)
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        imgs, _, _ = next(it)
        if device is not None:
            imgs, _ = batch_to_device(imgs, cfg, device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        n += len(imgs)
    return n / (time.perf_counter() - t), build


def step_rate(cfg, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = build_optimizer(model, cfg.train, effective_lr(cfg.train))
    imgs = torch.randn(cfg.train.batch_size, cfg.model.in_chans, *cfg.model.image_size)
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        model(imgs).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return cfg.train.batch_size / statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--config", default="mae_vit_tiny_p4_cifar10")
    ap.add_argument("--workers", type=int, help="loader processes (default: the recipe's data.num_workers)")
    ap.add_argument("--batches", type=int, default=40, help="timed loader batches per setting")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps")
    ap.add_argument("--shards", help="shards of --data (written there first when missing; default: a temporary folder)")
    ap.add_argument("override", nargs="*")
    args = ap.parse_args(argv)
    overrides = list(args.override) + ([f"data.num_workers={args.workers}"] if args.workers is not None else [])
    cfg = load_config(args.config, overrides, **{"data.path": args.data})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.config}: batch "
          f"{cfg.train.batch_size}, {cfg.model.image_size[0]}x{cfg.model.image_size[1]} px, "
          f"{cfg.data.num_workers} workers; data {args.data}", flush=True)
    step = step_rate(cfg, args.steps)
    print(f"training step alone:       {step:9.1f} img/s", flush=True)
    results = {}
    for cache in (False, True):
        cfg.data.cache = cache
        rate, build = loader_rate(cfg, args.batches)
        results[cache] = rate
        label = "loader, decoded cache" if cache else "loader, JPEG decode"
        extra = f" (cache built in {build:.1f} s)" if cache else ""
        print(f"{label + ':':26} {rate:9.1f} img/s  ratio loader / step {rate / step:5.2f}{extra}", flush=True)
    cfg.data.cache, cfg.data.decode = False, "device"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers, _ = loader_rate(cfg, args.batches)
    print(f"{'workers, device decode:':26} {workers:9.1f} img/s  (read bytes + draw crops only)", flush=True)
    ready, _ = loader_rate(cfg, args.batches, device)
    print(f"{'+ decode on ' + device.type + ':':26} {ready:9.1f} img/s  ratio loader / step {ready / step:5.2f}"
          f"{' (decoding in the training process, on the host)' if device.type == 'cpu' else ''}", flush=True)
    cfg.data.decode = "cpu"
    with tempfile.TemporaryDirectory(prefix="emae-shards-") as tmp:
        shards = Path(args.shards or tmp)
        if not is_shards(shards):
            t0 = time.perf_counter()
            r = write_shards(args.data, shards, progress=False)
            print(f"{'(shards written:':26} {r.images} images, {r.shards} shards, {r.bytes / 1e6:.0f} MB in "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
        cfg.data.path = str(shards)
        streamed, _ = loader_rate(cfg, args.batches)
    print(f"{'loader, shards:':26} {streamed:9.1f} img/s  ratio loader / step {streamed / step:5.2f}"
          f"  ({streamed / results[False]:.2f}x the folder loader)", flush=True)
    print(f"\nratio loader/step {results[False] / step:.2f} (cache {results[True] / step:.2f}, "
          f"device decode on {device.type} {ready / step:.2f}, shards {streamed / step:.2f})")


if __name__ == "__main__":
    sys.exit(main())
