"""The training engine: lr rule and schedule, weight-decay groups, checkpoints, exact resume, run folders."""

import math

import pytest
import torch

from emae import build_model
from emae.engine import (
    build_optimizer,
    effective_lr,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    pretrain,
    read_log,
    save_atomic,
    warmup_cosine,
)
from emae.errors import CheckpointError, ConfigError

from helpers import tiny_config, write_images


def test_lr_scaling_and_schedule():
    cfg = tiny_config("train.batch_size=64", "train.accum_iter=4", "train.base_lr=1.5e-4")
    assert effective_lr(cfg.train) == pytest.approx(1.5e-4 * 256 / 256)
    assert effective_lr(cfg.train, world_size=16) == pytest.approx(1.5e-4 * 4096 / 256)
    assert effective_lr(tiny_config("train.lr=0.01").train) == 0.01
    assert warmup_cosine(0, 10, 100) == 0 and warmup_cosine(5, 10, 100) == 0.5
    assert warmup_cosine(10, 10, 100) == 1.0
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(30, 10, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 90)))


def test_lr_batch_unit_counts_images_or_encoder_sequences():
    emae = ["method=emae", "mask.type=parallel", "train.batch_size=16", "train.base_lr=1e-3"]
    assert effective_lr(tiny_config(*emae).train, sequences_per_image=4) == pytest.approx(1e-3 * 16 / 256)
    seq = tiny_config(*emae, "train.lr_batch_unit=sequences").train
    assert effective_lr(seq, sequences_per_image=4) == pytest.approx(1e-3 * 64 / 256)
    assert effective_lr(seq, sequences_per_image=4) == effective_lr(tiny_config("train.batch_size=64", "train.base_lr=1e-3").train)
    with pytest.raises(ConfigError, match="train.lr_batch_unit: 'tokens'"):
        tiny_config("train.lr_batch_unit=tokens")


@pytest.mark.parametrize("mask_type,ratio,expected", [("random", 0.75, 1), ("parallel", 0.75, 4), ("parallel", 0.5, 2),
                                                      ("uniform", 0.75, 1), ("parallel_uniform", 0.75, 4)])
def test_sequences_per_image(mask_type, ratio, expected):
    from emae.masks import MASKS, sequences_per_image

    assert sequences_per_image(mask_type, ratio) == expected
    grid = (8, 8)  # the mask itself makes that many sequences of each image
    assert MASKS[mask_type](3, grid, ratio, generator=torch.Generator().manual_seed(0)).mask.shape[0] == 3 * expected


def test_equal_compute_emae_run_gets_mae_lr(tmp_path, capsys):
    data = tmp_path / "imgs"
    write_images(data, 16, size=16)
    logs = {}
    for name, extra in (("mae", ["train.batch_size=8"]),
                        ("emae", ["method=emae", "mask.type=parallel", "train.batch_size=2", "train.lr_batch_unit=sequences"])):
        cfg = tiny_config(*extra, "train.max_steps=2", "data.num_workers=0", "train.num_vis=0", "train.warmup_epochs=0.5",
                          **{"data.path": str(data), "output_dir": str(tmp_path / name)})
        pretrain(cfg, progress=False)
        logs[name] = read_log(tmp_path / name / "log.jsonl")[0]
    assert logs["mae"]["lr"] == logs["emae"]["lr"] == pytest.approx(1.5e-3 * 8 / 256)
    assert logs["mae"]["sequences_per_step"] == logs["emae"]["sequences_per_step"] == 8
    assert logs["emae"]["lr_batch_unit"] == "sequences" and logs["emae"]["warmup_steps"] == 4
    out = capsys.readouterr().out  # 16 images: 2 MAE steps or 8 EMAE steps an epoch; warmup 1 or 4 steps of 2
    assert "warmup: 1 of 2 steps (50% of the run" in out
    assert "warning: the warmup (train.warmup_epochs=0.5: 4 steps) is as long as or longer than the run (2 steps)" in out


def test_no_weight_decay_on_biases_norms_and_tokens(tiny):
    model = build_model(tiny())
    opt = build_optimizer(model, tiny().train, 1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"encoder.cls_token", "decoder.mask_token", "encoder.norm.weight", "decoder.pred.bias"} <= no_decay
    assert "encoder.blocks.0.attn.qkv.weight" in decay and "encoder.patch_embed.proj.weight" in decay
    assert all(n.endswith("weight") and "norm" not in n for n in decay)
    assert "encoder.pos_embed" not in no_decay | decay  # fixed: not optimised at all
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    write_images(root, 40, size=24)
    return root


def run(folder, out, *extra, resume=None):
    cfg = tiny_config("train.epochs=2", "train.batch_size=8", "train.warmup_epochs=0.5", "train.num_vis=2",
                      *extra, **{"data.path": str(folder), "output_dir": str(out)})
    return pretrain(cfg, resume=resume, progress=False)


def params(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("stop", [3, 5])  # mid-epoch (3 of 5 steps) and at the epoch boundary
def test_exact_resume(folder, tmp_path, stop):
    straight = run(folder, tmp_path / "a", "data.num_workers=0")
    first = run(folder, tmp_path / "b", "data.num_workers=0", f"train.stop_after_steps={stop}")
    assert first.global_step == stop and straight.global_step == 10
    # the rest runs with worker processes: the data order and augmentation must not depend on them
    second = run(folder, tmp_path / "b", "data.num_workers=2", resume="auto")
    assert second.global_step == 10
    a, b = params(straight.checkpoint), params(second.checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    losses = [r["loss"] for r in read_log(tmp_path / "a" / "log.jsonl") if r["type"] == "train"]
    assert losses[-1] < losses[0]


PYRAMID = ["method=umae", "mask.type=parallel_uniform", "model.arch=swin_t", "model.depth=null", "model.img_size=32",
           "model.patch_size=4", "model.embed_dim=16", "model.depths=[1,1,1,1]", "model.num_heads=1",
           "model.window_size=2"]


@pytest.mark.parametrize("extra", [PYRAMID, ["data.decode=device"]], ids=["umae-swin-parallel", "device-decode"])
def test_exact_resume_of_other_paths(folder, tmp_path, extra):
    """UM-MAE's uniform masks (secondary masking, parallel parts, consistency) on Swin, and device decoding,
    resume bit for bit too."""
    straight = run(folder, tmp_path / "a", "data.num_workers=0", *extra)
    run(folder, tmp_path / "b", "data.num_workers=0", "train.stop_after_steps=3", *extra)
    second = run(folder, tmp_path / "b", "data.num_workers=1", *extra, resume="auto")
    a, b = params(straight.checkpoint), params(second.checkpoint)
    assert second.global_step == straight.global_step == 10 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_outputs_and_checkpoint_contents(folder, tmp_path):
    result = run(folder, tmp_path, "train.save_every=1", "train.log_every=1")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-00000010.pt", "checkpoint-00000005.pt"]
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["version"] == 3 and ckpt["command"] == "pretrain" and ckpt["method"] == "mae"
    assert ckpt["config"]["train"]["epochs"] == 2 and ckpt["world_size"] == 1
    assert {"model", "optimizer", "scaler", "rng", "epoch", "batch_in_epoch", "global_step", "guard"} <= ckpt.keys()
    assert (tmp_path / "reconstruction.png").stat().st_size > 0
    records = read_log(tmp_path / "log.jsonl")
    assert [r["type"] for r in records][0] == "start" and records[-1]["type"] == "end"
    assert sum(r["type"] == "train" for r in records) == 10
    assert all({"loss", "lr", "img_per_s"} <= r.keys() for r in records if r["type"] == "train")


def test_run_folder_is_never_silently_overwritten(folder, tmp_path):
    run(folder, tmp_path, "train.epochs=1")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match="already holds a run"):
        run(folder, tmp_path, "train.epochs=1")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    cfg = tiny_config("train.epochs=1", "train.batch_size=8", **{"data.path": str(folder), "output_dir": str(tmp_path)})
    assert pretrain(cfg, overwrite=True, progress=False).global_step == 5


def test_atomic_save_and_bad_checkpoints(tmp_path):
    save_atomic({"x": 1}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary left behind
    with pytest.raises(CheckpointError, match="is not an emae checkpoint"):
        load_checkpoint(tmp_path / "a.pt")
    (tmp_path / "checkpoint-00000009.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "checkpoint-00000009.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_resume_auto_skips_a_corrupt_newest(folder, tmp_path):
    run(folder, tmp_path, "train.epochs=1")
    (tmp_path / "checkpoint-00000099.pt").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping"):
        path, ckpt = latest_valid_checkpoint(tmp_path)
    assert path.name == "checkpoint-00000005.pt" and ckpt["global_step"] == 5


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_learns(folder, tmp_path, precision):
    """The GPU precisions work on CPU too (slowly): finite losses, the scaler state saved for fp16."""
    result = run(folder, tmp_path, f"train.precision={precision}", "train.log_every=1", "train.lr=1e-3")
    losses = [r["loss"] for r in read_log(tmp_path / "log.jsonl") if r["type"] == "train"]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    scaler = load_checkpoint(result.checkpoint)["scaler"]
    assert bool(scaler) == (precision == "fp16")  # a loss scale is kept only for fp16


def test_max_steps_sets_the_schedule_length(folder, tmp_path):
    result = run(folder, tmp_path, "train.max_steps=7", "train.save_every_steps=3", "train.log_every=1")
    assert result.global_step == 7
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"checkpoint-{s:08d}.pt" for s in (7, 6, 5, 3)]
    records = read_log(tmp_path / "log.jsonl")
    lrs = [r["lr"] for r in records if r["type"] == "train"]
    peak = records[0]["lr"]
    # each record gives the lr its step used (steps 0..6); the cosine over 7 steps after 2.5 of warmup
    assert lrs == pytest.approx([peak * warmup_cosine(s, 2.5, 7) for s in range(7)], rel=1e-12)
    assert warmup_cosine(7, 2.5, 7) == 0.0  # ... and reaches its end at max_steps


def test_remove_temporaries_takes_unfinished_plain_and_sharded_writes(tmp_path):
    from emae.engine.checkpoint import remove_temporaries

    (tmp_path / ".checkpoint-00000004.pt.abc.tmp").write_bytes(b"half")
    (tmp_path / ".checkpoint-00000004.dcp.tmp").mkdir()
    (tmp_path / ".checkpoint-00000004.dcp.tmp" / "__0_0.distcp").write_bytes(b"shard")
    (tmp_path / "checkpoint-00000002.pt").write_bytes(b"kept")
    assert len(remove_temporaries(tmp_path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000002.pt"]
