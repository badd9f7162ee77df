"""benchmarks/gpu_check.py, the prepared device check, on the CPU: the dry run measures every part; a deadline cuts
a run short, keeps what finished and exits 0; the runner isolates errors and stops parts mid-way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from emae.data import jpeg

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPT = BENCH / "gpu_check.py"
DONE = ("ok", "stopped: share", "stopped: deadline", "skipped: deadline")  # every status but error / pending / running


def run_script(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--data", "synthetic", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check

    return gpu_check


def test_dry_run_measures_every_part(tmp_path, bench):
    from gpu_check_steps import DRY, recipe

    from emae.engine.flops import train_flops_per_image

    proc = run_script(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert [p["part"] for p in parts] == list(range(1, 9))
    assert [p["status"] for p in parts] == ["ok"] * 8, [(p["key"], p["status"], p.get("error")) for p in parts]
    assert report["finished"] and report["dry_run"] and report["env"]["device"] == "cpu"
    vit_b, fp32, vit_l, emae_part, swin, data, hf, options = parts

    # 1: eager at both batch sizes, then compiled at the faster; every run timed; the best is the fastest
    runs = vit_b["runs"]
    assert [r["label"].split(",")[0] for r in runs] == ["eager", "eager", "compiled"]
    assert all(r["status"] == "ok" and r["steps"] == 1 and r["img_per_s"] > 0 and r["fused_adamw"] for r in runs)
    fastest_eager = max(runs[:2], key=lambda r: r["img_per_s"])
    assert runs[2]["batch"] == fastest_eager["batch"] and runs[2]["compile_s"] >= 0
    assert vit_b["best"] == max(runs, key=lambda r: r["img_per_s"])
    assert vit_b["train_gflops_per_image"] == pytest.approx(train_flops_per_image(recipe(DRY, "vit_b")) / 1e9)
    assert vit_l["runs"][0]["train_gflops_per_image"] > vit_b["train_gflops_per_image"]  # one more block

    # 2: identical inputs: TF32 does nothing on a CPU, so its losses equal fp32's; bf16's differ, a little
    losses = fp32["losses"]
    assert len(losses["fp32"]) == DRY.loss_steps and losses["tf32"] == losses["fp32"]
    assert 0 < fp32["bf16_vs_fp32"]["max_rel_diff"] < 0.05 and fp32["tf32_vs_fp32"]["max_abs_diff"] == 0

    # 4, 5: side by side, from the shipped recipes; EMAE's analytic FLOPs per image against MAE's
    assert emae_part["flops_ratio"] == pytest.approx(
        train_flops_per_image(recipe(DRY, "emae_b")) / train_flops_per_image(recipe(DRY, "vit_b")))
    assert set(emae_part["models"]) == {"vit_b", "emae_b"} and emae_part["ratio"] > 0
    assert {m["recipe"] for m in swin["models"].values()} == {"umae_swin_t_p16_in1k_256", "simmim_swin_t_p16_in1k_256"}
    assert [s["method"] for s in swin["settings"].values()] == ["umae", "simmim"] and swin["ratio"] > 0

    # 6: every loader pipeline on synthetic JPEGs (folder decode variants, device decode, shards, --max-side
    # shards; with simplejpeg, its folder and shard pipelines too), each compared with part 1's best step
    fast = ["cpu decode, simplejpeg + data.resize=torch", "shards, simplejpeg + data.resize=torch",
            "shards --max-side 256, simplejpeg + data.resize=torch"] if jpeg.available() else []
    assert data["data"].startswith("synthetic") and len(data["rates"]) == 7 + len(fast)
    assert {"shards", "shards --max-side 256", "cpu decode, data.draft=false (full-size decode)", *fast} \
        <= set(data["rates"])
    assert data["pipelines"] == [k for k in data["rates"] if "alone" not in k]
    assert data["step_img_per_s"] == vit_b["best"]["img_per_s"]
    assert data["ratios"] == pytest.approx({k: v / data["step_img_per_s"] for k, v in data["rates"].items()})

    # 7: same weights and noise: equal masks, predictions within fp32 rounding
    assert hf["pass"] and hf["fp32"]["mask_equal"] and hf["fp32"]["max_pred_diff"] < 1e-5

    # 8: every step option runs, eager and compiled (the dry run compiles with the eager backend), batch 1024's
    # stand-in too; each against the eager step
    labels = [r["label"] for r in options["runs"]]
    assert len(labels) == 8 and all(r["status"] == "ok" for r in options["runs"]), options["runs"]
    assert any("bf16_params + fused_norm" in x for x in labels) and any("reduce-overhead" in x for x in labels)
    assert any(f"batch {DRY.big_batch}" in x for x in labels)
    assert all(r["vs_step"] > 0 for r in options["runs"][1:])

    # no GPU peak, so MFU is unknown: the profile runs; the table holds every part and the goals
    assert report["profile"]["status"] == "ok" and len(report["profile"]["top_ops"]) > 3
    assert [g["met"] for g in report["goals"]][0] is None
    table = (tmp_path / "gpu_check.md").read_text()
    assert table in proc.stdout
    assert all(f"| {i}. " in table for i in range(1, 9)) and "| goal | target | result |" in table


def test_a_deadline_cuts_the_run_short_and_exits_0(tmp_path):
    """A full dry run takes longer than 10 s (imports alone take seconds): the run ends at the deadline (or right
    after the imports, when they took longer), each part finished, stopped or skipped, and the table is written."""
    proc = run_script(tmp_path, "--deadline", "10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = [p["status"] for p in report["parts"]]
    assert len(statuses) == 8 and all(s in DONE for s in statuses), statuses
    assert statuses != ["ok"] * 8
    assert report["elapsed_s"] <= max(10, report["startup_s"]) + 3
    for part in report["parts"]:
        if part["status"] == "ok":
            assert part["seconds"] > 0 and len(part) > 8  # its figures, not just the bookkeeping
    assert (tmp_path / "gpu_check.md").read_text().count("| status |") >= 1


def fake_parts():
    """Seven stand-ins: fast, reading the report on disk, failing, stopping at its share between steps, never
    checking the clock (the alarm stops it), one the deadline stops, and one there is no time left for."""
    from gpu_check_parts import Part

    seen: dict = {}

    def fast(ctx):
        ctx.record["figure"] = 1.0

    def reads(ctx):
        seen["on_disk"] = json.loads(Path(ctx.record["out"]).read_text())["parts"][0]

    def fails(ctx):
        raise ValueError("bad input")

    def steps(ctx):
        ctx.record["steps"] = 0
        while True:
            ctx.check()
            ctx.record["steps"] += 1
            ctx.save()
            time.sleep(0.01)

    def stubborn(ctx):
        ctx.record["started"] = True
        end = time.monotonic() + 5  # without the alarm it would end "ok" after 5 s
        while time.monotonic() < end:
            sum(range(1000))

    def rows(rec):
        return [("figure", str(rec.get("figure")))]

    shares = [48, 48, 48, 48, 48, 300, 480]  # x 0.0125 at a 6 s deadline
    runs = [fast, reads, fails, steps, stubborn, steps, fast]
    return [Part(f.__name__ + str(i), f.__name__, s, f, rows) for i, (f, s) in enumerate(zip(runs, shares))], seen


def test_runner_keeps_records_isolates_errors_stops_and_skips(tmp_path, bench, monkeypatch):
    parts, seen = fake_parts()
    out = tmp_path / "out"
    monkeypatch.setattr(bench, "PARTS", parts)
    monkeypatch.setattr(bench, "maybe_profile", lambda *a: None)
    monkeypatch.setattr(bench, "free", lambda device: None)  # gc.collect in pytest's big process takes a while
    monkeypatch.setattr(bench, "hard_exit", lambda: None)  # the watchdog must not end pytest
    real_report = bench.Report

    def report(path, meta):  # the reading part learns where the JSON is
        r = real_report(path, meta)
        r.data["parts"][1]["out"] = str(r.json_path)
        return r

    monkeypatch.setattr(bench, "Report", report)
    monkeypatch.setattr(bench, "T0", time.monotonic())
    assert bench.main(["--dry-run", "--out", str(out), "--deadline", "6"]) == 0
    data = json.loads((out / "gpu_check.json").read_text())
    got = data["parts"]
    assert [p["status"] for p in got] == ["ok", "ok", "error", "stopped: share", "stopped: share",
                                          "stopped: deadline", "skipped: deadline"]
    assert seen["on_disk"]["status"] == "ok" and seen["on_disk"]["figure"] == 1.0  # written before part 2 began
    assert got[2]["error"] == "ValueError: bad input" and "Traceback" in got[2]["traceback"]
    assert got[3]["steps"] > 3 and got[4]["started"] and got[5]["steps"] > got[3]["steps"]
    assert got[3]["budget_s"] == pytest.approx(0.6) and got[3]["seconds"] < 0.6 + 0.3
    assert data["finished"] and data["elapsed_s"] < 6 + 1
    assert (out / "gpu_check.md").read_text().count("| status |") == 5


def test_selected_parts_and_bad_arguments(tmp_path, bench, monkeypatch, capsys):
    parts, _ = fake_parts()
    monkeypatch.setattr(bench, "PARTS", [parts[0]] * 7)
    monkeypatch.setattr(bench, "maybe_profile", lambda *a: None)
    assert bench.main(["--dry-run", "--out", str(tmp_path), "--parts", "2,5"]) == 0
    got = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert [p["status"] for p in got] == ["ok" if i in (2, 5) else "skipped: not selected" for i in range(1, 8)]
    bad = [(["--parts", "8"], "--parts"), (["--deadline", "0"], "--deadline"), ([], "already holds"),
           (["--data", str(tmp_path / "none")], "--data")]
    if not torch.cuda.is_available():
        bad.append((["--overwrite", "--device", "cuda"], "no CUDA device"))
    for args, message in bad:
        with pytest.raises(SystemExit) as e:
            bench.main(["--dry-run", "--out", str(tmp_path), *args])
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("fsync", [True, False])
def test_report_writes_are_whole_or_absent(tmp_path, fsync):
    """engine.atomic.write_atomic, which writes the report: a write that fails half-way leaves the previous file
    whole and no temporary file behind."""
    from emae.engine.atomic import write_atomic

    path = tmp_path / "gpu_check.json"
    write_atomic(path, lambda f: f.write(b'{"parts": [1]}'), fsync=fsync)

    def broken(f):
        f.write(b'{"parts": [1, 2')
        raise TimeoutError("cut")

    with pytest.raises(TimeoutError):
        write_atomic(path, broken, fsync=fsync)
    assert json.loads(path.read_text()) == {"parts": [1]} and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_table_and_goals_of_a_gpu_run(bench):
    """The GPU-only branches of the table (MFU, GiB, compile time, goals met or missed, the device profile), fed a
    hand-written report of a cut-short H200 run: the dry run never reaches them."""
    from gpu_check_parts import PARTS

    run = {"label": "compiled, batch 512", "batch": 512, "status": "ok", "img_per_s": 4100.0, "step_ms_p50": 124.9,
           "step_ms_p90": 125.3, "peak_memory_mib": 30000.0, "mfu": 0.243, "tflops": 240.6, "compile_s": 61.0}
    oom = {"label": "eager, batch 512", "batch": 512, "status": "error", "error": "out of memory at batch 512: x"}
    parts = [{"part": i + 1, "key": p.key, "title": p.title, "status": "skipped: deadline"} for i, p in enumerate(PARTS)]
    parts[0].update(status="ok", runs=[oom, run], best=run)
    rates = {"cpu decode in workers": 1500.0, "device decode: workers alone": 20000.0,
             "device decode: + decode on cuda": 9000.0}
    parts[5].update(status="stopped: deadline", rates=rates, ratios={k: v / 4100 for k, v in rates.items()},
                    pipelines=["cpu decode in workers", "device decode: + decode on cuda"], workers=10, batch=256,
                    data="synthetic", step_img_per_s=4100.0, step=run["label"])
    prof = {"reason": "MFU 24.3% < 50%", "batch": 512, "status": "ok", "wall_ms_per_step": 150.0, "busy_share": 0.82,
            "clock": "device", "top_ops": [{"op": "aten::mm", "ms_per_step": 60.0, "share": 0.5, "calls_per_step": 300}]}
    env = {"name": "NVIDIA H200", "driver": "580.159.04", "memory_gib": 139.8, "torch": "2.11.0", "cuda": "13.0",
           "peak_bf16_tflops": 989.0, "matmul_bf16_tflops": 790.0, "emae": "0.1.0"}
    data = {"started": "2026-12-01 10:00 UTC", "deadline_s": 480.0, "elapsed_s": 479.0, "env": env, "parts": parts,
            "profile": prof}
    data["goals"] = bench.goals(parts)
    assert [g["met"] for g in data["goals"]] == [False, True]  # 24.3% MFU; 2.2x >= 1.5x (the workers alone do not count)
    text = bench.table(data)
    for expected in ("NVIDIA H200, driver 580.159.04", "peak bf16 989.0 TFLOP/s", "ran at 790.0",
                     "| 1. ViT-B/16 MAE bf16 | eager, batch 512 | error: out of memory at batch 512: x |",
                     "4,100 img/s, step p50 124.9 / p90 125.3 ms, 29.3 GiB, MFU 24.3%, compile 61 s",
                     "| status | stopped: deadline |", "| 7. HF ViTMAE, fp32 | status | skipped: deadline |",
                     "2.20x (device decode: + decode on cuda): met", "24.3% (compiled, batch 512): **missed**",
                     "kernels fill 82% of the step", "| aten::mm | 60.00 | 50.0% | 300 |"):
        assert expected in text, expected
