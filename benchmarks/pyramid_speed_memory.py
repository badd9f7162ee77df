"""UM-MAE vs the reference-faithful SimMIM on the same pyramid (Swin-T, PVT-S): time, memory, FLOPs, side by side.

Both models of a pair come from the shipped recipes, built as UM-MAE's reference code builds them
(``benchmarks/reference_parity.py`` checks that): UM-MAE (``umae_<arch>_p16_in1k_256``) runs the encoder on the
compact 128 px image of the kept patches with its 2 x 512 decoder; SimMIM (``simmim_<arch>_p16_in1k_256``) runs it on
the whole image (Swin-T with window 16, PVT-S with ratios [8,4,2,1]) with its linear head and L1 loss. ``--size 64``
takes the CIFAR recipes. A step is forward + backward + AdamW, fp32, on fixed images with fresh masks.

- FLOPs: forward GFLOPs per image, PyTorch's FlopCounterMode on one forward (matmuls, convolutions).
- Activations a GPU would hold: the bytes of every tensor autograd saves for backward during one training forward
  (``torch.autograd.graph.saved_tensors_hooks``; each storage once, parameters excluded), at batch 1 and ``--batch``;
  the difference gives the bytes per image, the batch-1 remainder what is shared by the batch (SimMIM's regular-grid
  position bias). Extrapolated to the reference's per-GPU batches with weights, gradients and AdamW state added
  (16 bytes per parameter) this is the training memory of one GPU, less the allocator's transient buffers.
- Time: in this process, after warm-up steps, the two alternate step by step (order flipped every step); the ratio is
  the median over back-to-back pairs of SimMIM step time / UM-MAE step time.
- Peak memory: a fresh child process per method holds only that model: on CUDA ``torch.cuda.max_memory_allocated``;
  on CPU the peak resident set (VmHWM reset after the model and optimiser are built, so the growth covers the steps).

    python benchmarks/pyramid_speed_memory.py --batch 4
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

RECIPES = {(arch, size): (f"umae_{arch}_p{p}_{data}", f"simmim_{arch}_p{p}_{data}")
           for arch in ("swin_t", "pvt_s") for size, p, data in ((256, 16, "in1k_256"), (64, 8, "cifar10_64"))}
METHODS = ("umae", "simmim")
REFERENCE_BATCH = {"swin_t": {"umae": 128, "simmim": 64}, "pvt_s": {"umae": 128, "simmim": 128}}  # Makefile, per GPU


def make_model(arch: str, method: str, size: int, device: torch.device) -> emae.MaskedAutoencoder:
    torch.manual_seed(0)
    recipe = RECIPES[arch, size][METHODS.index(method)]
    return emae.build_model(load_config(recipe, ["train.precision=fp32"])).to(device).train()


def images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


def build(arch: str, method: str, size: int, device: torch.device, batch: int):
    """A step function for one method: forward + backward + AdamW on fixed images, fresh masks."""
    model = make_model(arch, method, size, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    imgs = images(batch, size, device)
    gen = torch.Generator(device).manual_seed(0)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(imgs, generator=gen).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return step


def saved_bytes(model: emae.MaskedAutoencoder, imgs: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward in one training forward (storages once, no parameters)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(imgs, generator=torch.Generator(imgs.device).manual_seed(0)).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def activations(arch: str, method: str, size: int, device: torch.device, batch: int) -> dict:
    model = make_model(arch, method, size, device)
    one, many = (saved_bytes(model, images(b, size, device)) for b in (1, batch))
    per_image = (many - one) / (batch - 1)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ref_batch = REFERENCE_BATCH[arch][method]
    return {"batch1_mib": one / 2**20, "per_image_mib": per_image / 2**20, "shared_mib": (one - per_image) / 2**20,
            "params_m": n_params / 1e6, "ref_batch": ref_batch,
            "ref_gib": (one - per_image + per_image * ref_batch + 16 * n_params) / 2**30}


def memory(arch: str, method: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--probe-memory", method, "--arch", arch, "--size", str(args.size),
           "--batch", str(args.batch), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(arch: str, args: argparse.Namespace, device: torch.device) -> None:
    from emae.engine.flops import counted_forward_flops

    pair = RECIPES[arch, args.size]
    print(f"== {arch} at {args.size} px, batch {args.batch}: {pair[0]} vs {pair[1]}", flush=True)
    flops = {m: counted_forward_flops(make_model(arch, m, args.size, device), images(1, args.size, device)) / 1e9
             for m in METHODS}
    print(f"forward GFLOPs / image: umae {flops['umae']:.2f}, simmim {flops['simmim']:.2f}; ratio simmim / umae "
          f"{flops['simmim'] / flops['umae']:.2f}", flush=True)
    acts = {m: activations(arch, m, args.size, device, max(args.batch, 2)) for m in METHODS}
    for m in METHODS:
        a = acts[m]
        print(f"  {m:<7} saved activations: {a['per_image_mib']:.0f} MiB / image + {a['shared_mib']:.0f} MiB shared; "
              f"at the reference's {a['ref_batch']} per GPU with {a['params_m']:.1f} M params (x16 B: weights, "
              f"grads, AdamW): {a['ref_gib']:.1f} GiB", flush=True)
    print(f"activation ratio simmim / umae: {acts['simmim']['per_image_mib'] / acts['umae']['per_image_mib']:.2f} "
          f"per image; {acts['simmim']['ref_gib'] / acts['umae']['ref_gib']:.2f} per GPU at the reference's batches "
          f"(at equal batch 128: {gpu_at(acts['simmim'], 128) / gpu_at(acts['umae'], 128):.2f})", flush=True)
    if args.steps:
        steps = {m: build(arch, m, args.size, device, args.batch) for m in METHODS}
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
              f"{min(paired):.2f}-{max(paired):.2f})", flush=True)
        del steps
    if args.no_memory:
        return
    mem = {m: memory(arch, m, args) for m in METHODS}
    for m in METHODS:
        r = mem[m]
        print(f"  {m:<7} {r['kind']}: {r['peak_mib']:.0f} MiB (+{r['peak_mib'] - r['base_mib']:.0f} over the built "
              f"model and optimiser)")
    grow = {m: mem[m]["peak_mib"] - mem[m]["base_mib"] for m in METHODS}
    print(f"peak-memory ratio simmim / umae: {mem['simmim']['peak_mib'] / mem['umae']['peak_mib']:.2f} (whole); "
          f"{grow['simmim'] / grow['umae']:.2f} (growth during the steps)", flush=True)


def gpu_at(a: dict, batch: int) -> float:
    """GiB of one GPU at ``batch``: shared + per-image activations + 16 bytes per parameter."""
    return (a["shared_mib"] + a["per_image_mib"] * batch) / 1024 + a["params_m"] * 1e6 * 16 / 2**30


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["swin_t", "pvt_s", "all"], default="all", help="the pyramid (all)")
    ap.add_argument("--size", type=int, choices=[256, 64], default=256, help="image size: recipe pair (256)")
    ap.add_argument("--batch", type=int, default=4, help="images per step (4)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method, 0: no timing (4)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per method (1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    ap.add_argument("--probe-memory", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    archs = ["swin_t", "pvt_s"] if args.arch == "all" else [args.arch]
    if args.probe_memory:
        print(json.dumps(step_memory(build(archs[0], args.probe_memory, args.size, device, args.batch), device, 2)))
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, emae {emae.__version__}; {name}; fp32; {args.warmup} warm-up + {args.steps} "
          f"timed steps each, alternating", flush=True)
    for arch in archs:
        compare(arch, args, device)


if __name__ == "__main__":
    main()
