"""What the parts of ``gpu_check.py`` share: the plan (real or dry-run sizes), the recipes, the training step, its
timing, and the part context with its clock. A part fills ``ctx.record`` as it measures and calls ``ctx.save()``
after every figure, so a run cut short keeps what it measured."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emae.config import Config, load_config
from emae.engine.device import autocast
from emae.engine.guard import NonFiniteGuard
from emae.engine.optim import build_optimizer, effective_lr
from emae.engine.perf import StepTimer, step_memory, sync
from emae.engine.precision import MasterWeights
from emae.models import build_model


class TimeUp(BaseException):
    """A part's time is up (its share or the run's deadline). Raised between steps, or by the alarm anywhere; a
    BaseException, so the parts' own ``except Exception`` (OOM, compile failures) lets it through."""


@dataclass(frozen=True)
class Plan:
    """Sizes for the real run on one GPU, or the CPU dry run (tiny models, two steps each)."""

    batches: tuple[int, ...] = (256, 512)  # part 1: images per step on the GPU
    warmup: int = 5  # untimed steps before a timing (allocator, cuDNN autotuning; compilation)
    steps: int = 20  # timed steps
    loss_batch: int = 64  # part 2: the bf16-vs-fp32 comparison
    loss_steps: int = 20
    large_batch: int = 256  # part 3: ViT-L
    emae_batch: int = 128  # part 4: images per step (EMAE runs K = 4 sequences per image)
    pairs: int = 10  # parts 4, 5: timed steps of each model, alternating
    swin_batch: int | None = None  # part 5: None = the recipes' batch
    loader_batches: int = 20  # part 6: timed batches per loader setting
    loader_workers: int | None = None  # None: the recipe's data.num_workers, at most the CPU count
    synthetic: tuple[int, int, int] = (256, 500, 375)  # part 6: distinct synthetic JPEGs, width, height
    hf_batch: int = 8  # part 7
    big_batch: int = 1024  # part 8: the largest batch tried
    compile_both: bool = True  # part 1: compile the second batch size too when its share allows
    tiny: dict[str, list[str]] = field(default_factory=dict)  # overrides per model kind (dry run)


TINY_VIT = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.img_size=16", "model.patch_size=4",
            "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2"]
TINY_SWIN = ["model.img_size=32", "model.patch_size=4", "model.embed_dim=16", "model.depths=[1,1,1,1]",
             "model.num_heads=1", "model.window_size=2", "model.decoder_embed_dim=32", "model.decoder_depth=1",
             "model.decoder_num_heads=2"]
REAL = Plan()
DRY = Plan(batches=(4, 8), warmup=1, steps=1, loss_batch=4, loss_steps=2, large_batch=4, emae_batch=4, pairs=1,
           swin_batch=2, loader_batches=2, loader_workers=1, synthetic=(8, 40, 30), hf_batch=2, big_batch=8,
           compile_both=False,
           tiny={"vit": TINY_VIT, "vit_l": [*TINY_VIT, "model.depth=3"], "swin": TINY_SWIN})

# the shipped recipes, by name (never their settings: other engineers tune them), and the kind of tiny model
RECIPES = {"vit_b": ("mae_vit_base_p16_in1k", "vit"), "vit_l": ("mae_vit_large_p16_in1k", "vit_l"),
           "emae_b": ("emae_vit_base_p16_in1k", "vit"), "umae": ("umae_swin_t_p16_in1k_256", "swin"),
           "simmim": ("simmim_swin_t_p16_in1k_256", "swin")}


@dataclass
class Ctx:
    """What a part gets: the device, the plan, its record, and its clock."""

    device: torch.device
    plan: Plan
    record: dict
    save: Callable[[], None]  # write the JSON report now
    ends_at: float  # time.monotonic() at which this part must stop
    earlier: dict[str, dict]  # records of the parts already run, by key
    data: str = "auto"  # part 6: a folder, "synthetic", or "auto"
    compile_backend: str = "inductor"

    def left(self) -> float:
        return self.ends_at - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise TimeUp


def recipe(plan: Plan, name: str, *overrides: str, path: str | Path | None = None) -> Config:
    """A shipped recipe (tiny in the dry run); one micro-batch per step; ``path``: data.path, taken as it is."""
    file, kind = RECIPES[name]
    return load_config(file, [*plan.tiny.get(kind, []), "train.accum_iter=1", *overrides],
                       **{"data.path": str(path) if path is not None else None})


def build(cfg: Config, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg).to(device).train()


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def train_step(cfg: Config, model: torch.nn.Module, device: torch.device, batch: int,
               forward: Callable | None = None) -> Callable[[], None]:
    """The training loop's step without the loader, on one fixed random batch: the config's step options as the
    trainer applies them (train.fused_norm, train.bf16_params: they change ``model`` in place), forward under the
    recipe's autocast (``forward``: e.g. the compiled model), masks from a device generator, backward, the
    non-finite guard (one host sync), fused AdamW (``engine.optim``), zero_grad."""
    t = cfg.train
    model.set_fused_norm(t.fused_norm)
    masters = MasterWeights(model) if t.bf16_params else None

    def adamw(m: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(m, t, effective_lr(t))

    opt = masters.optimizer(adamw, model) if masters is not None else adamw(model)
    guard = NonFiniteGuard(cfg.train.max_bad_steps)
    imgs = torch.randn(batch, cfg.model.in_chans, *cfg.model.image_size, device=device)
    gen = torch.Generator(device).manual_seed(cfg.train.seed)
    forward = forward if forward is not None else model

    def step() -> None:
        with autocast(device, cfg.train.precision):
            out = forward(imgs, generator=gen)
        out.loss.backward()
        if not guard.is_bad(out.loss, model.parameters()):
            opt.step()
        opt.zero_grad(set_to_none=True)

    step.fused = bool(opt.defaults.get("fused"))  # type: ignore[attr-defined]
    return step


def sample(cfg: Config, device: torch.device) -> torch.Tensor:
    """Two images for StepTimer.report's FLOP count (counted on a forward for non-ViT models)."""
    return torch.zeros(2, cfg.model.in_chans, *cfg.model.image_size, device=device)


def time_steps(ctx: Ctx, cfg: Config, model: torch.nn.Module, step: Callable[[], None], batch: int) -> dict:
    """``plan.warmup`` untimed steps (each clocked alone: the first holds any compilation), then up to
    ``plan.steps`` timed ones through the trainer's StepTimer (img/s, step-time percentiles, peak memory, TFLOP/s,
    MFU); stops early when the part's time is up, keeping the steps timed so far."""
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    warm = []
    for _ in range(ctx.plan.warmup):
        ctx.check()
        sync(ctx.device)
        start = time.perf_counter()
        step()
        sync(ctx.device)
        warm.append(time.perf_counter() - start)
    timer = StepTimer(warmup=0, device=ctx.device)
    for _ in range(ctx.plan.steps):
        if timer.step_times and ctx.left() <= 0:
            break
        ctx.check()
        timer.begin()
        step()
        timer.end(batch)
    report = timer.report(cfg, model, sample(cfg, ctx.device))
    report.pop("data_wait_share", None)  # no loader here
    out = {"batch": batch, **report, "warmup_s": warm}
    if len(timer.step_times) < ctx.plan.steps:
        out["cut_short"] = True
    return out


def measure(ctx: Ctx, runs: list, label: str, cfg: Config, model: torch.nn.Module, batch: int,
            forward: Callable | None = None, **extra) -> dict:
    """One timing, appended to ``runs`` before it starts (so a cut-short run shows it); an out-of-memory error or any
    other failure (a compile error) is recorded in it and the part goes on."""
    run: dict = {"label": label, "batch": batch, **extra, "status": "running"}
    runs.append(run)
    ctx.save()
    step = None
    try:
        step = train_step(cfg, model, ctx.device, batch, forward)
        run["fused_adamw"] = step.fused  # type: ignore[attr-defined]
        run.update(time_steps(ctx, cfg, model, step, batch))
        run["status"] = "ok"
    except TimeUp:
        run["status"] = "stopped"
        raise
    except torch.cuda.OutOfMemoryError as e:
        run.update(status="error", error=f"out of memory at batch {batch}: {one_line(e)[:200]}")
    except Exception as e:  # noqa: BLE001 - recorded; the other timings go on
        run.update(status="error", error=one_line(e))
    finally:
        del step
        free(ctx.device)
        ctx.save()
    return run


def memory_of(step: Callable[[], None], device: torch.device, steps: int) -> dict:
    """Peak memory over ``steps`` steps (engine.perf.step_memory: CUDA max_memory_allocated, or peak RSS)."""
    try:
        return step_memory(step, device, steps)
    except OSError as e:  # no /proc/self/clear_refs (CPU only)
        return {"error": one_line(e)}


def alternate(ctx: Ctx, entries: dict[str, tuple[Config, torch.nn.Module]], batch: int) -> dict:
    """Side by side in one run: per model its peak memory (its first steps, also the warm-up), then timed steps
    alternating between the models (order flipped every pair) so machine noise hits both alike. Returns per model
    the StepTimer report and memory, and ``ratio``: the median over pairs of the second's step time over the
    first's."""
    plan, out = ctx.plan, ctx.record.setdefault("models", {})
    steps, timers = {}, {}
    mem_steps = min(2, plan.warmup + 1)
    for name, (cfg, model) in entries.items():
        ctx.check()
        steps[name] = train_step(cfg, model, ctx.device, batch)
        out[name] = {"recipe": RECIPES[name][0], "batch": batch,
                     "memory": memory_of(steps[name], ctx.device, mem_steps)}
        ctx.save()
    for name in entries:
        for _ in range(plan.warmup + 1 - mem_steps):
            ctx.check()
            steps[name]()
        timers[name] = StepTimer(warmup=0, device=ctx.device)
    names = list(entries)
    for i in range(plan.pairs):
        if timers[names[0]].step_times and ctx.left() <= 0:
            break  # keep the pairs timed so far
        ctx.check()
        for name in names if i % 2 == 0 else names[::-1]:
            timers[name].begin()
            steps[name]()
            timers[name].end(batch)
    for name, (cfg, model) in entries.items():
        report = timers[name].report(cfg, model, sample(cfg, ctx.device))
        drop = ("peak_memory_mib", "peak_rss_mib", "data_wait_share")  # memory: per model above; no loader
        out[name].update({k: v for k, v in report.items() if k not in drop})
    first, second = (timers[n].step_times for n in names)
    pairs = [b / a for a, b in zip(first, second)]
    ctx.record["ratio"] = statistics.median(pairs) if pairs else None
    ctx.record["ratio_range"] = [min(pairs), max(pairs)] if pairs else None
    ctx.save()
    return out


# ---------------------------------------------------------------- formatting


def fmt_num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def fmt_mem(m: dict) -> str:
    if "peak_mib" not in m:
        return "memory: " + m.get("error", "n/a")
    kind = "GPU" if m.get("kind", "").startswith("cuda") else "RSS"
    return f"{kind} peak {m['peak_mib'] / 1024:.2f} GiB, +{(m['peak_mib'] - m['base_mib']) / 1024:.2f} in the steps"


def fmt_mfu(r: dict) -> str:
    return f"MFU {100 * r['mfu']:.1f}%" if "mfu" in r else f"{r.get('tflops', 0):.3g} TFLOP/s (no GPU peak known)"


def fmt_run(r: dict) -> str:
    if r.get("status") == "error":
        return f"error: {r['error']}"
    if "img_per_s" not in r:
        return r.get("status", "not finished")
    out = [f"{fmt_num(r['img_per_s'])} img/s", f"step p50 {r['step_ms_p50']:.1f} / p90 {r['step_ms_p90']:.1f} ms"]
    if "peak_memory_mib" in r:
        out.append(f"{r['peak_memory_mib'] / 1024:.1f} GiB")
    out.append(fmt_mfu(r))
    if "compile_s" in r:
        out.append(f"compile {r['compile_s']:.0f} s")
    if r.get("cut_short"):
        out.append(f"{r['steps']} steps (cut short)")
    return ", ".join(out)
