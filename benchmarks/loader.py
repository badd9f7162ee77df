"""Data pipelines: against the training step (default), or against FB MAE's loader per CPU core (``--jpegs``).

``--jpegs DIR`` (issue 25) measures side by side, per CPU core, with 1 and 2 workers: (a) FB MAE's reference loader
(ImageFolder + PIL + RandomResizedCrop(224, scale=(0.2, 1), bicubic) + flip + ToTensor + Normalize, float32),
(b) emae's folder loader (crop-first, uint8, PIL's decoder; also with ``data.resize=torch``, and with
``data.decoder=simplejpeg`` when installed), (c) emae's shard loader on shards of the same files, (d) the same from
``emae shards write --max-side 256`` shards; on DIR's JPEGs and on synthetic
1024x768 JPEGs; img/s, img/s per core and the ratio to (a). emae's uint8 batches are normalised on the device in
the training process (``batch_to_device``): not in the workers' figures; its cost on this CPU is printed apart.

    python benchmarks/loader.py --jpegs ../shared/data/camvid/train/images [--rounds 2] [--workers 1,2]

Default mode: the pre-training loader alone (JPEG decode + crop + flip, the recipe's worker count), with and without
the decoded-image cache, ``data.decode=device``, shards, against the training step on its own.

    python benchmarks/loader.py [--data ../shared/data/cifar10/train] [--config mae_vit_tiny_p4_cifar10]
                                [--workers 2] [--batches 40] [--steps 6] [--shards DIR] [key=value ...]

In one run: the loader with and without the decoded-image cache (``data.cache=true``), the training step on its
own (synthetic batch of the same shape, forward + backward + fused AdamW); then ``data.decode=device``: the workers
alone (reading bytes, drawing crops) and with the batch decoded in this process on the GPU (or the host without
one); then the same images as WebDataset shards (``emae shards write``), streamed. Prints img/s and the ratio
loader / step; the goal is >= 3.

On a machine with as many cores as this one (2), the loader's workers and the training step share the cores
in a real run; both are measured alone here, which is the standard loader benchmark. ``emae pretrain
--benchmark N`` reports the other side: the share of step time the real loop spends waiting for data.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from emae.config import load_config
from emae.data import batch_to_device, image_source, is_shards, jpeg, pretrain_loader
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


PIL, FAST = ("data.decoder=pil",), ("data.decoder=simplejpeg",)
TORCH = ("data.resize=torch",)
PIPELINES = [  # (row, kind, overrides); kind: reference, folder, shards, shards-256
    ("(a) FB MAE reference", "reference", ()),
    ("(b) emae folder", "folder", PIL),
    ("(b) + data.resize=torch", "folder", PIL + TORCH),
    ("(b) + simplejpeg", "folder", FAST),
    ("(b) + simplejpeg + data.resize=torch", "folder", FAST + TORCH),
    ("(c) emae shards", "shards", PIL),
    ("(c) + simplejpeg + data.resize=torch", "shards", FAST + TORCH),
    ("(d) emae shards --max-side 256", "shards-256", PIL),
    ("(d) + data.resize=torch", "shards-256", PIL + TORCH),
    ("(d) + simplejpeg + data.resize=torch", "shards-256", FAST + TORCH),
]


def jpeg_inputs(args, tmp: Path) -> list[tuple[str, Path]]:
    """(description, ImageFolder root) of each input set: DIR's JPEGs linked ``--repeats`` times, and synthetic."""
    from loader_pipelines import linked_copies, synthetic_jpegs

    src = Path(args.jpegs)
    real = linked_copies(src, tmp / "real", args.repeats)
    count = len(list((real / "all").iterdir()))
    with Image.open(next((real / "all").iterdir())) as im:
        size = f"{im.width}x{im.height}"
    sets = [(f"{src} ({count // args.repeats} JPEGs of {size}, each linked {args.repeats}x)", real)]
    if args.synthetic:
        w, h = (int(v) for v in args.synthetic.split("x"))
        synthetic_jpegs(tmp / "synth", args.synthetic_count, w, h)
        sets.append((f"synthetic: {args.synthetic_count} JPEGs of {w}x{h}, quality 90", tmp / "synth"))
    return sets


def jpeg_table(args) -> None:
    """Per-core img/s of each pipeline with each worker count, the best of ``--rounds`` rounds (alternating)."""
    from loader_pipelines import emae_config, emae_loader, rate, reference_loader

    from emae.data.batch import normalize_uint8

    workers = [int(w) for w in args.workers.split(",")] if args.workers else [1, 2]
    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}; "
          f"batch {args.batch_size}, {args.size} px; best of {args.rounds} rounds", flush=True)
    with tempfile.TemporaryDirectory(prefix="emae-loader-") as tmp_name:
        tmp = Path(tmp_name)
        for title, root in jpeg_inputs(args, tmp):
            t0 = time.perf_counter()
            write_shards(root, tmp / "sh" / root.name, progress=False)
            write_shards(root, tmp / "sh256" / root.name, progress=False, max_side=256)
            paths = {"folder": root / "all", "shards": tmp / "sh" / root.name, "shards-256": tmp / "sh256" / root.name}
            print(f"\n{title}; shards written in {time.perf_counter() - t0:.0f} s", flush=True)
            best: dict[tuple[str, int], float] = {}
            pipelines = [p for p in PIPELINES if jpeg.available() or FAST[0] not in p[2]]
            for _ in range(args.rounds):
                for w in workers:
                    for label, kind, extra in pipelines:
                        if kind == "reference":
                            loader = reference_loader(root, args.size, args.batch_size, w)
                        else:
                            loader = emae_loader(emae_config(paths[kind], args.size, args.batch_size, w, *extra))
                        r = rate(loader, skip=w)
                        best[label, w] = max(best.get((label, w), 0.0), r)
                        del loader
            print(f"\n| pipeline | workers | img/s | img/s per core | per core vs (a) |\n|---|---|---|---|---|")
            for w in workers:
                ref = best[PIPELINES[0][0], w] / w
                for label, _, _ in pipelines:
                    r = best[label, w]
                    print(f"| {label} | {w} | {r:,.0f} | {r / w:,.0f} | {r / w / ref:.2f}x |", flush=True)
    per_image_costs(Path(args.jpegs), args.size)
    batch = torch.randint(0, 256, (args.batch_size, 3, args.size, args.size), dtype=torch.uint8)
    start = time.perf_counter()
    for _ in range(10):
        normalize_uint8(batch, [0.5] * 3, [0.25] * 3)
    per_image = (time.perf_counter() - start) / 10 / args.batch_size
    print(f"\nnormalising emae's uint8 batches (batch_to_device) costs {per_image * 1e6:.0f} us per image on this CPU "
          f"(on the device in training); load average after {os.getloadavg()[0]:.2f}")


def per_image_costs(folder: Path, size: int, count: int = 100, rounds: int = 3) -> None:
    """What one image costs in one process (one thread), best of ``rounds``: the reference transform, emae's samples,
    and the JPEG decode alone, which bounds what any pipeline that decodes every file in full can reach."""
    from loader_pipelines import reference_transform

    from emae.data.crop import CropSampler

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:count]
    reference = reference_transform(size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def pil_decode(path: Path) -> None:
        with Image.open(path) as img:
            img.convert("RGB")

    costs = {"(a) FB MAE reference: open, decode, crop, resize, flip, ToTensor, Normalize":
             lambda p: reference(Image.open(p).convert("RGB")),
             "PIL decode alone (full size)": pil_decode}
    samplers = [("(b) emae, PIL", "pil", "pil"), ("(b) + data.resize=torch", "pil", "torch")]
    if jpeg.available():
        def fast_decode(path: Path) -> None:
            data = path.read_bytes()
            jpeg.decode_jpeg(data, jpeg.read_header(data, "RGB"))

        costs["simplejpeg decode alone (full size)"] = fast_decode
        samplers.append(("(b) + simplejpeg + data.resize=torch", "simplejpeg", "torch"))
    for label, decoder, resize in samplers:
        sampler = CropSampler((size, size), (0.2, 1.0), True, decoder=decoder, resize=resize)
        costs[label] = lambda p, s=sampler: s.from_file(str(p), "RGB")
    best = {}
    for _ in range(rounds):
        for label, fn in costs.items():
            torch.default_generator.manual_seed(0)
            start = time.perf_counter()
            for p in files:
                fn(p)
            best[label] = min(best.get(label, 1e9), (time.perf_counter() - start) / len(files))
    torch.set_num_threads(threads)
    ref = next(iter(best.values()))
    print(f"\nper image in one process, one thread ({len(files)} files of {folder}, best of {rounds}):\n")
    print("| work | ms per image | reference / this |\n|---|---|---|")
    for label, t in best.items():
        print(f"| {label} | {t * 1e3:.2f} | {ref / t:.2f}x |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--config", default="mae_vit_tiny_p4_cifar10")
    ap.add_argument("--workers", help="loader processes (default: the recipe's data.num_workers); --jpegs: a list, 1,2")
    ap.add_argument("--jpegs", metavar="DIR", help="per-core table of FB MAE's loader against emae's (issue 25)")
    ap.add_argument("--repeats", type=int, default=4, help="--jpegs: each file linked N times: a longer epoch (4)")
    ap.add_argument("--synthetic", default="1024x768", help="--jpegs: also synthetic JPEGs of WxH ('' for none)")
    ap.add_argument("--synthetic-count", type=int, default=480, help="--jpegs: how many synthetic JPEGs (480)")
    ap.add_argument("--size", type=int, default=224, help="--jpegs: the crop size (224)")
    ap.add_argument("--batch-size", type=int, default=64, help="--jpegs: images per batch (64)")
    ap.add_argument("--rounds", type=int, default=2, help="--jpegs: rounds over all settings; the best is kept (2)")
    ap.add_argument("--batches", type=int, default=40, help="timed loader batches per setting")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps")
    ap.add_argument("--shards", help="shards of --data (written there first when missing; default: a temporary folder)")
    ap.add_argument("override", nargs="*")
    args = ap.parse_args(argv)
    if args.jpegs:
        return jpeg_table(args)
    overrides = list(args.override) + ([f"data.num_workers={int(args.workers)}"] if args.workers is not None else [])
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
