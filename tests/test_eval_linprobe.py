"""Linear probing: a frozen encoder in eval mode, a BatchNorm without affine weights, LARS; --fast and standard."""

from __future__ import annotations

import json

import torch

from emae.cli.main import main
from emae.engine import read_log
from emae.eval.backbone import frozen_encoder
from emae.eval.linprobe import LinearProbe, lars
from emae.interop.load import read_checkpoint

from evalkit import colour_data, labelled_data, save_emae_checkpoint


def probe(tmp_path) -> LinearProbe:
    encoder = frozen_encoder(read_checkpoint(save_emae_checkpoint(tmp_path / "c.pt")), pool="cls")
    return LinearProbe(encoder, num_classes=3)


def test_encoder_frozen_in_eval_mode_and_bn_without_affine(tmp_path):
    model = probe(tmp_path)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model.train()
    assert not model.encoder.training and all(not m.training for m in model.encoder.modules())
    assert model.head.training
    bn = model.head[0]
    assert isinstance(bn, torch.nn.BatchNorm1d) and not bn.affine and bn.weight is None and bn.bias is None
    assert bn.eps == 1e-6
    assert model.head[1].weight.std().item() < 0.02 and torch.all(model.head[1].bias == 0)
    opt = lars(model.head, lr=0.1)
    head_before = model.head[1].weight.clone()
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())  # no BN-style drift either
    assert not torch.equal(model.head[1].weight, head_before)
    assert [g["always_adapt"] for g in opt.param_groups] == [True, False]  # LARS adapts the matrix, not the bias


def test_fast_probe_learns_separable_colours(tmp_path, capsys):
    data = colour_data(tmp_path / "d")
    out = tmp_path / "lin"
    argv = ["linprobe", "random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--img-size", "16",
            "--data", str(data), "--output", str(out), "--fast", "--epochs", "30", "--warmup-epochs", "2",
            "--batch-size", "8", "--lr", "0.5", "--no-progress", "--log-every", "4"]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("linprobe (fast): top-1 100.00%") and "\n" not in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["top1"] == 100.0 and metrics["protocol"].startswith("fast")
    records = read_log(out / "log.jsonl")
    epochs = [r for r in records if r["type"] == "epoch"]
    assert len(epochs) == 30 and {"val_top1", "val_top5", "train_loss", "lr"} <= set(epochs[0])
    assert any(r["type"] == "train" for r in records) and records[-1]["type"] == "end"
    assert torch.load(out / "head.pt", weights_only=False)["val_top1"] == 100.0


def test_standard_probe_runs(tmp_path, capsys):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    data = labelled_data(tmp_path / "d")
    out = tmp_path / "lin"
    assert main(["linprobe", str(ckpt), "--data", str(data), "--output", str(out), "--epochs", "2",
                 "--batch-size", "4", "--warmup-epochs", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("linprobe (standard): top-1 ")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "standard" and metrics["epochs"] == 2 and metrics["train_images"] == 12
    assert main(["linprobe", str(ckpt), "--data", str(data), "--output", str(out)]) == 2  # results exist
    assert "--overwrite" in capsys.readouterr().err
