"""MAE training-step throughput: emae against Hugging Face ``transformers.ViTMAEForPreTraining``.

Both run the same config with the same weights (copied with ``emae.interop.huggingface.to_hf``), the same
images and the same masking noise; a step is forward + backward + AdamW step, fp32. After warm-up the two
implementations alternate step by step (the order flips every step), so machine noise hits both alike;
img/s comes from the median and the best step time, the ratio from the median of back-to-back step pairs. Peak memory is measured in a fresh process per implementation that
holds only that model: CUDA ``max_memory_allocated``, or on CPU the peak resident set (VmHWM, reset through
/proc/self/clear_refs after the model is built, so it covers the steps: activations, grads, AdamW state).

    python benchmarks/throughput.py [--configs vit_tiny_p4_32 vit_base_p16_224] [--steps N] [--device cpu]

The output ends with one line per config: ``ratio <config> <emae img/s / transformers img/s>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import emae
from emae.config import TrainConfig
from emae.engine.optim import build_optimizer
from emae.engine.perf import step_memory, sync
from emae.interop.huggingface import to_hf

CONFIGS: dict[str, tuple[list[str], int, int]] = {  # name: (emae overrides, batch, default timed steps)
    "vit_tiny_p4_32": (
        ["model.arch=vit_tiny", "model.img_size=32", "model.patch_size=4",
         "model.decoder_embed_dim=128", "model.decoder_depth=4", "model.decoder_num_heads=4"],
        128,
        10,
    ),
    "vit_base_p16_224": (
        ["model.arch=vit_base", "model.img_size=224", "model.patch_size=16",
         "model.decoder_embed_dim=512", "model.decoder_depth=8", "model.decoder_num_heads=16"],
        8,
        5,
    ),
}
IMPLS = ("emae", "transformers")


def optimizer(impl: str, net: torch.nn.Module, same: bool) -> torch.optim.Optimizer:
    """emae's own optimiser (what ``emae pretrain`` runs: AdamW with the fused kernel, no decay on 1-D params
    and tokens) against the torch default AdamW that a transformers or official-MAE training loop gets.
    ``same``: the torch default for both, so the ratio compares the models alone."""
    if impl == "emae" and not same:
        cfg = TrainConfig(lr=1.5e-4, weight_decay=0.05, betas=[0.9, 0.95])
        return build_optimizer(net, cfg, cfg.lr)
    params = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)


def build(name: str, device: torch.device, impls: tuple[str, ...] = IMPLS, same_optimizer: bool = False
          ) -> tuple[dict[str, Callable], int, int]:
    """One training-step closure per implementation (same weights and optimiser settings), batch, patches."""
    overrides, batch, _ = CONFIGS[name]
    torch.manual_seed(0)
    model = emae.build_model(emae.load_config(None, overrides)).to(device)
    hf = to_hf(model) if "transformers" in impls else None
    models = {"emae": model, "transformers": hf}
    steps: dict[str, Callable] = {}
    for impl in impls:
        net = models[impl].train()
        opt = optimizer(impl, net, same_optimizer)

        def step(imgs, noise, net=net, opt=opt, impl=impl) -> float:
            out = net(imgs, noise=noise) if impl == "emae" else net(pixel_values=imgs, noise=noise)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return out.loss.item()

        steps[impl] = step
    return steps, batch, model.encoder.num_patches


def inputs(batch: int, patches: int, size: tuple[int, int], device: torch.device, g: torch.Generator):
    imgs = torch.randn(batch, 3, *size, generator=g).to(device)
    noise = torch.rand(batch, patches, generator=g).to(device)
    return imgs, noise


def image_size(name: str) -> tuple[int, int]:
    return emae.load_config(None, CONFIGS[name][0]).model.image_size


def time_config(name: str, device: torch.device, steps: int, warmup: int, same_optimizer: bool
                ) -> dict[str, list[float]]:
    fns, batch, patches = build(name, device, same_optimizer=same_optimizer)
    size = image_size(name)
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    for i in range(warmup + steps):
        imgs, noise = inputs(batch, patches, size, device, g)  # same images and noise for both
        order = IMPLS if i % 2 == 0 else IMPLS[::-1]
        losses = {}
        for impl in order:
            sync(device)
            t = time.perf_counter()
            losses[impl] = fns[impl](imgs, noise)
            sync(device)
            if i >= warmup:
                times[impl].append(time.perf_counter() - t)
        if i == 0:
            print(f"  first-step loss: emae {losses['emae']:.6f}  transformers {losses['transformers']:.6f}", flush=True)
    return times


# ---------------------------------------------------------------- memory (child process)



def probe_memory(name: str, impl: str, device: torch.device, same_optimizer: bool, steps: int = 2) -> dict:
    """Peak memory of ``steps`` training steps of one implementation, in this (fresh) process."""
    fns, batch, patches = build(name, device, (impl,), same_optimizer)
    imgs, noise = inputs(batch, patches, image_size(name), device, torch.Generator().manual_seed(0))
    return step_memory(lambda: fns[impl](imgs, noise), device, steps)


def memory(name: str, impl: str, device: str, same_optimizer: bool) -> dict | None:
    cmd = [sys.executable, __file__, "--probe-memory", impl, "--configs", name, "--device", device]
    cmd += ["--same-optimizer"] if same_optimizer else []
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900).stdout
        return json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as e:
        print(f"  memory probe for {impl} failed: {e}", file=sys.stderr)
        return None


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--steps", type=int, help="timed steps per implementation (default: 10 tiny, 5 base)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation (default 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--same-optimizer", action="store_true",
                    help="torch's default AdamW for both (compares the models alone); default: each its own")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    ap.add_argument("--probe-memory", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    if args.probe_memory:
        print(json.dumps(probe_memory(args.configs[0], args.probe_memory, device, args.same_optimizer)))
        return

    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, emae {emae.__version__}; "
          f"device {device}, {torch.get_num_threads()} threads; fp32; {args.warmup} warm-up + "
          f"{args.steps or 'default'} timed steps each, alternating; optimiser: "
          f"{'torch default AdamW for both' if args.same_optimizer else 'each its own (emae: fused AdamW)'}")
    ratios = {}
    for name in args.configs:
        _, batch, default_steps = CONFIGS[name]
        print(f"\n{name} (batch {batch})", flush=True)
        times = time_config(name, device, args.steps or default_steps, args.warmup, args.same_optimizer)
        for impl in IMPLS:
            med, best = statistics.median(times[impl]), min(times[impl])
            print(f"  {impl:<12} {batch / med:8.2f} img/s (median step {med * 1e3:7.0f} ms)  "
                  f"{batch / best:8.2f} img/s (best step {best * 1e3:7.0f} ms)")
        # per-step ratios of back-to-back steps share the machine's load; their median resists outliers
        paired = [hf / ours for ours, hf in zip(times["emae"], times["transformers"])]
        ratios[name] = statistics.median(paired)
        print(f"  emae / transformers: {ratios[name]:.2f} (median of {len(paired)} paired steps; "
              f"range {min(paired):.2f}-{max(paired):.2f})")
        if not args.no_memory:
            for impl in IMPLS:
                m = memory(name, impl, args.device, args.same_optimizer)
                if m:
                    print(f"  {impl:<12} {m['kind']} {m['peak_mib']:8.0f} MiB "
                          f"(+{m['peak_mib'] - m['base_mib']:.0f} MiB over the built model)")
    print()
    for name, r in ratios.items():
        print(f"ratio {name} {r:.2f}")


if __name__ == "__main__":
    main()
