"""Linear probing: the converged logistic-regression probe (logreg) and MAE's protocol (BN without affine, LARS)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from emae.cli.main import main
from emae.engine import read_log
from emae.eval.backbone import frozen_encoder
from emae.eval.linprobe import LinearProbe, lars
from emae.eval.logreg import LogRegOptions, logistic_probe
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


def test_standard_probe_runs(tmp_path, capsys):
    ckpt = save_emae_checkpoint(tmp_path / "c.pt")
    data = labelled_data(tmp_path / "d")
    out = tmp_path / "lin"
    assert main(["linprobe", str(ckpt), "--data", str(data), "--output", str(out), "--protocol", "mae", "--epochs", "2",
                 "--batch-size", "4", "--warmup-epochs", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("linprobe (mae): top-1 ")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "mae" and metrics["epochs"] == 2 and metrics["train_images"] == 12
    epochs = [r for r in read_log(out / "log.jsonl") if r["type"] == "epoch"]
    assert metrics["top1"] == epochs[-1]["val_top1"]  # the headline is the last epoch, not the best one on val
    assert metrics["best_top1_selected_on_val"] == max(r["val_top1"] for r in epochs)
    assert main(["linprobe", str(ckpt), "--data", str(data), "--output", str(out), "--protocol", "mae",
                 "--batch-size", "4"]) == 2  # results exist
    assert "--overwrite" in capsys.readouterr().err


# ------------------------------------------------------------------ logreg: a probe fitted to convergence


def blobs(n: int, dim: int, classes: int, spread: float, seed: int, offset: float = 0.0):
    """Gaussian classes around fixed random centres (the same centres for every seed)."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 2
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    return centres[y] + spread * torch.randn(n, dim, generator=g) + offset, y


def test_logreg_reaches_100_on_separable_features():
    x, y = blobs(300, 16, 4, 0.05, 0, offset=50.0)  # far from standardised: the probe standardises
    xt, yt = blobs(200, 16, 4, 0.05, 1, offset=50.0)
    m = logistic_probe(x, y, xt, yt)
    assert m["top1"] == 100.0 and m["converged"] and m["iterations"] > 1


def independent_optimum(x, y, xt, yt, c: float) -> tuple[float, float]:
    """The same objective (mean cross-entropy + ||W||^2 / (2 C n), bias free) minimised by torch's full-batch
    L-BFGS in float64 on the same standardised features: (test top-1, objective)."""
    mean, std = x.mean(0), x.std(0, unbiased=False)
    x, xt = ((x - mean) / std).double(), ((xt - mean) / std).double()
    w = torch.zeros(x.shape[1], int(y.max()) + 1, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(int(y.max()) + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=5000, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + (w ** 2).sum() / (2 * c * x.shape[0])
        loss.backward()
        return loss

    opt.step(objective)
    final = objective().item()
    with torch.no_grad():
        return 100.0 * ((xt @ w + b).argmax(1) == yt).double().mean().item(), final


def test_logreg_matches_an_independent_optimum():
    x, y = blobs(600, 12, 3, 3.0, 0)  # overlapping classes: the answer depends on fitting to the optimum
    xt, yt = blobs(3000, 12, 3, 3.0, 1)
    m = logistic_probe(x, y, xt, yt, LogRegOptions(c_grid=(0.05,)))
    top1, best = independent_optimum(x, y, xt, yt, 0.05)
    assert m["converged"] and 20 < m["top1"] < 95
    assert abs(m["top1"] - top1) <= 0.5
    h = m["head"]  # the probe's own objective at its solution equals the independent minimum
    z = ((x.double() - h["mean"]) / h["std"]) @ h["weight"].T + h["bias"]
    ours = F.cross_entropy(z, y) + (h["weight"] ** 2).sum() / (2 * 0.05 * x.shape[0])
    assert abs(ours.item() - best) < 1e-6 * best


def test_logreg_unconverged_fit_is_reported():
    x, y = blobs(600, 12, 3, 3.0, 0)
    m = logistic_probe(x, y, x, y, LogRegOptions(c_grid=(10.0,), max_iter=2))
    assert not m["converged"] and m["iterations"] == 2


def test_logreg_chooses_c_on_the_training_set_only():
    x, y = blobs(400, 12, 3, 3.0, 0)
    xt, yt = blobs(300, 12, 3, 3.0, 1)
    a = logistic_probe(x, y, xt, yt)
    b = logistic_probe(x, y, xt, yt[torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))])
    assert a["holdout_top1"] == b["holdout_top1"] and a["C"] == b["C"]  # test labels cannot steer the choice
    assert len(a["holdout_top1"]) == len(LogRegOptions().c_grid)
    x2 = x.clone()
    x2[:5] += 100  # the training set does steer it (five wild points change the held-out scores)
    assert logistic_probe(x2, y, xt, yt)["holdout_top1"] != a["holdout_top1"]


def test_logreg_cli_is_independent_of_batch_size_and_workers(tmp_path, capsys):
    data = labelled_data(tmp_path / "d", classes=("a", "b", "c"), n_train=30, n_val=12)
    results = []
    for batch, workers in ((4, 0), (16, 2)):
        out = tmp_path / f"lin-{batch}"
        assert main(["linprobe", "random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--img-size", "16",
                     "--data", str(data), "--output", str(out), "--batch-size", str(batch), "--workers", str(workers),
                     "--pool", "avg", "--no-progress"]) == 0
        line = capsys.readouterr().out
        assert line.startswith("linprobe (logreg): top-1 ") and line.count("\n") == 1 and "converged in" in line
        results.append(json.loads((out / "metrics.json").read_text()))
    a, b = results
    assert a["top1"] == b["top1"] and a["C"] == b["C"] and a["holdout_top1"] == b["holdout_top1"]
    assert a["protocol"] == "logreg" and a["converged"] and a["train_images"] == 30 and a["test_images"] == 12


def test_logreg_learns_separable_colours_through_the_cli(tmp_path, capsys):
    data = colour_data(tmp_path / "d", n_train=20)
    assert main(["linprobe", "random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--img-size", "16",
                 "--data", str(data), "--output", str(tmp_path / "lin"), "--fast", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("linprobe (logreg): top-1 100.00%")  # --fast: an alias
    head = torch.load(tmp_path / "lin" / "head.pt", weights_only=True)
    assert head["format"] == "emae-logreg-head" and head["mean"].shape == (32,)


def test_logreg_cli_errors(tmp_path, capsys):
    data = labelled_data(tmp_path / "d")
    base = ["linprobe", "random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--data", str(data),
            "--no-progress", "--output", str(tmp_path / "o")]
    for extra, message in ((["--epochs", "3"], "--epochs (train.epochs) applies to --protocol mae only"),
                           (["--protocol", "mae", "--C", "1"], "--C applies to --protocol logreg only"),
                           (["--fast", "--protocol", "mae"], "--fast is an alias of --protocol logreg"),
                           (["--holdout", "1.5"], "--holdout (probe.holdout): 1.5 is not allowed; must be between"),
                           (["--C", "0"], "--C (probe.c_grid): [0.0] is not allowed; every C must be positive"),
                           (["--protocol", "mae", "--batch-size", "64"], "12 training images give no full batch of 64")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()  # every check comes before any work


def test_logreg_seeds_vary_a_random_encoder_and_report_mean_and_std(tmp_path, capsys):
    data = labelled_data(tmp_path / "d", classes=("a", "b", "c"), n_train=30, n_val=12)
    out = tmp_path / "lin"
    assert main(["linprobe", "random", "--embed-dim", "32", "--depth", "2", "--num-heads", "2", "--img-size", "16",
                 "--data", str(data), "--output", str(out), "--pool", "avg", "--seeds", "0", "1", "--C", "1",
                 "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("linprobe (logreg): top-1 ") and " ± " in line and "2 seeds" in line
    m = json.loads((out / "metrics.json").read_text())
    per = [json.loads((out / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert [p["checkpoint"] for p in per] == ["random:0", "random:1"]
    assert m["top1"] == pytest.approx((per[0]["top1"] + per[1]["top1"]) / 2)
    assert m["std"]["top1"] == pytest.approx(abs(per[0]["top1"] - per[1]["top1"]) / 2 ** 0.5)
