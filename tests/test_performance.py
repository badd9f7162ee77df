"""Performance features must not change the numbers: FLOP counts, the fused optimiser, the decoded cache."""

import copy

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from emae.config import load_config
from emae.data import image_source, pretrain_loader
from emae.engine.flops import counted_forward_flops, train_flops_per_image, vit_mae_forward_flops
from emae.engine.optim import build_optimizer
from emae.models import build_model

from helpers import TINY, tiny_config, write_images

VIT_B = ["model.arch=vit_base", "model.img_size=224", "model.patch_size=16", "model.decoder_embed_dim=512",
         "model.decoder_depth=8", "model.decoder_num_heads=16"]


def test_analytic_flops_match_the_spec_for_vit_b():
    """SPEC §5: MAE ViT-B/16 forward 19.6 GFLOPs, training 58.7 GFLOPs per image."""
    cfg = load_config(None, VIT_B)
    assert vit_mae_forward_flops(cfg) / 1e9 == pytest.approx(19.56, abs=0.01)
    assert train_flops_per_image(cfg) / 1e9 == pytest.approx(58.7, abs=0.05)


@pytest.mark.parametrize("overrides", [
    [],
    ["method=emae", "mask.type=parallel"],
    ["model.img_size=[16,12]", "mask.ratio=0.6", "model.mlp_ratio=2.5"],
    ["method=emae", "mask.type=parallel", "mask.ratio=0.8", "model.img_size=[12,16]"],  # 12 patches, K=5
])
def test_analytic_flops_equal_pytorch_count(overrides):
    """Every matmul of a real forward (attention spelled out by the math backend) is in the formula."""
    cfg = tiny_config(*overrides)
    model = build_model(cfg)
    imgs = torch.randn(3, 3, *cfg.model.image_size)
    assert counted_forward_flops(model, imgs) == vit_mae_forward_flops(cfg)


def test_fused_optimizer_on_cpu_matches_the_reference_adamw():
    """The engine's AdamW uses the fused kernel on CPU; with the same gradients, three steps match torch's
    per-tensor AdamW (same groups: decay and no-decay). Gradients are fixed random tensors, not a loss:
    attention's key bias has a zero true gradient, so from a real loss Adam would amplify rounding noise."""
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg)
    ref = copy.deepcopy(model)
    opt = build_optimizer(model, cfg.train, 1e-3)
    assert opt.defaults["fused"] is True
    ref_opt = build_optimizer(ref, cfg.train, 1e-3)
    for group in ref_opt.param_groups:
        group["fused"], group["foreach"] = None, False
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(model.parameters(), ref.parameters()):
            if a.requires_grad:
                a.grad = torch.randn(a.shape, generator=g)
                b.grad = a.grad.clone()
        opt.step()
        ref_opt.step()
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_decoded_cache_gives_the_same_batches(tmp_path):
    write_images(tmp_path / "imgs", 10, size=20)
    (tmp_path / "imgs" / "zz-broken.jpg").write_bytes(b"not a jpeg")
    batches = {}
    for cache in (False, True):
        cfg = tiny_config(f"data.path={tmp_path / 'imgs'}", f"data.cache={str(cache).lower()}",
                          "train.batch_size=4", "data.num_workers=0")
        loader = pretrain_loader(cfg, image_source(cfg))
        loader.sampler.set_epoch(1)
        batches[cache] = list(loader)
    for (a, _, bad_a), (b, _, bad_b) in zip(batches[False], batches[True]):
        assert torch.equal(a, b) and bad_a == bad_b


def test_tiny_flops_are_what_the_formula_says():
    """A hand count for the tiny config: catches a formula that is consistently wrong in both places."""
    cfg = tiny_config()
    d, dd, p2c = 32, 32, 48  # widths, pixels per patch
    enc_tokens, dec_tokens = 4 + 1, 16 + 1
    block = lambda n, w: 2 * (4 * n * w * w + 2 * n * w * 4 * w + 2 * n * n * w)  # noqa: E731
    expected = (2 * 16 * p2c * d + 2 * block(enc_tokens, d) + 2 * enc_tokens * d * dd + block(dec_tokens, dd)
                + 2 * dec_tokens * dd * p2c)
    assert TINY and vit_mae_forward_flops(cfg) == expected


def test_benchmark_runs_the_real_loop_and_keeps_nothing(tmp_path, monkeypatch, capsys):
    import json

    from emae.cli.main import main

    monkeypatch.chdir(tmp_path)
    write_images(tmp_path / "imgs", 12, size=20)
    argv = ["pretrain", "--benchmark", "3", "--benchmark-warmup", "1", "--no-progress", "--data",
            str(tmp_path / "imgs"), *TINY, "train.batch_size=4", "data.num_workers=0"]
    assert main(argv) == 0
    line, js = capsys.readouterr().out.strip().splitlines()[-2:]
    report = json.loads(js)
    assert line.startswith("benchmark: 3 steps") and report["steps"] == 3
    assert report["img_per_s"] > 0 and 0 <= report["data_wait_share"] < 1 and report["peak_rss_mib"] > 0
    assert report["train_gflops_per_image"] == pytest.approx(3 * vit_mae_forward_flops(tiny_config()) / 1e9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # no run folder written


@pytest.mark.slow
def test_compiled_step_matches_eager(tmp_path):
    """train.compile=true runs the same model: the first step's loss and the checkpoint keys agree with eager."""
    from emae.engine import load_checkpoint, pretrain, read_log

    write_images(tmp_path / "imgs", 8, size=20)
    losses, keys = {}, {}
    for flag in ("false", "true"):
        cfg = tiny_config(f"data.path={tmp_path / 'imgs'}", f"output_dir={tmp_path / flag}", f"train.compile={flag}",
                          "train.batch_size=4", "train.max_steps=2", "train.log_every=1", "data.num_workers=0",
                          "train.num_vis=0")
        result = pretrain(cfg, progress=False)
        losses[flag] = [r["loss"] for r in read_log(tmp_path / flag / "log.jsonl") if r["type"] == "train"]
        keys[flag] = sorted(load_checkpoint(result.checkpoint)["model"])
    assert keys["true"] == keys["false"]
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)


@pytest.mark.parametrize("name,precision,tf32,peak", [
    ("NVIDIA H100 PCIe", "bf16", False, 756.0), ("NVIDIA H100 80GB HBM3", "bf16", False, 989.0),
    ("NVIDIA H100 80GB HBM3", "fp32", True, 494.0), ("NVIDIA H100 80GB HBM3", "fp32", False, 67.0),
    ("Tesla V100-SXM2-16GB", "bf16", False, None), ("Some Future GPU", "bf16", False, None),
])
def test_device_peak_lookup(monkeypatch, name, precision, tf32, peak):
    from emae.engine.flops import peak_tflops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    assert peak_tflops(torch.device("cuda"), precision) == peak
    assert peak_tflops(torch.device("cpu"), precision) is None
