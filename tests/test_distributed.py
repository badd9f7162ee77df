"""Distributed training: DDP and FSDP under torchrun on CPU (gloo) against one process with the same global batch.

Two processes with batch B and one with batch 2B see the same images per step (the sampler interleaves ranks)
with the same masks (each rank keeps its rows of the global mask), so their loss trajectories agree to float
rounding: we allow 1e-5 (measured: about 1e-7).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import emae
from emae.config import set_key
from emae.engine import load_checkpoint, pretrain
from emae.engine.distributed import DistInfo, _rendezvous_env, env_layout, first_host, rank_mask, resolve_mode
from emae.engine.sharded import consolidate
from emae.errors import ConfigError
from emae.data.loader import ResumableSampler
from emae.models import build_model

from helpers import TINY, tiny_config, write_images

TOL = 1e-5  # loss, 1 process vs 2: same images, same masks; only the order of float sums differs
COMMON = [*TINY, "train.max_steps=6", "train.log_every=1", "data.num_workers=0", "train.warmup_epochs=0",
          "train.lr=2e-3", "train.num_vis=2", "train.device=cpu", "train.save_every_steps=3"]
needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")


def losses(run: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["type"] == "train"}


def params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def close(a: dict, b: dict, atol: float) -> bool:
    """Equal within ``atol``, except the attention key biases: their gradient is zero in exact arithmetic (softmax
    ignores a constant shift), so Adam turns float noise there into full-lr steps whose sign differs by run."""
    def known(k: str, t: torch.Tensor) -> torch.Tensor:
        if k.endswith("qkv.bias"):
            t = t.clone()
            t[t.numel() // 3: 2 * t.numel() // 3] = 0
        return t
    return a.keys() == b.keys() and all(torch.allclose(known(k, a[k]), known(k, b[k]), atol=atol, rtol=0) for k in a)


def torchrun(*args: str, script: list[str] | None = None) -> str:
    """``emae pretrain ARGS`` (or ``script ARGS``) in 2 processes; the children import this emae."""
    src = str(Path(emae.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *(script or ["-m", "emae.cli.main"]), "pretrain", "--no-progress", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    errors = [x for x in r.stderr.splitlines() if "error:" in x]  # each rank's one line, ahead of the tracebacks
    assert r.returncode == 0, "\n".join(errors) + "\n" + r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def single(data: Path, out: Path, *extra: str, resume: str | None = None):
    cfg = tiny_config(*COMMON, "train.batch_size=8", *extra, **{"data.path": str(data), "output_dir": str(out)})
    return pretrain(cfg, resume=resume, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 8, and the 2-process runs with batch 4 each (6 steps, checkpoints at 3, 4, 6)."""
    root = tmp_path_factory.mktemp("dist")
    write_images(root / "img", 32, size=20)
    data, two = str(root / "img"), [*COMMON, "train.batch_size=4"]
    single(root / "img", root / "ref")
    out = {"root": root, "ref": root / "ref"}
    out["ddp_stdout"] = torchrun("--data", data, "--output", str(root / "ddp"), *two, "train.stop_after_steps=3")
    out["ddp_stdout"] += torchrun("--data", data, "--output", str(root / "ddp"), "--resume", "auto", *two)
    worker = [str(Path(__file__).with_name("dist_worker.py")), str(root / "collectives")]  # a group of its own
    torchrun("--data", data, "--output", str(root / "fsdp"), *two, "train.distributed=fsdp",
             "train.activation_checkpointing=true", script=worker)
    # sharded FSDP, resumed from the DDP run's full checkpoint at step 3
    torchrun("--data", data, "--output", str(root / "sharded"), "--resume", str(root / "ddp/checkpoint-00000003.pt"),
             *two, "train.distributed=fsdp", "train.fsdp_checkpoint=sharded")
    return out


@needs_gloo
@pytest.mark.slow
def test_ddp_matches_one_process_and_only_rank0_writes(runs):
    ref, ddp = losses(runs["ref"]), losses(runs["root"] / "ddp")
    assert sorted(ddp) == list(range(1, 7)) and max(abs(ref[s] - ddp[s]) for s in ref) < TOL
    ref_end = params(runs["ref"] / "checkpoint-00000006.pt")
    ddp_end = params(runs["root"] / "ddp/checkpoint-00000006.pt")
    assert close(ref_end, ddp_end, 1e-5)
    assert not close(ref_end, params(runs["ref"] / "checkpoint-00000003.pt"), 1e-3)  # it did train
    # rank 0 alone writes: one start and one resume record, each step once, one "done" line per launch
    log = [json.loads(x) for x in (runs["root"] / "ddp/log.jsonl").read_text().splitlines()]
    kinds = [r["type"] for r in log]
    assert kinds.count("start") == 1 and kinds.count("resume") == 1 and kinds.count("train") == 6
    assert log[0]["world_size"] == 2 and log[0]["global_batch"] == 8
    assert log[0]["lr"] == json.loads((runs["ref"] / "log.jsonl").read_text().splitlines()[0])["lr"]
    assert runs["ddp_stdout"].count("done:") == 2
    names = {p.name for p in (runs["root"] / "ddp").iterdir()}
    ckpts = {f"checkpoint-0000000{i}.pt" for i in (3, 4, 6)}
    assert names == {"config.yaml", "log.jsonl", "reconstruction.png", "tb", *ckpts}
    assert len(list((runs["root"] / "ddp" / "tb").iterdir())) == 2  # one event file per launch, rank 0's


@needs_gloo
@pytest.mark.slow
def test_fsdp_trains_and_its_checkpoint_runs_in_one_process(runs, tmp_path):
    fsdp = runs["root"] / "fsdp"
    ref, got = losses(runs["ref"]), losses(fsdp)
    assert max(abs(ref[s] - got[s]) for s in ref) < TOL  # FSDP + activation checkpointing: same trajectory
    assert got[6] < got[1]
    assert close(params(runs["ref"] / "checkpoint-00000006.pt"), params(fsdp / "checkpoint-00000006.pt"), 1e-5)
    # the gathered checkpoint at step 3 continues in one process exactly as the FSDP run did: same outputs
    # (step 4's loss is the model's output on the same batch and mask), same optimiser state (steps 5, 6)
    single(runs["root"] / "img", tmp_path / "one", resume=str(fsdp / "checkpoint-00000003.pt"))
    again = losses(tmp_path / "one")
    assert sorted(again) == [4, 5, 6] and max(abs(again[s] - got[s]) for s in again) < 1e-6


@needs_gloo
@pytest.mark.slow
def test_fsdp_sharded_checkpoints_gather_into_one_process(runs, tmp_path):
    sharded = runs["root"] / "sharded"
    ref, got = losses(runs["ref"]), losses(sharded)
    assert sorted(got) == [4, 5, 6] and max(abs(ref[s] - got[s]) for s in got) < TOL  # resumed from DDP's step 3
    found = sorted(p.name for p in sharded.glob("checkpoint-*"))
    assert found == ["checkpoint-00000004.dcp", "checkpoint-00000006.dcp"]
    end = load_checkpoint(sharded / "checkpoint-00000006.dcp")
    assert end["global_step"] == 6 and close(params(runs["ref"] / "checkpoint-00000006.pt"), end["model"], 1e-5)
    model = build_model(tiny_config())
    model.load_state_dict(end["model"])  # plain keys: loads into a single-process model ...
    loaded, imgs, noise = emae.load(sharded / "checkpoint-00000006.dcp"), torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    assert torch.equal(model.eval()(imgs, noise=noise).pred, loaded(imgs, noise=noise).pred)  # ... and emae.load's
    one = consolidate(sharded / "checkpoint-00000006.dcp", tmp_path / "one.pt")  # one ordinary file
    assert close(load_checkpoint(one)["model"], end["model"], 0) and load_checkpoint(one)["optimizer"]["state"]
    single(runs["root"] / "img", tmp_path / "one", "train.distributed=none",
           resume=str(sharded / "checkpoint-00000004.dcp"))
    again = losses(tmp_path / "one")
    assert sorted(again) == [5, 6] and max(abs(again[s] - got[s]) for s in again) < 1e-6


@pytest.mark.parametrize("mask_type,method", [("random", "mae"), ("parallel", "emae")])
def test_rank_masks_are_the_global_mask_sliced_by_interleaved_rank(mask_type, method):
    model = build_model(tiny_config(f"mask.type={mask_type}", f"method={method}"))
    full = model.make_mask(6, generator=torch.Generator().manual_seed(1))
    parts = [rank_mask(model, 3, torch.Generator().manual_seed(1), DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    k = full.parts
    for r, m in enumerate(parts):
        rows = torch.tensor([(2 * i + r) * k + j for i in range(3) for j in range(k)])
        assert torch.equal(m.mask, full.mask[rows]) and torch.equal(m.ids_keep, full.ids_keep[rows])
        assert torch.equal(m.ids_restore, full.ids_restore[rows]) and m.parts == k
    assert not torch.equal(parts[0].mask, parts[1].mask)




def test_launch_environment_and_config_errors(monkeypatch):
    assert first_host("gpu[003-005,009],cpu1") == "gpu003" and first_host("node7") == "node7"
    assert first_host("a-b[12,14]") == "a-b12"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    assert env_layout() == (0, 0, 1)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert env_layout() == (5, 1, 8)  # srun without torchrun
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert env_layout() == (2, 0, 4)  # torchrun's variables win
    for key in ("MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.setenv(key, "x")  # restored after the test
        monkeypatch.delenv(key)
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        _rendezvous_env()
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[007-009]")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    _rendezvous_env()  # srun alone: the first node, a port from the job id
    assert os.environ["MASTER_ADDR"] == "gpu007" and os.environ["MASTER_PORT"] == str(20000 + 123456 % 20000)
    cfg = tiny_config()
    for key, value, match in [("train.distributed", "deepspeed", "train.distributed: 'deepspeed'.*ddp"),
                              ("train.dist_backend", "mpi", "train.dist_backend: 'mpi'.*gloo"),
                              ("train.fsdp_checkpoint", "sharded", "train.fsdp_checkpoint.*fsdp")]:
        with pytest.raises(ConfigError, match=match):
            tiny_config(f"{key}={value}")
    with pytest.raises(ConfigError, match="train.dist_backend: 'nccl'.*CUDA"):
        tiny_config("train.dist_backend=nccl", "train.device=cpu")
    set_key(cfg, "train.distributed", "none")
    with pytest.raises(ConfigError, match="train.distributed: 'none' but 4 processes"):
        resolve_mode(cfg.train, 4)


@needs_gloo
@pytest.mark.parametrize("mode,precision", [("fsdp", "fp16"), ("ddp", "bf16")])
def test_one_process_group_with_mixed_precision(tmp_path, mode, precision):
    """FSDP's mixed-precision policy with fp16's sharded loss scaler, and DDP under bf16, in a group of one."""
    cfg = tiny_config("train.max_steps=2", "train.batch_size=4", f"train.precision={precision}", "train.num_vis=2",
                      "train.device=cpu", "data.num_workers=0", f"train.distributed={mode}",
                      **{"output_dir": str(tmp_path)})
    result = pretrain(cfg, progress=False)
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.loss)) and not dist.is_initialized()
    state = load_checkpoint(result.checkpoint)
    build_model(tiny_config()).load_state_dict(state["model"])
    assert (state["scaler"]["scale"] > 1) if precision == "fp16" else state["scaler"] == {}


PYRAMID = ["method=umae", "mask.type=uniform", "model.depth=null", "model.img_size=32", "model.patch_size=4",
           "model.embed_dim=16", "model.depths=[1,1,1,1]", "model.num_heads=1", "model.window_size=2"]


@needs_gloo
@pytest.mark.parametrize("overrides", [[*PYRAMID, "model.arch=swin_t"],
                                       [*PYRAMID, "model.arch=pvt_s", "method=simmim", "mask.type=random"]],
                         ids=["umae-swin", "simmim-pvt"])
def test_fsdp_shards_pyramid_stages(tmp_path, overrides):
    """FSDP finds the blocks of every Swin / PVT stage; the gathered checkpoint loads into a plain model."""
    cfg = tiny_config(*overrides, "train.max_steps=2", "train.batch_size=4", "train.num_vis=0", "train.device=cpu",
                      "data.num_workers=0", "train.distributed=fsdp", "train.activation_checkpointing=true",
                      **{"output_dir": str(tmp_path)})
    result = pretrain(cfg, progress=False)
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.loss))
    build_model(tiny_config(*overrides)).load_state_dict(load_checkpoint(result.checkpoint)["model"])


@pytest.mark.parametrize("world", [2, 3])
def test_rank_batches_interleave_into_the_one_process_batch(world):
    """Rank r's k-th batch holds positions r, r + W, ... of the 1-process k-th batch (batch W * B), same seeds."""
    one = list(ResumableSampler(48, 4 * world, seed=5))
    ranks = [list(ResumableSampler(48, 4, seed=5, rank=r, world_size=world)) for r in range(world)]
    for k in range(len(one) // (4 * world)):
        batch = one[k * 4 * world:(k + 1) * 4 * world]
        for r in range(world):
            assert ranks[r][k * 4:(k + 1) * 4] == batch[r::world]


@needs_gloo
@pytest.mark.slow
def test_collectives_agree_across_ranks(runs):
    """What every rank must decide alike (the NaN guard's skip, a stop on SIGTERM, rank 0's check of the run folder
    and its errors) comes out the same on all; the FSDP run joined the group its launcher started and left it running."""
    got = [json.loads((runs["root"] / f"collectives/rank{r}.json").read_text()) for r in (0, 1)]
    both = ["answer of rank0", "refused by rank0"]
    assert got == [[True, False, 0.5, True, *both, [0], True],
                   [True, False, 0.5, False, *both, [], True]]
