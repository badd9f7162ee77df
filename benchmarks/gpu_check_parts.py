"""The eight parts of ``gpu_check.py``, in priority order, each with its share of the 480 s run and its rows of the
final table. Sizes come from the plan (``gpu_check_steps.REAL`` or ``DRY``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from gpu_check_options import option_rows, step_options
from gpu_check_steps import Ctx, alternate, build, fmt_mem, fmt_mfu, fmt_num, fmt_run, free, measure, one_line, recipe
from PIL import Image

from emae.data import image_source, jpeg
from emae.data.shard_writer import write_shards
from emae.engine.device import autocast
from emae.engine.flops import train_flops_per_image
from emae.engine.optim import build_optimizer, effective_lr
from emae.engine.perf import configure_backends
from emae.errors import DataError


@dataclass(frozen=True)
class Part:
    key: str
    title: str
    share_s: float  # seconds of the default 480 s deadline (scaled with --deadline)
    run: Callable[[Ctx], None]
    rows: Callable[[dict], list[tuple[str, str]]]


# ---------------------------------------------------------------- 1: ViT-B/16 MAE, bf16, eager and compiled


def vit_b(ctx: Ctx) -> None:
    """Eager at each batch size, then compiled at the fastest (and at the next when the share leaves room for a
    second compilation); ``best`` is kept up to date, so a part cut short still names its fastest run."""
    plan, rec, device = ctx.plan, ctx.record, ctx.device
    cfg = recipe(plan, "vit_b", "train.precision=bf16")
    configure_backends(device, cfg.train.tf32)
    rec.update(recipe="mae_vit_base_p16_in1k", precision="bf16", runs=[],
               train_gflops_per_image=train_flops_per_image(cfg) / 1e9)
    model = build(cfg, device)
    try:
        for batch in plan.batches:
            measure(ctx, rec["runs"], f"eager, batch {batch}", cfg, model, batch)
            rec["best"] = fastest(rec["runs"])
        eager = sorted((r for r in rec["runs"] if r["status"] == "ok"), key=lambda r: -r["img_per_s"])
        for i, batch in enumerate([r["batch"] for r in eager][: 2 if plan.compile_both else 1]):
            first = next((r for r in rec["runs"] if r.get("compiled")), {})
            if i and ctx.left() < 1.5 * sum(first.get("warmup_s", [0])) + 10:
                rec["second_compile"] = f"skipped: {ctx.left():.0f} s left of the part's share"
                break
            torch._dynamo.reset()  # a fresh compile per batch size (no dynamic-shape recompile)
            try:
                run = measure(ctx, rec["runs"], f"compiled, batch {batch}", cfg, model, batch,
                              torch.compile(model, backend=ctx.compile_backend), compiled=True,
                              backend=ctx.compile_backend)
            finally:
                torch._dynamo.reset()
            if run["status"] == "ok":  # the first step less a step: compilation (warm-up steps are in warmup_s)
                run["compile_s"] = max(0.0, run["warmup_s"][0] - run["step_ms_p50"] / 1e3)
            rec["best"] = fastest(rec["runs"])
    finally:
        rec["best"] = fastest(rec["runs"])


def fastest(runs: list[dict]) -> dict | None:
    return max((r for r in runs if r["status"] == "ok"), key=lambda r: r["img_per_s"], default=None)


def vit_b_rows(rec: dict) -> list[tuple[str, str]]:
    rows = [(r["label"], fmt_run(r)) for r in rec.get("runs", [])]
    if rec.get("best"):
        rows.append(("best", f"{rec['best']['label']}: {fmt_mfu(rec['best'])}"))
    return rows


# ---------------------------------------------------------------- 2: fp32 with TF32, and bf16 vs fp32 losses


def fp32(ctx: Ctx) -> None:
    plan, rec, device = ctx.plan, ctx.record, ctx.device
    cfg = recipe(plan, "vit_b", "train.precision=fp32", "train.tf32=true")
    configure_backends(device, True)
    rec.update(runs=[])
    model = build(cfg, device)
    measure(ctx, rec["runs"], f"fp32 + TF32, eager, batch {plan.batches[0]}", cfg, model, plan.batches[0])
    del model
    free(device)
    state = build(cfg, torch.device("cpu")).state_dict()
    rec["losses"] = {}
    try:
        for name, precision, tf32 in (("bf16", "bf16", True), ("tf32", "fp32", True), ("fp32", "fp32", False)):
            configure_backends(device, tf32)
            run_cfg = recipe(plan, "vit_b", f"train.precision={precision}")
            rec["losses"][name] = losses(ctx, run_cfg, state, plan.loss_batch, plan.loss_steps)
            ctx.save()
    finally:
        configure_backends(device, True)
    ref = rec["losses"]["fp32"]
    for name in ("bf16", "tf32"):
        diffs = [abs(a - b) for a, b in zip(rec["losses"][name], ref)]
        rec[f"{name}_vs_fp32"] = {"max_abs_diff": max(diffs),
                                  "max_rel_diff": max(d / abs(b) for d, b in zip(diffs, ref)),
                                  "final": [rec["losses"][name][-1], ref[-1]]}
    rec.update(batch=plan.loss_batch, steps=plan.loss_steps, lr=effective_lr(cfg.train))


def losses(ctx: Ctx, cfg, state: dict, batch: int, steps: int) -> list[float]:
    """The training losses of ``steps`` steps from ``state`` on seeded images and masking noise: the same inputs
    for every precision."""
    model = build(cfg, ctx.device)
    model.load_state_dict(state)
    opt = build_optimizer(model, cfg.train, effective_lr(cfg.train))
    g = torch.Generator(ctx.device).manual_seed(0)
    out = []
    for _ in range(steps):
        ctx.check()
        imgs = torch.randn(batch, cfg.model.in_chans, *cfg.model.image_size, generator=g, device=ctx.device)
        noise = torch.rand(batch, model.encoder.num_patches, generator=g, device=ctx.device)
        with autocast(ctx.device, cfg.train.precision):
            loss = model(imgs, noise=noise).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


def fp32_rows(rec: dict) -> list[tuple[str, str]]:
    rows = [(r["label"], fmt_run(r)) for r in rec.get("runs", [])]
    for name in ("bf16", "tf32"):
        if d := rec.get(f"{name}_vs_fp32"):
            rows.append((f"{name} vs fp32 loss, {rec['steps']} steps, batch {rec['batch']}",
                         f"max abs diff {d['max_abs_diff']:.2e} (rel {100 * d['max_rel_diff']:.2f}%); final "
                         f"{d['final'][0]:.4f} vs {d['final'][1]:.4f}"))
    return rows


# ---------------------------------------------------------------- 3: ViT-L/16 MAE, bf16


def vit_l(ctx: Ctx) -> None:
    plan, rec, device = ctx.plan, ctx.record, ctx.device
    cfg = recipe(plan, "vit_l", "train.precision=bf16")
    configure_backends(device, cfg.train.tf32)
    rec.update(recipe="mae_vit_large_p16_in1k", runs=[], train_gflops_per_image=train_flops_per_image(cfg) / 1e9)
    model = build(cfg, device)
    run = measure(ctx, rec["runs"], f"eager, batch {plan.large_batch}", cfg, model, plan.large_batch)
    if run["status"] == "error" and "out of memory" in run["error"]:
        half = plan.large_batch // 2
        measure(ctx, rec["runs"], f"eager, batch {half}", cfg, model, half)


def vit_l_rows(rec: dict) -> list[tuple[str, str]]:
    return [(r["label"], fmt_run(r)) for r in rec.get("runs", [])]


# ---------------------------------------------------------------- 4: EMAE ViT-B/16 (K = 4) against MAE


def emae_cost(ctx: Ctx) -> None:
    plan, rec, device = ctx.plan, ctx.record, ctx.device
    cfgs = {name: recipe(plan, name, "train.precision=bf16") for name in ("vit_b", "emae_b")}
    configure_backends(device, True)
    rec["flops_ratio"] = train_flops_per_image(cfgs["emae_b"]) / train_flops_per_image(cfgs["vit_b"])
    rec["images_per_step"] = plan.emae_batch
    alternate(ctx, {name: (cfg, build(cfg, device)) for name, cfg in cfgs.items()}, plan.emae_batch)


def emae_rows(rec: dict) -> list[tuple[str, str]]:
    rows = model_rows(rec)
    if rec.get("ratio"):
        rows.append(("EMAE / MAE, per image", f"step time {rec['ratio']:.2f}x (FLOPs {rec['flops_ratio']:.2f}x)"
                     + mem_ratio(rec)))
    return rows


def model_rows(rec: dict) -> list[tuple[str, str]]:
    """One row per model of a side-by-side part: its timing and its memory."""
    return [(f"{m['recipe']}, batch {m['batch']}", f"{fmt_run(m)}, {fmt_mem(m.get('memory', {}))}")
            for m in rec.get("models", {}).values()]


def mem_ratio(rec: dict) -> str:
    """The second model's peak memory over the first's (the growth during the steps too, in parentheses)."""
    a, b = (m.get("memory", {}) for m in rec.get("models", {}).values())
    if "peak_mib" not in a or "peak_mib" not in b:
        return ""
    grown = a["peak_mib"] - a["base_mib"], b["peak_mib"] - b["base_mib"]
    growth = f" ({grown[1] / grown[0]:.2f}x in the steps)" if min(grown) >= 16 else ""  # RSS barely moves on CPU
    return f"; peak memory {b['peak_mib'] / a['peak_mib']:.2f}x{growth}"


# ---------------------------------------------------------------- 5: UM-MAE Swin-T vs SimMIM Swin-T, 256 px, bf16


def swin(ctx: Ctx) -> None:
    plan, rec, device = ctx.plan, ctx.record, ctx.device
    cfgs = {name: recipe(plan, name, "train.precision=bf16") for name in ("umae", "simmim")}
    configure_backends(device, True)
    batch = plan.swin_batch or min(c.train.batch_size for c in cfgs.values())
    rec["settings"] = {name: {"method": c.method, "arch": c.model.arch, "img_size": c.model.image_size,
                              "patch_size": c.model.patch_size, "mask": f"{c.mask.type} {c.mask.ratio}"}
                       for name, c in cfgs.items()}
    for _ in range(2):
        try:
            alternate(ctx, {name: (cfg, build(cfg, device)) for name, cfg in cfgs.items()}, batch)
            return
        except torch.cuda.OutOfMemoryError as e:
            rec.setdefault("errors", []).append(f"out of memory at batch {batch}: {one_line(e)[:200]}")
            rec.pop("models", None)
        free(device)  # outside the handler: its traceback holds the models
        batch //= 2
    raise RuntimeError("out of memory at two batch sizes")


def swin_rows(rec: dict) -> list[tuple[str, str]]:
    rows = model_rows(rec)
    if rec.get("ratio"):
        rows.append(("SimMIM / UM-MAE", f"step time {rec['ratio']:.2f}x" + mem_ratio(rec)))
    return rows


# ---------------------------------------------------------------- 6: data: CPU workers vs nvJPEG decoding


def data(ctx: Ctx) -> None:
    from loader import DEFAULT_DATA  # benchmarks/loader.py

    plan, rec, device = ctx.plan, ctx.record, ctx.device
    best = (ctx.earlier.get("vit_b") or {}).get("best") or {}
    batch = plan.batches[0]  # a rate per image: the batch size barely matters past a few dozen images
    cfg = recipe(plan, "vit_b")
    workers = plan.loader_workers or min(cfg.data.num_workers, os.cpu_count() or 1)
    skip = workers + 1  # the batches the workers prepared while the first one was awaited
    tmp = None
    try:
        if ctx.data == "synthetic" or (ctx.data == "auto" and not DEFAULT_DATA.is_dir()):
            tmp = Path(tempfile.mkdtemp(prefix="gpu_check_jpegs_"))
            start = time.perf_counter()
            folder = synthetic_jpegs(tmp, plan.synthetic, (skip + plan.loader_batches + 1) * batch)
            rec["data"] = f"synthetic: {plan.synthetic[0]} distinct {plan.synthetic[1]}x{plan.synthetic[2]} JPEGs"
            rec["synthetic_write_s"] = time.perf_counter() - start
        else:
            folder = Path(DEFAULT_DATA if ctx.data == "auto" else ctx.data)
            rec["data"] = str(folder)
        over = [f"train.batch_size={batch}", f"data.num_workers={workers}"]
        images = len(image_source(recipe(plan, "vit_b", *over, path=folder)))
        batches = min(plan.loader_batches, images // batch - skip)
        if batches < 1:
            raise DataError(f"--data {folder}: {images} images are too few for {skip + 1} batches of {batch}")
        step = best.get("img_per_s")
        rec.update(batch=batch, batches=batches, workers=workers, cpus=os.cpu_count(), step_img_per_s=step,
                   step=best.get("label"), rates={}, ratios={})
        settings = [("cpu decode in workers", ["data.decode=cpu", "data.decoder=pil"], None),
                    ("cpu decode, data.draft=false (full-size decode)", ["data.draft=false", "data.decoder=pil"], None),
                    ("cpu decode, data.resize=torch", ["data.resize=torch", "data.decoder=pil"], None),
                    *([("cpu decode, simplejpeg + data.resize=torch", ["data.resize=torch", "data.decoder=simplejpeg"],
                        None)] if jpeg.available() else []),
                    ("device decode: workers alone", ["data.decode=device"], None),
                    (f"device decode: + decode on {device.type}", ["data.decode=device"], device)]
        rec["pipelines"] = [label for label, _, _ in settings if "alone" not in label]  # the complete ones
        for label, extra, on in settings:
            measure_loader(ctx, label, [*over, *extra], folder, batches, on, skip, step)
        # the same files as shards (a linked subset: what the timed batches read), and as --max-side 256 shards
        tmp = tmp or Path(tempfile.mkdtemp(prefix="gpu_check_jpegs_"))
        subset = linked_subset(folder, tmp / "subset", (skip + batches + 1) * batch)
        fast = ["data.decoder=simplejpeg", "data.resize=torch"] if jpeg.available() else None
        for label, max_side in (("shards", None), ("shards --max-side 256", 256)):
            ctx.check()
            start = time.perf_counter()
            folder = tmp / label.replace(" ", "_")
            write_shards(subset, folder, progress=False, max_side=max_side)
            rec.setdefault("shard_write_s", {})[label] = time.perf_counter() - start
            for name, extra in ((label, ["data.decoder=pil"]), (f"{label}, simplejpeg + data.resize=torch", fast)):
                if extra is not None:
                    rec["pipelines"].append(name)
                    measure_loader(ctx, name, [*over, *extra], folder, batches, None, skip, step)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def measure_loader(ctx: Ctx, label: str, over: list[str], path: Path, batches: int, on, skip: int,
                   step: float | None) -> None:
    from loader import loader_rate  # benchmarks/loader.py

    ctx.check()
    rec = ctx.record
    rec["rates"][label], _ = loader_rate(recipe(ctx.plan, "vit_b", *over, path=path), batches, on, skip=skip)
    if step:
        rec["ratios"][label] = rec["rates"][label] / step
    ctx.save()


def linked_subset(folder: Path, dst: Path, count: int) -> Path:
    """The first ``count`` images of ``folder`` (an ImageFolder root or a flat folder), hard-linked into ``dst``."""
    dst.mkdir(parents=True)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    for i, f in enumerate(files):
        try:
            os.link(f, dst / f"{i:06d}{f.suffix}")
        except OSError:  # another file system
            shutil.copyfile(f, dst / f"{i:06d}{f.suffix}")
    return dst


def synthetic_jpegs(folder: Path, spec: tuple[int, int, int], total: int) -> Path:
    """``total`` JPEG files of ``spec[0]`` distinct smooth, noisy pictures (``spec[1]`` x ``spec[2]`` px, about an
    ImageNet photo's size), the rest hard links to them (all in the page cache, like a warm data set)."""
    distinct, w, h = spec
    jobs = [(folder / f"{i:06d}.jpg", i, w, h) for i in range(distinct)]
    if distinct >= 64:
        with get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
            pool.starmap(_write_jpeg, jobs)
    else:
        for job in jobs:
            _write_jpeg(*job)
    for i in range(distinct, total):
        os.link(jobs[i % distinct][0], folder / f"{i:06d}.jpg")
    return folder


def _write_jpeg(path: Path, seed: int, w: int, h: int) -> None:
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32) + rng.normal(0, 12, (h, w, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def data_rows(rec: dict) -> list[tuple[str, str]]:
    rows = []
    for label, rate in rec.get("rates", {}).items():
        ratio = rec.get("ratios", {}).get(label)
        rows.append((f"{label}, {rec['workers']} workers, batch {rec['batch']}",
                     f"{fmt_num(rate)} img/s" + (f" = {ratio:.2f}x the step" if ratio else "")))
    if rec.get("rates"):
        step = f"{fmt_num(rec['step_img_per_s'])} img/s ({rec['step']})" if rec.get("step_img_per_s") else "unknown"
        rows.append(("data, step", f"{rec['data']}; step {step}"))
    return rows


# ---------------------------------------------------------------- 7: emae vs transformers' ViTMAE, fp32


def hf_equivalence(ctx: Ctx) -> None:
    from emae.interop.hf_equivalence import compare, equivalent_pair

    plan, rec, device = ctx.plan, ctx.record, ctx.device
    cfg = recipe(plan, "vit_b", "train.precision=fp32")
    model, hf = equivalent_pair(cfg)
    model, hf = model.to(device), hf.to(device)
    rec.update(batch=plan.hf_batch, attention=getattr(hf.config, "_attn_implementation", None), tolerance=1e-4)
    try:
        for tf32 in (False, True):
            configure_backends(device, tf32)
            ctx.check()
            rec["tf32" if tf32 else "fp32"] = compare(model, hf, plan.hf_batch)
            ctx.save()
    finally:
        configure_backends(device, True)
    r = rec["fp32"]
    rec["pass"] = r["mask_equal"] and r["ids_restore_equal"] and r["max_pred_diff"] < rec["tolerance"]


def hf_rows(rec: dict) -> list[tuple[str, str]]:
    rows = []
    for key, label in (("fp32", "fp32 (TF32 off)"), ("tf32", "TF32 on")):
        if r := rec.get(key):
            rows.append((f"{label}, batch {rec['batch']}", f"max pred diff {r['max_pred_diff']:.2e}, loss diff "
                         f"{r['loss_diff']:.2e}, masks {'equal' if r['mask_equal'] else 'DIFFER'}"))
    if "pass" in rec:
        rows.append(("verdict", f"{'pass' if rec['pass'] else 'FAIL'} (fp32 tolerance {rec['tolerance']:g}; HF "
                     f"attention {rec['attention']})"))
    return rows


PARTS = [
    Part("vit_b", "ViT-B/16 MAE, 224 px, bf16, fused AdamW: eager and compiled", 145, vit_b, vit_b_rows),
    Part("fp32", "The same step in fp32 with TF32; bf16 vs fp32 losses", 35, fp32, fp32_rows),
    Part("vit_l", "ViT-L/16 MAE, bf16", 40, vit_l, vit_l_rows),
    Part("emae", "EMAE ViT-B/16 (K = 4) vs MAE: cost per image, memory", 40, emae_cost, emae_rows),
    Part("swin", "UM-MAE Swin-T vs SimMIM Swin-T, 256 px, bf16", 45, swin, swin_rows),
    Part("data", "Loader: every pipeline (CPU workers, device decode, shards) vs the step", 55, data, data_rows),
    Part("hf", "emae vs transformers ViTMAE, fp32, same weights and noise", 25, hf_equivalence, hf_rows),
    Part("options", "GPU step options (bf16_params, fused_norm, batch 1024, compile modes) vs the step", 50,
         step_options, option_rows),
]
__all__ = ["PARTS", "Part"]
