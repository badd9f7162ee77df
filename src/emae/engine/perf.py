"""Speed options and the ``--benchmark`` report: backend flags, ``torch.compile``, step timing and MFU."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config
from .flops import peak_tflops, train_flops_per_image
from .loop import Hook, Loop, StepInfo


def configure_backends(device: torch.device, tf32: bool, threads: int | None = None) -> None:
    """TF32 matmuls and convolutions on CUDA (Ampere and newer); ``threads``: torch's CPU threads (None: unchanged)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True


def maybe_compile(model: torch.nn.Module, enabled: bool, mode: str = "default") -> torch.nn.Module:
    """The module to call for the training forward: ``torch.compile``d when ``enabled``, in ``mode`` (inductor's:
    "reduce-overhead" records CUDA graphs, "max-autotune" searches kernels). Checkpoints keep using the original
    module, so their keys never carry compile's ``_orig_mod.`` prefix."""
    if not enabled:
        return model
    return torch.compile(model, mode=None if mode == "default" else mode)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepTimer(Hook):
    """A loop hook for benchmarks: times each optimiser step of the real loop (from the moment it starts waiting
    for its first batch) and the part of it spent waiting for the loader; at the end of the run, :meth:`report`
    (kept in ``result`` and logged as a ``benchmark`` record). ``cfg`` gives the model's FLOPs."""

    cfg: Config | None = None
    warmup: int = 5  # untimed first steps (compilation, allocator and worker start-up)
    device: torch.device = torch.device("cpu")
    step_times: list[float] = field(default_factory=list)
    wait_times: list[float] = field(default_factory=list)
    images: int = 0
    result: dict | None = None
    _start: float = 0.0
    _seen: int = 0

    def on_start(self, loop: Loop) -> None:
        self.device = loop.device
        self.begin()

    def after_step(self, loop: Loop, info: StepInfo) -> None:
        self.end(info.images, info.data_wait)
        self.begin()

    def on_end(self, loop: Loop) -> None:
        if self.cfg is not None:
            sample = torch.zeros(2, self.cfg.model.in_chans, *self.cfg.model.image_size, device=loop.device)
            self.result = self.report(self.cfg, loop.model, sample)
            loop.log.write(type="benchmark", **self.result)

    def begin(self) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def end(self, images: int, waited: float = 0.0) -> None:
        sync(self.device)
        self._seen += 1
        if self._seen > self.warmup:
            self.step_times.append(time.perf_counter() - self._start)
            self.wait_times.append(waited)
            self.images += images

    def report(self, cfg: Config, model: torch.nn.Module, sample: torch.Tensor) -> dict:
        """img/s, step-time percentiles, data-wait share, peak memory, model TFLOP/s and MFU."""
        if not self.step_times:
            return {"steps": 0}
        times = sorted(self.step_times)
        pct = lambda q: times[min(len(times) - 1, int(q * (len(times) - 1) + 0.5))]  # noqa: E731
        total = sum(times)
        img_s = self.images / total
        flops = train_flops_per_image(cfg, model, sample)
        out = {
            "steps": len(times), "img_per_s": img_s, "step_ms_p50": pct(0.5) * 1e3, "step_ms_p90": pct(0.9) * 1e3,
            "step_ms_max": times[-1] * 1e3, "data_wait_share": sum(self.wait_times) / total,
            "train_gflops_per_image": flops / 1e9, "tflops": flops * img_s / 1e12,
        }
        if self.device.type == "cuda":
            out["peak_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            out["peak_rss_mib"] = peak_rss_mib()
        peak = peak_tflops(self.device, cfg.train.precision)
        if peak:
            out["device_peak_tflops"] = peak
            out["mfu"] = out["tflops"] / peak
        return out


def peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_peak_kib() -> int:
    """This process's peak resident set (VmHWM), in KiB; Linux only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def step_memory(step: Callable[[], object], device: torch.device, steps: int = 2) -> dict:
    """Peak memory over ``steps`` calls of ``step``, and the level before them: CUDA ``max_memory_allocated``, or
    on CPU the peak RSS, reset through /proc/self/clear_refs so it covers only the steps (benchmarks run this in a
    fresh process that holds one model)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        for _ in range(steps):
            step()
        return {"kind": "cuda max_memory_allocated", "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20,
                "base_mib": base / 2**20}
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = rss_peak_kib()
    for _ in range(steps):
        step()
    return {"kind": "peak RSS", "peak_mib": rss_peak_kib() / 1024, "base_mib": base / 1024}


def format_report(r: dict) -> str:
    if not r.get("steps"):
        return "benchmark: no timed steps (raise N above the warm-up steps)"
    mem = (f"peak memory {r['peak_memory_mib']:.0f} MiB" if "peak_memory_mib" in r
           else f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    mfu = f", MFU {100 * r['mfu']:.1f}% of {r['device_peak_tflops']:.0f}" if "mfu" in r else ""
    return (f"benchmark: {r['steps']} steps, {r['img_per_s']:.1f} img/s, step p50 {r['step_ms_p50']:.1f} ms "
            f"p90 {r['step_ms_p90']:.1f} ms max {r['step_ms_max']:.1f} ms, data wait "
            f"{100 * r['data_wait_share']:.1f}%, {mem}, {r['train_gflops_per_image']:.2f} GFLOP/image, "
            f"{r['tflops']:.3f} TFLOP/s{mfu}")


__all__ = ["StepTimer", "configure_backends", "format_report", "maybe_compile", "rss_peak_kib", "step_memory"]
