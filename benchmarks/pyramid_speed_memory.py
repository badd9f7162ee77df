"""UM-MAE vs SimMIM on the same Swin-T: training-step time and peak memory, side by side.

Both models come from the shipped recipes (``umae_swin_t_p16_in1k_256`` / ``simmim_swin_t_p16_in1k_256``, or the
64 px CIFAR ones with ``--size 64``): the same Swin-T (stem 4 px at 256, window 8); UM-MAE runs it on the compact
128 px image of the kept patches with its 2 x 512 decoder, SimMIM on the whole image with its linear head.
A step is forward + backward + AdamW, fp32.

- Time: in this process, after warm-up steps, the two alternate step by step (order flipped every step); the
  ratio is the median over back-to-back pairs of SimMIM step time / UM-MAE step time.
- FLOPs: forward GFLOPs per image of each model, counted by PyTorch's FlopCounterMode on one forward pass
  (matmuls and convolutions; independent of the machine's load), and their ratio.
- Memory: a fresh child process per method holds only that model: on CUDA ``torch.cuda.max_memory_allocated``;
  on CPU the peak resident set (VmHWM, reset through /proc/self/clear_refs after the model and optimiser are
  built, so the growth covers the steps: activations, gradients, AdamW state). The ratio is SimMIM / UM-MAE,
  for the growth and for the whole process.

    python benchmarks/pyramid_speed_memory.py --batch 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

import emae
from emae.config import load_config
from emae.engine.perf import step_memory

RECIPES = {256: ("umae_swin_t_p16_in1k_256", "simmim_swin_t_p16_in1k_256"),
           64: ("umae_swin_t_p8_cifar10_64", "simmim_swin_t_p8_cifar10_64")}
METHODS = ("umae", "simmim")


def make_model(method: str, size: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    recipe = RECIPES[size][METHODS.index(method)]
    return emae.build_model(load_config(recipe, ["train.precision=fp32"])).to(device).train()


def build(method: str, size: int, device: torch.device, batch: int):
    """A step function for one method: forward + backward + AdamW on fixed images and masks."""
    model = make_model(method, size, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    imgs = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    gen = torch.Generator(device).manual_seed(0)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = model(imgs, generator=gen).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step


def probe_memory(method: str, size: int, device: torch.device, batch: int, steps: int = 2) -> dict:
    step = build(method, size, device, batch)
    return step_memory(step, device, steps)


def memory(method: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--probe-memory", method, "--size", str(args.size), "--batch", str(args.batch),
           "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, choices=sorted(RECIPES), default=256, help="image size: recipe pair (256)")
    ap.add_argument("--batch", type=int, default=8, help="images per step (8)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method (5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method (1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    ap.add_argument("--probe-memory", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.probe_memory:
        print(json.dumps(probe_memory(args.probe_memory, args.size, device, args.batch)))
        return

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, emae {emae.__version__}; {name}; fp32; Swin-T at {args.size} px, batch "
          f"{args.batch}; recipes {' vs '.join(RECIPES[args.size])}; {args.warmup} warm-up + {args.steps} timed "
          f"steps each, alternating", flush=True)
    from emae.engine.flops import counted_forward_flops

    flops = {m: counted_forward_flops(make_model(m, args.size, device), torch.zeros(1, 3, args.size, args.size,
                                                                                   device=device)) / 1e9
             for m in METHODS}
    print(f"forward GFLOPs / image: umae {flops['umae']:.2f}, simmim {flops['simmim']:.2f}; ratio simmim / umae "
          f"{flops['simmim'] / flops['umae']:.2f}", flush=True)
    steps = {m: build(m, args.size, device, args.batch) for m in METHODS}
    for m in METHODS:
        for _ in range(args.warmup):
            steps[m]()
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i in range(args.steps):
        for m in (METHODS if i % 2 == 0 else METHODS[::-1]):
            times[m].append(steps[m]())
    for m in METHODS:
        med = statistics.median(times[m])
        print(f"  {m:<7} median step {med * 1e3:8.0f} ms  ({args.batch / med:6.2f} img/s; best "
              f"{min(times[m]) * 1e3:.0f} ms)")
    paired = [s / u for u, s in zip(times["umae"], times["simmim"])]
    print(f"step-time ratio simmim / umae: {statistics.median(paired):.2f} (median of {len(paired)} pairs, range "
          f"{min(paired):.2f}-{max(paired):.2f})")
    if args.no_memory:
        return
    del steps
    mem = {m: memory(m, args) for m in METHODS}
    for m in METHODS:
        r = mem[m]
        print(f"  {m:<7} {r['kind']}: {r['peak_mib']:.0f} MiB (+{r['peak_mib'] - r['base_mib']:.0f} over the built "
              f"model and optimiser)")
    grow = {m: mem[m]["peak_mib"] - mem[m]["base_mib"] for m in METHODS}
    print(f"peak-memory ratio simmim / umae: {mem['simmim']['peak_mib'] / mem['umae']['peak_mib']:.2f} (whole); "
          f"{grow['simmim'] / grow['umae']:.2f} (growth during the steps)")


if __name__ == "__main__":
    main()
