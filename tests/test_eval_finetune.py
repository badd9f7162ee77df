"""Fine-tuning: layer-decay groups follow MAE's formula, position embeddings are resampled, the CLI end to end."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from safetensors.torch import load_file

import emae
from emae.cli.main import main
from emae.engine import read_log
from emae.eval.backbone import build_vit
from emae.config import FinetuneTrainConfig
from emae.eval.common import eval_tf
from emae.eval.data import eval_sources, loader
from emae.eval.finetune import classifier, evaluate, optimizer
from emae.interop.load import random_checkpoint, read_checkpoint

from evalkit import labelled_data, save_emae_checkpoint
from helpers import tb_scalars, tiny_config


def layer_id(name: str, depth: int) -> int:
    """SPEC §1: cls, pos and patch_embed 0; block i -> i+1; the rest depth+1."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed")):
        return 0
    if m := re.match(r"blocks\.(\d+)\.", name):
        return int(m.group(1)) + 1
    return depth + 1


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_layer_decay_groups_follow_the_formula(pool):
    depth, decay = 3, 0.5
    loaded = random_checkpoint(tiny_config(f"model.depth={depth}").model)
    model, _ = classifier(loaded, 5, FinetuneTrainConfig(pool=pool, layer_decay=decay), None)
    opt = optimizer(model, 1e-3, FinetuneTrainConfig(), decay)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            assert group["lr_scale"] == pytest.approx(decay ** (depth + 1 - layer_id(name, depth))), name
            no_decay = p.ndim <= 1 or name in ("cls_token", "pos_embed")
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert seen == set(names.values())
    assert opt.defaults["betas"] == (0.9, 0.999)
    head = "fc_norm.weight" if pool == "avg" else "norm.weight"
    assert head in seen and "head.weight" in seen
    assert torch.all(model.head.bias == 0) and model.head.weight.std().item() < 1e-4  # trunc_normal std 2e-5


def test_position_embedding_is_resampled_for_another_resolution():
    loaded = random_checkpoint(tiny_config().model)  # 16 px, patch 4: a 4x4 grid
    same = build_vit(loaded)
    assert torch.equal(same.pos_embed, loaded.state["encoder.pos_embed"])
    big = build_vit(loaded, img_size=(24, 32))
    assert big.pos_embed.shape == (1, 1 + 6 * 8, 32)
    assert torch.equal(big.pos_embed[:, 0], loaded.state["encoder.pos_embed"][:, 0])  # the cls entry is kept
    assert big.forward_features(torch.randn(1, 3, 24, 32)).shape == (1, 49, 32)


@pytest.mark.parametrize("method", [[], ["method=umae", "mask.type=uniform"]], ids=["mae", "umae-vit"])
def test_timm_vit_gives_the_emae_encoder_features(tmp_path, method):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt", *method)  # UM-MAE's ViT has a secondary-mask token too
    mae = emae.load(ckpt)
    vit = build_vit(read_checkpoint(ckpt)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (vit.forward_features(x) - mae.extract_features(x, pool="none")).abs().max() < 1e-5
    assert main(["export", str(ckpt), "--to", "timm", "--output", str(tmp_path / "vit.safetensors")]) == 0
    spec = json.loads((tmp_path / "vit.json").read_text())  # the side file, as a timm user loads it
    timm_vit = timm.create_model(spec["model_name"], **spec["kwargs"]).eval()
    missing, unexpected = timm_vit.load_state_dict(load_file(tmp_path / "vit.safetensors"), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
    with torch.no_grad():
        assert torch.equal(timm_vit.forward_features(x), vit.forward_features(x))
    transformers = pytest.importorskip("transformers")
    assert main(["export", str(ckpt), "--to", "hf", "--output", str(tmp_path / "hf"), "--encoder-only"]) == 0
    hf = transformers.ViTMAEModel.from_pretrained(tmp_path / "hf", mask_ratio=0.0).eval()
    noise = torch.arange(16, dtype=torch.float).expand(2, -1)  # the identity order: every patch, in place
    with torch.no_grad():
        assert (hf(pixel_values=x, noise=noise).last_hidden_state - vit.forward_features(x)).abs().max() < 1e-5


def test_cli_finetune_end_to_end(tmp_path, capsys):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    data = labelled_data(tmp_path / "d")
    out = tmp_path / "ft"
    argv = ["finetune", str(ckpt), "--data", str(data), "--output", str(out), "--epochs", "2", "--batch-size", "4",
            "--warmup-epochs", "0.5", "--ema", "0.9", "--log-every", "1", "--no-progress"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("finetune: top-1 ") and "\n" not in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"top1", "top5", "best_top1", "best_epoch", "best_weights"} <= set(metrics) and metrics["epochs"] == 2
    records = read_log(out / "log.jsonl")
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and "ema_val_top1" in epochs[0] and "val_top5" in epochs[0]
    steps = [r for r in records if r["type"] == "train"]
    assert len(steps) == 6 and steps[0]["lr"] < steps[2]["lr"]  # warmup
    tb = tb_scalars(out / "tb")  # TensorBoard has every number of the log, at its step
    assert tb["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in steps]
    assert tb["epoch/val_top1"] == [(r["step"], pytest.approx(r["val_top1"])) for r in epochs]
    assert {"train/lr", "epoch/ema_val_top1", "epoch/train_loss", "summary/best_top1"} <= set(tb)
    clf = emae.load(out / "best.pt")  # a classifier: the timm ViT with its head, pooling as trained
    loaded = read_checkpoint(out / "best.pt")
    val = loader(eval_sources(data / "train", data / "val", 3)[1], eval_tf(loaded), 4)
    assert evaluate(clf, val, torch.device("cpu"), "fp32")["top1"] == metrics["best_top1"]
    assert main(["plot", str(out)]) == 0 and (out / "curves.png").stat().st_size > 5000


def test_error_head_class_count_mismatch(tmp_path, capsys):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    two = labelled_data(tmp_path / "two")
    common = ["--epochs", "1", "--batch-size", "4", "--no-progress", "--mixup", "0", "--cutmix", "0", "--aa", "none"]
    assert main(["finetune", str(ckpt), "--data", str(two), "--output", str(tmp_path / "ft"), *common]) == 0
    three = labelled_data(tmp_path / "three", classes=("a", "b", "c"))
    capsys.readouterr()
    assert main(["finetune", str(tmp_path / "ft" / "best.pt"), "--data", str(three), "--output",
                 str(tmp_path / "ft3"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emae: error: ") and "\n" not in err
    assert "classifier head for 2 classes but the data has 3 class folders; pass --new-head" in err
    assert main(["finetune", str(tmp_path / "ft" / "best.pt"), "--data", str(three), "--output",
                 str(tmp_path / "ft3"), "--new-head", *common]) == 0


def test_cli_finetune_seeds(tmp_path, capsys):
    """--seeds 0 1 on a random encoder: a run per seed in its own folder, the mean and sample std of their scores."""
    data = labelled_data(tmp_path / "d", n_val=30)
    out = tmp_path / "ft"
    argv = ["finetune", "random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--img-size", "16",
            "--data", str(data), "--output", str(out), "--epochs", "1", "--batch-size", "4", "--mixup", "0",
            "--cutmix", "0", "--aa", "none", "--no-progress", "--seeds", "0", "1"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    m = json.loads((out / "metrics.json").read_text())
    runs = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert m["per_seed"] == runs and m["seeds"] == [0, 1]
    assert all((out / f"seed-{s}" / "best.pt").is_file() for s in (0, 1))
    a, b = (r["top1"] for r in runs)
    assert a != b and m["top1"] == pytest.approx((a + b) / 2) and m["std"]["top1"] == pytest.approx(abs(a - b) / 2**0.5)
    assert [r["options"]["seed"] for r in runs] == [0, 1] and "best_checkpoint" not in m
    assert line.startswith(f"finetune: top-1 {m['top1']:.2f} ± {m['std']['top1']:.2f}% ") and "2 seeds" in line


@pytest.mark.parametrize("stop", [5, 6], ids=["mid-epoch", "epoch-end"])
def test_finetune_resumes_exactly(tmp_path, stop):
    """A fine-tune stopped (mid-epoch, or at an epoch's end, after its evaluation) and resumed gives the parameters,
    EMA and metrics of the run straight through (loader in the main process)."""
    data = labelled_data(tmp_path / "d", n_train=12, n_val=4)
    common = ["finetune", "random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--img-size", "16",
              "--data", str(data), "--epochs", "3", "--batch-size", "4", "--ema", "0.9", "--no-progress",
              "--lr", "1e-3"]
    assert main([*common, "--output", str(tmp_path / "a")]) == 0
    assert main([*common, "--output", str(tmp_path / "b"), f"train.stop_after_steps={stop}"]) == 0
    assert main(["finetune", "--output", str(tmp_path / "b"), "--resume", "auto", "--no-progress"]) == 0
    a, b = (torch.load(next((tmp_path / d).glob("checkpoint-*.pt")), weights_only=True) for d in "ab")
    assert a["global_step"] == b["global_step"] == 9
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert (ma["top1"], ma["best_top1"], ma["best_epoch"]) == (mb["top1"], mb["best_top1"], mb["best_epoch"])
