"""Part 8 of ``gpu_check.py`` (issue 25): the GPU step options, each against the step they would replace.

ViT-B/16 MAE, bf16, at part 1's first batch: plain autocast (the step), ``train.bf16_params`` (weights cast once
a step, fp32 masters), ``train.fused_norm`` (residual add + layer norm in one kernel), both; then ``batch 1024``;
then compiled: default mode with bf16_params, ``reduce-overhead`` (CUDA graphs) and ``max-autotune-no-cudagraphs``.
Every option runs on a fresh model (they change the model in place), in priority order, so a part cut short by its
share keeps the figures it reached; each row gives its ratio to the eager step.
"""

from __future__ import annotations

import torch
from gpu_check_steps import Ctx, build, free, measure, recipe

EAGER = [("bf16 autocast (the step)", []), ("bf16_params", ["train.bf16_params=true"]),
         ("fused_norm", ["train.fused_norm=true"]),
         ("bf16_params + fused_norm", ["train.bf16_params=true", "train.fused_norm=true"])]
COMPILED = [("default mode, bf16_params", "default", ["train.bf16_params=true"]),
            ("reduce-overhead (CUDA graphs)", "reduce-overhead", []),
            ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs", [])]


def step_options(ctx: Ctx) -> None:
    plan, rec, device = ctx.plan, ctx.record, ctx.device
    batch = plan.batches[0]
    rec.update(batch=batch, runs=[])
    for label, over in EAGER:
        one(ctx, f"eager, {label}, batch {batch}", batch, over)
    one(ctx, f"eager, bf16_params, batch {plan.big_batch}", plan.big_batch, ["train.bf16_params=true"])
    for label, mode, over in COMPILED:
        torch._dynamo.reset()
        try:
            one(ctx, f"compiled {label}, batch {batch}", batch, [*over, "train.compile=true",
                                                                 f"train.compile_mode={mode}"], mode)
        finally:
            torch._dynamo.reset()


def one(ctx: Ctx, label: str, batch: int, over: list[str], mode: str | None = None) -> dict:
    cfg = recipe(ctx.plan, "vit_b", "train.precision=bf16", *over)
    model = build(cfg, ctx.device)
    forward = None
    if mode is not None:  # a mode is inductor's (the dry run's eager backend takes none)
        inductor = ctx.compile_backend == "inductor"
        forward = torch.compile(model, backend=ctx.compile_backend,
                                mode=mode if inductor and mode != "default" else None)
    run = measure(ctx, ctx.record["runs"], label, cfg, model, batch, forward, compiled=mode is not None)
    if run["status"] == "ok" and mode is not None:
        run["compile_s"] = max(0.0, run["warmup_s"][0] - run["step_ms_p50"] / 1e3)
    base = ctx.record["runs"][0]
    if run["status"] == "ok" and base.get("status") == "ok" and run is not base:
        run["vs_step"] = run["img_per_s"] / base["img_per_s"]
    del model, forward
    free(ctx.device)
    ctx.save()
    return run


def option_rows(rec: dict) -> list[tuple[str, str]]:
    from gpu_check_parts import fmt_run

    return [(r["label"], fmt_run(r) + (f", {r['vs_step']:.2f}x the step" if "vs_step" in r else ""))
            for r in rec.get("runs", [])]
