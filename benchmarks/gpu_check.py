"""One prepared device check: what a GPU user of emae cares about, measured in one process on one GPU within a hard
deadline (default 480 s), so that a session lent a GPU once runs it and records the table.

    python3 -m pip install --no-deps --no-build-isolation -e . && python3 benchmarks/gpu_check.py --out $OUT
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check   # every part on CPU, tiny models, two steps each

The parts, in priority order (gpu_check_parts.py; each has a share of the 480 s, scaled with ``--deadline``):
1. ViT-B/16 MAE at 224 px, bf16, fused AdamW, batch 256 and 512, eager and ``torch.compile``: img/s, step-time
   percentiles, max_memory_allocated, MFU (analytic FLOPs, engine.flops), compile time apart;
2. the same step in fp32 with TF32; bf16, TF32 and strict fp32 losses over 20 steps on identical inputs;
3. ViT-L/16 MAE, bf16; 4. EMAE ViT-B/16 (K = 4) against MAE, alternating: cost per image, memory;
5. UM-MAE Swin-T against SimMIM Swin-T at 256 px from the shipped recipes, bf16: step time, peak memory;
6. every loader pipeline against the best ViT-B step: CPU workers (crop-first draft decode; full-size decode;
   ``data.resize=torch``), ``data.decode=device`` (nvJPEG, batched crop), shards and ``--max-side 256`` shards;
7. emae against transformers' ViTMAE in fp32 on the GPU, same weights and noise: the largest difference;
8. the GPU step options against the eager bf16 step (gpu_check_options.py): ``train.bf16_params``,
   ``train.fused_norm``, both, batch 1024, compiled with bf16_params and in the reduce-overhead / max-autotune modes.

Every record goes to OUT/gpu_check.json (top-level ``parts``, one per part) as soon as it holds a figure, written
atomically. A part starts only with a quarter of its share left ("skipped: deadline"), and stops mid-way at its
share or the deadline ("stopped: share" / "stopped: deadline") keeping what it measured: between steps, or through
SIGALRM anywhere (a compile); a watchdog thread ends the process at the deadline whatever happens. Errors (out of
memory, compile failures) are recorded and the run goes on. At the end: a markdown table for RESULTS.md (also
OUT/gpu_check.md), the goals (ViT-B/16 MAE >= 45% MFU in bf16; the best loader >= 1.5x the step, 3x the aim) and, where the MFU goal
is missed, the top ops of a torch.profiler trace of the ViT-B bf16 step. Exit code 0 whatever the parts did.
"""

from __future__ import annotations

import time

T0 = time.monotonic()  # the deadline counts from here: imports included

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
if (SRC / "emae").is_dir():
    sys.path.insert(0, str(SRC))  # this checkout's emae, installed or not
import emae  # noqa: E402
import torch  # noqa: E402
from gpu_check_parts import PARTS, Part  # noqa: E402
from gpu_check_steps import DRY, REAL, Ctx, Plan, TimeUp, build, free, one_line, recipe, train_step  # noqa: E402

from emae.engine.atomic import write_atomic  # noqa: E402
from emae.engine.flops import peak_tflops  # noqa: E402
from emae.engine.perf import sync  # noqa: E402

DEFAULT_DEADLINE = 480.0
PROFILE_S, MARGIN_S = 25.0, 15.0  # of the 480 s, after the parts: the profile, then the table with room to spare
MIN_MARGIN_S = 1.0  # the room for the table at any deadline
MIN_SHARE = 0.25  # a part starts only with this fraction of its share left
GOALS = {"mfu": 0.45, "loader": 1.5, "loader_aim": 3.0}  # issue 25's targets
SHORT = ["ViT-B/16 MAE bf16", "fp32 + TF32", "ViT-L/16 MAE bf16", "EMAE ViT-B/16, K=4", "Swin-T 256 px, bf16",
         "data loader", "HF ViTMAE, fp32", "step options"]


class Report:
    """The JSON report: written whole and atomically after every change, by the main thread or the watchdog."""

    def __init__(self, out: Path, meta: dict) -> None:
        self.json_path, self.md_path = out / "gpu_check.json", out / "gpu_check.md"
        parts = [{"part": i, "key": p.key, "title": p.title, "status": "pending"} for i, p in enumerate(PARTS, 1)]
        self.data = {"format": "emae-gpu-check", "version": 1, **meta, "env": {}, "parts": parts, "profile": None,
                     "goals": None, "finished": False}
        self.lock = threading.RLock()

    def save(self) -> None:
        with self.lock:
            self.data["elapsed_s"] = round(time.monotonic() - T0, 1)
            for attempt in range(3):  # the watchdog may read while the main thread fills a record
                try:
                    text = json.dumps(self.data, indent=1, default=str)
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
                    time.sleep(0.05)
        write_atomic(self.json_path, lambda f: f.write(text.encode()), fsync=False)  # a killed run keeps it whole


# ---------------------------------------------------------------- the clock


def _alarm(signum, frame) -> None:
    raise TimeUp


def arm(seconds: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))


def disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


def run_timed(rec: dict, report: Report, run, cap: float, why: str) -> None:
    """``run()`` with an alarm at ``cap`` seconds: status ok, "stopped: <why>" when its time ran out, or error (one
    line, and the traceback's end) when it raised."""
    start = time.monotonic()
    rec.update(status="running", budget_s=round(cap, 1))
    report.save()
    try:
        try:
            arm(cap)
            run()
        finally:
            disarm()
        rec["status"] = "ok"
    except TimeUp:
        rec["status"] = f"stopped: {why}"
    except Exception as e:  # noqa: BLE001 - recorded; the next part runs
        rec.update(status="error", error=one_line(e), traceback=traceback.format_exc()[-3000:])
    rec["seconds"] = round(time.monotonic() - start, 1)
    rec["end_s"] = round(time.monotonic() - T0, 1)
    report.save()


def slot(share: float, deadline: float, reserve: float) -> tuple[float, str] | None:
    """(seconds, what limits them) for a task with ``share`` seconds, or None when less than MIN_SHARE of it is left
    before ``deadline`` - ``reserve``."""
    left = deadline - reserve - time.monotonic()
    if left < MIN_SHARE * share:
        return None
    return (share, "share") if share <= left else (left, "deadline")


def margin(scale: float) -> float:
    return max(MARGIN_S * scale, MIN_MARGIN_S)


# ---------------------------------------------------------------- environment


def environment(device: torch.device, dry: bool) -> dict:
    versions = {}
    for pkg in ("torch", "torchvision", "timm", "transformers", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    env = {"device": str(device), "emae": emae.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
           **versions, "torch": torch.__version__, "cuda": torch.version.cuda, "plan": "dry run" if dry else "real"}
    if device.type != "cuda":
        return {**env, "name": cpu_name(), "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    env.update(name=torch.cuda.get_device_name(device), memory_gib=round(props.total_memory / 2**30, 1),
               multiprocessors=props.multi_processor_count, driver=driver_version(),
               cudnn=torch.backends.cudnn.version(), peak_bf16_tflops=peak_tflops(device, "bf16"),
               matmul_bf16_tflops=matmul_tflops(device))
    return env


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    except Exception:  # noqa: BLE001 - no NVML: the driver stays unknown
        return None


def matmul_tflops(device: torch.device, n: int = 8192) -> float:
    """A bf16 n x n x n matrix product on random data (mean of 10 after 3 warm-ups): the ceiling measured here."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return round(2 * n**3 * 10 / (time.perf_counter() - start) / 1e12, 1)


# ---------------------------------------------------------------- profile of the ViT-B bf16 step


def profile(ctx: Ctx) -> None:
    """A torch.profiler trace of a few eager ViT-B bf16 steps at the best batch: the ops with the most self time
    (device time on a GPU: kernels attributed to the op that launched them) and how busy the device was."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity

    plan, rec, device = ctx.plan, ctx.record, ctx.device
    batch = rec["batch"]
    cfg = recipe(plan, "vit_b", "train.precision=bf16")
    step = train_step(cfg, build(cfg, device), device, batch)
    for _ in range(2):
        ctx.check()
        step()
    steps = max(1, min(3, plan.steps))
    on_device = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    sync(device)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync(device)
    wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()

    def own(e) -> float:  # microseconds
        if on_device:
            return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0.0)
        return e.self_cpu_time_total

    def kernel(e) -> float:  # a device-side event (kernel, copy): its duration
        return getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0)

    ops = [e for e in events if e.device_type == DeviceType.CPU and own(e) > 0]
    total = sum(kernel(e) for e in events if e.device_type != DeviceType.CPU) if on_device else sum(map(own, ops))
    top = sorted(ops, key=own, reverse=True)[:12]
    step_ms = rec.get("step_ms") or wall * 1e3  # the step's time unprofiled (part 1) when known
    rec.update(steps=steps, clock="device" if on_device else "cpu", wall_ms_per_step=wall * 1e3,
               busy_share=total / 1e3 / steps / step_ms if on_device else None,
               top_ops=[{"op": e.key, "ms_per_step": own(e) / 1e3 / steps, "share": own(e) / max(total, 1e-9),
                         "calls_per_step": e.count / steps} for e in top])


def maybe_profile(report: Report, plan: Plan, device: torch.device, deadline: float, scale: float) -> None:
    """Where the MFU goal is missed (or MFU is unknown), profile the eager step at the best run's batch size."""
    part1 = report.data["parts"][0]
    best = part1.get("best") or {}
    mfu = best.get("mfu")
    if mfu is not None and mfu >= GOALS["mfu"]:
        return
    batch = best.get("batch", plan.batches[0])
    eager = [r for r in part1.get("runs", []) if r["status"] == "ok" and not r.get("compiled") and r["batch"] == batch]
    rec = {"reason": f"MFU {100 * mfu:.1f}% < {100 * GOALS['mfu']:.0f}%" if mfu is not None else "MFU not known",
           "batch": batch, "step_ms": eager[0]["step_ms_p50"] if eager else None}
    report.data["profile"] = rec
    room = slot(PROFILE_S * scale, deadline, margin(scale))
    if room is None:
        rec["status"] = "skipped: deadline"
        report.save()
        return
    ctx = Ctx(device, plan, rec, report.save, time.monotonic() + room[0], {})
    run_timed(rec, report, lambda: profile(ctx), *room)
    free(device)


# ---------------------------------------------------------------- table and goals


def goals(parts: list[dict]) -> list[dict]:
    """The two goals: the best ViT-B bf16 step's MFU (part 1's runs and part 8's options), and the fastest complete
    loader pipeline against part 1's best step."""
    by_key = {p["key"]: p for p in parts}
    runs = [r for key in ("vit_b", "options") for r in by_key.get(key, {}).get("runs", [])
            if r.get("status") == "ok" and r.get("mfu") is not None]
    best = max(runs, key=lambda r: r["mfu"], default={})
    mfu = best.get("mfu")
    data = by_key.get("data", {})
    ratios = {k: v for k, v in (data.get("ratios") or {}).items() if k in data.get("pipelines", ())}
    loader = max(ratios.items(), key=lambda kv: kv[1], default=None)
    return [
        {"goal": "ViT-B/16 MAE MFU, bf16", "target": f">= {100 * GOALS['mfu']:.0f}%",
         "value": f"{100 * mfu:.1f}% ({best['label']})" if mfu is not None else "not measured",
         "met": None if mfu is None else mfu >= GOALS["mfu"]},
        {"goal": "loader / ViT-B step", "target": f">= {GOALS['loader']:g}x (aim {GOALS['loader_aim']:g}x)",
         "value": f"{loader[1]:.2f}x ({loader[0]})" if loader else "not measured",
         "met": None if loader is None else loader[1] >= GOALS["loader"]},
    ]


def rows_of(part: Part, rec: dict) -> list[tuple[str, str]]:
    """The part's table rows; a record the formatter cannot read (cut at an odd moment) still gets a row."""
    try:
        return part.rows(rec)
    except Exception as e:  # noqa: BLE001 - the table must be printed whatever a record holds
        return [("record", f"not readable as a table ({one_line(e)}); see gpu_check.json")]


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(data: dict) -> str:
    env = data["env"]
    if env.get("driver") is not None or "peak_bf16_tflops" in env:
        peak = env.get("peak_bf16_tflops")
        matmul = env.get("matmul_bf16_tflops")
        where = (f"{env.get('name')}, driver {env.get('driver')}, {env.get('memory_gib')} GiB, "
                 f"torch {env.get('torch')} "
                 f"(CUDA {env.get('cuda')}), peak bf16 {peak or 'unknown'} TFLOP/s (data sheet; an 8192^3 bf16 matmul "
                 f"ran at {matmul} here)")
    else:
        where = (f"{env.get('name', 'cpu')}, {env.get('threads')} threads, torch {env.get('torch')}, "
                 + ("dry run (tiny models)" if env.get("plan") == "dry run" else "CPU"))
    lines = [f"GPU check {data['started']}: {where}; emae {env.get('emae')}, timm {env.get('timm')}, transformers "
             f"{env.get('transformers')}; {data.get('elapsed_s', 0):.0f} s of the {data['deadline_s']:.0f} s deadline.",
             "", "| part | setting | result |", "|---|---|---|"]
    for i, (part, rec) in enumerate(zip(PARTS, data["parts"])):
        rows = rows_of(part, rec) if rec["status"] != "pending" else []
        if rec["status"] != "ok":
            after = f" after {rec['seconds']:.0f} s" if rec["status"].startswith("stopped") and "seconds" in rec else ""
            rows.append(("status", rec["status"] + after + (f": {rec['error']}" if rec.get("error") else "")))
        for j, (setting, result) in enumerate(rows):
            lines.append(f"| {f'{i + 1}. {SHORT[i]}' if j == 0 else ''} | {cell(setting)} | {cell(result)} |")
    lines += ["", "| goal | target | result |", "|---|---|---|"]
    for g in data.get("goals") or []:
        verdict = {True: "met", False: "**missed**", None: "not judged"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['target']} | {g['value']}: {verdict} |")
    prof = data.get("profile") or {}
    if prof.get("top_ops"):
        busy = f"; kernels fill {100 * prof['busy_share']:.0f}% of the step's time" if prof.get("busy_share") else ""
        lines += ["", f"Profile of the eager ViT-B/16 bf16 step, batch {prof['batch']} ({prof['reason']}): "
                      f"{prof['wall_ms_per_step']:.1f} ms per step under the profiler{busy}; top ops by self "
                      f"{prof['clock']} time:", "",
                  "| op | ms / step | share | calls / step |", "|---|---|---|---|"]
        for op in prof["top_ops"]:
            lines.append(f"| {cell(op['op'][:80])} | {op['ms_per_step']:.2f} | {100 * op['share']:.1f}% | "
                         f"{op['calls_per_step']:g} |")
    elif prof.get("status"):
        error = f": {prof['error']}" if prof.get("error") else ""
        lines += ["", f"Profile ({prof['reason']}): {prof['status']}{error}"]
    return "\n".join(lines) + "\n"


class Finish:
    """Called once, by the main thread at the end or by the watchdog at the deadline: parts still running are
    marked stopped, pending ones skipped; the goals, the JSON and the markdown table are written and printed."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.done = False
        self.lock = threading.Lock()

    def __call__(self, hard: bool = False) -> None:
        if not self.lock.acquire(timeout=10 if hard else -1):
            return
        try:
            if self.done:
                return
            self.done = True
            with self.report.lock if not hard else _maybe(self.report.lock):
                data = self.report.data
                for rec in [*data["parts"], data.get("profile") or {}]:
                    if rec.get("status") == "running":
                        rec["status"] = "stopped: deadline (watchdog)" if hard else "stopped"
                    elif rec.get("status") == "pending":
                        rec["status"] = "skipped: deadline"
                data["goals"] = goals(data["parts"])
                data["finished"] = not hard
                data["elapsed_s"] = round(time.monotonic() - T0, 1)
                text = table(data)
            self.report.save()
            write_atomic(self.report.md_path, lambda f: f.write(text.encode()), fsync=False)
            print("\n" + text, flush=True)
        finally:
            self.lock.release()


class _maybe:
    """A lock taken if it frees within a few seconds (the watchdog must not wait on a stuck main thread)."""

    def __init__(self, lock) -> None:
        self.lock, self.held = lock, False

    def __enter__(self) -> None:
        self.held = self.lock.acquire(timeout=5)

    def __exit__(self, *exc) -> None:
        if self.held:
            self.lock.release()


def hard_exit() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def start_watchdog(deadline: float, finish: Finish) -> threading.Event:
    """A thread that, unless the returned event is set first, finishes the report at ``deadline`` and ends the
    process with exit code 0, whatever the main thread is doing."""
    stop = threading.Event()

    def watch() -> None:
        if not stop.wait(max(0.0, deadline - time.monotonic())):
            try:
                finish(hard=True)
            finally:
                hard_exit()

    threading.Thread(target=watch, name="gpu-check-deadline", daemon=True).start()
    return stop


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE,
                    help="seconds from start to exit, imports included (default 480); part shares scale with it")
    ap.add_argument("--dry-run", action="store_true", help="every part on the CPU with tiny models, two steps each")
    ap.add_argument("--device", help="default: cuda (cpu with --dry-run)")
    ap.add_argument("--parts", help="comma-separated part numbers to run (default: all 7); the others are skipped")
    ap.add_argument("--data", default="auto", help="part 6: an image folder, 'synthetic', or 'auto' (default): "
                    "../shared/data/cifar10/train if present, else synthetic JPEGs in a temporary folder")
    ap.add_argument("--compile-backend", help="torch.compile backend (default: inductor; eager with --dry-run)")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier gpu_check.json in --out")
    return ap, ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ap, args = parse_args(argv)
    out = Path(args.out)
    if not args.deadline > 0:
        ap.error(f"--deadline must be positive, got {args.deadline:g}")
    try:
        selected = {int(p) for p in args.parts.split(",")} if args.parts else set(range(1, len(PARTS) + 1))
    except ValueError:
        ap.error(f"--parts: {args.parts!r} is not a comma-separated list of part numbers")
    if not selected <= set(range(1, len(PARTS) + 1)):
        ap.error(f"--parts: {args.parts!r}: parts are numbered 1 to {len(PARTS)}")
    if out.exists() and not out.is_dir():
        ap.error(f"--out: {out} is not a folder")
    if (out / "gpu_check.json").exists() and not args.overwrite:
        ap.error(f"--out: {out} already holds a gpu_check.json; pass --overwrite or another folder")
    device = torch.device(args.device or ("cpu" if args.dry_run else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device here: the check measures a GPU (--dry-run runs it on the CPU with tiny models)")
    if args.data not in ("auto", "synthetic") and not Path(args.data).is_dir():
        ap.error(f"--data: {args.data} is not a folder")
    plan = DRY if args.dry_run else REAL
    deadline, scale = T0 + args.deadline, args.deadline / DEFAULT_DEADLINE
    report = Report(out, {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "deadline_s": args.deadline,
                          "startup_s": round(time.monotonic() - T0, 1), "dry_run": args.dry_run,
                          "command": " ".join(sys.argv)})
    report.save()
    finish = Finish(report)
    stop_watchdog = start_watchdog(deadline, finish)
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        report.data["env"] = environment(device, args.dry_run)
        report.save()
        env = report.data["env"]
        print(f"gpu_check: {env['name']} ({device}), torch {env['torch']}; {env['plan']}; deadline "
              f"{args.deadline:.0f} s; report {report.json_path}", flush=True)
        reserve = PROFILE_S * scale + margin(scale)
        backend = args.compile_backend or ("eager" if args.dry_run else "inductor")
        for i, part in enumerate(PARTS):
            rec = report.data["parts"][i]
            rec["share_s"] = round(part.share_s * scale, 1)
            room = slot(part.share_s * scale, deadline, reserve)
            if i + 1 not in selected or room is None:
                rec["status"] = "skipped: not selected" if i + 1 not in selected else "skipped: deadline"
                report.save()
                continue
            earlier = {p.key: r for p, r in zip(PARTS, report.data["parts"][:i]) if r["status"] != "error"}
            ctx = Ctx(device, plan, rec, report.save, time.monotonic() + room[0], earlier, args.data, backend)
            run_timed(rec, report, lambda: part.run(ctx), *room)
            free(device)
            print(f"[{time.monotonic() - T0:5.0f} s] part {i + 1} {part.key}: {rec['status']} ({rec['seconds']:.1f} s)"
                  + "".join(f"\n    {cell(s)}: {cell(r)}" for s, r in rows_of(part, rec)), flush=True)
        maybe_profile(report, plan, device, deadline, scale)
    finally:
        finish()
        stop_watchdog.set()
        signal.signal(signal.SIGALRM, previous)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # everything is written: skip the interpreter's teardown (seconds on a loaded machine)
