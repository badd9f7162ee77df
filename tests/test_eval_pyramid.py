"""Frozen-feature evaluation (k-NN, linear probe) of pyramid encoders (UM-MAE Swin, SimMIM PVT), and fine-tuned
pyramid classifiers (``best.pt``) loaded back."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import emae
from emae.cli.main import main
from emae.config import EvalDataConfig, EvalRunConfig, FinetuneTrainConfig
from emae.eval.common import eval_tf, frozen_features
from emae.eval.data import labelled_images, loader
from emae.interop.load import read_checkpoint
from emae.models import build_pyramid

from evalkit import labelled_data
from helpers import tiny_config
from test_eval_knn import one_line_error
from test_umae import PYR, UMAE, save_checkpoint

SWIN_UMAE = [*UMAE, *PYR, "model.arch=swin_t"]
PVT_SIMMIM = ["method=simmim", "mask.type=random", *PYR, "model.arch=pvt_t"]
PVT_UMAE = [*UMAE, *PYR, "model.arch=pvt_t"]


def reference_encoder(pre: emae.MaskedAutoencoder, method: str):
    """The full-grid encoder built by hand: SimMIM's own encoder; UM-MAE Swin's weights in a window-4 full-grid Swin."""
    if method == "simmim":
        return pre.encoder.eval()
    m = tiny_config(*SWIN_UMAE).model
    assert m.window_size == 2
    enc = build_pyramid(m, compact=False, window_size=4)
    missing, unexpected = enc.load_state_dict(pre.encoder.state_dict(), strict=False)
    assert not missing and not unexpected
    return enc.eval()


@pytest.mark.parametrize("over,method", [(SWIN_UMAE, "umae"), (PVT_SIMMIM, "simmim")], ids=["umae-swin", "simmim-pvt"])
def test_frozen_features_are_the_encoder_on_the_full_grid(tmp_path, over, method):
    pre = save_checkpoint(tmp_path / "ck.pt", *over)
    loaded = read_checkpoint(tmp_path / "ck.pt")
    src = labelled_images(labelled_data(tmp_path / "d", n_train=6) / "train")
    f = frozen_features(loaded, src, None, EvalDataConfig(), EvalRunConfig(batch_size=4), None)
    assert f["train_feats"].shape == (6, 128)  # last stage: 16 x 8 channels, globally average-pooled
    imgs = torch.cat([x for x, _, _ in loader(src, eval_tf(loaded), 4)])
    with torch.no_grad():
        enc = reference_encoder(pre, method)
        direct = torch.cat([enc(x).mean(dim=(1, 2)) for x in imgs.split(4)])
    assert torch.allclose(f["train_feats"], direct, rtol=0, atol=1e-6)
    assert torch.equal(f["train_labels"], torch.tensor(src.labels))


@pytest.mark.parametrize("over", [SWIN_UMAE, PVT_SIMMIM], ids=["umae-swin", "simmim-pvt"])
def test_knn_and_linprobe_cli_on_pyramids(tmp_path, capsys, over):
    save_checkpoint(tmp_path / "ck.pt", *over)
    data = labelled_data(tmp_path / "d", n_train=8, n_val=4)
    cache = tmp_path / "cache"
    common = ["--data", str(data), "--no-progress", "--feature-cache", str(cache), "--batch-size", "4"]
    assert main(["knn", str(tmp_path / "ck.pt"), "--output", str(tmp_path / "knn"), "--k", "3", *common]) == 0
    assert capsys.readouterr().out.startswith("knn: k=3 top-1 ")
    metrics = json.loads((tmp_path / "knn" / "metrics.json").read_text())
    assert metrics["pool"] == "avg"
    feats = {p.name.split("-")[0]: torch.load(p)["features"] for p in cache.glob("*.pt")}
    assert feats["train"].shape == (8, 128) and feats["val"].shape == (4, 128)
    assert main(["linprobe", str(tmp_path / "ck.pt"), "--output", str(tmp_path / "lin"), "--C", "1",
                 "--pool", "avg", *common]) == 0
    assert capsys.readouterr().out.startswith("linprobe (logreg): top-1 ")
    head = torch.load(tmp_path / "lin" / "head.pt")
    assert head["pool"] == "avg" and head["weight"].shape == (1, 128)  # two classes: one logit (scikit-learn)
    assert len(list(cache.glob("*.pt"))) == 2  # linprobe reused knn's features


@pytest.mark.parametrize("command", ["knn", "linprobe"])
def test_cls_pool_on_a_pyramid_is_a_one_line_error(tmp_path, capsys, command):
    save_checkpoint(tmp_path / "ck.pt", *SWIN_UMAE)
    data = labelled_data(tmp_path / "d", n_train=4, n_val=2)
    err = one_line_error(capsys, [command, str(tmp_path / "ck.pt"), "--data", str(data), "--pool", "cls",
                                  "--output", str(tmp_path / "o"), "--no-progress"])
    assert "--pool cls" in err and "swin_t" in err
    assert not (tmp_path / "o").exists()  # refused before any work
    with pytest.raises(emae.errors.ConfigError, match="--pool cls"):
        emae.eval.backbone.frozen_encoder(read_checkpoint(tmp_path / "ck.pt"), "cls")


@pytest.mark.parametrize("over", [SWIN_UMAE, PVT_UMAE], ids=["umae-swin", "umae-pvt"])
def test_finetuned_pyramid_best_pt_loads_back_with_the_same_outputs(tmp_path, monkeypatch, over):
    ft = importlib.import_module("emae.eval.finetune")  # the module (emae.eval.finetune is also a function)

    save_checkpoint(tmp_path / "ck.pt", *over)
    data = labelled_data(tmp_path / "d", n_train=8, n_val=4)
    built = []
    original = ft.classifier
    monkeypatch.setattr(ft, "classifier", lambda *a, **k: built.append(original(*a, **k)) or built[-1])
    # one epoch of 2 steps; a run checkpoint each epoch, best.pt when the best improves
    assert main(["finetune", str(tmp_path / "ck.pt"), "--data", str(data), "--epochs", "1", "--batch-size", "4",
                 "--output", str(tmp_path / "ft"), "--no-progress", "--drop-path", "0.2"]) == 0
    trained = built[0][0].eval()  # one epoch: best.pt holds these weights
    back = emae.load(tmp_path / "ft" / "best.pt")
    assert type(back).__name__ == "PyramidClassifier" and not back.training
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), trained(x))
        pre_logits = trained.forward_head(trained.forward_features(x), pre_logits=True)
    # frozen features of the fine-tuned checkpoint are its pooled features
    frozen = emae.eval.backbone.frozen_encoder(read_checkpoint(tmp_path / "ft" / "best.pt"), None)
    assert type(frozen.model).__name__ == "PyramidClassifier" and frozen.pool == "avg"
    assert torch.equal(frozen(x), pre_logits)
    # fine-tuning it again keeps its head
    loaded = read_checkpoint(tmp_path / "ft" / "best.pt")
    again, _ = ft.classifier(loaded, 2, FinetuneTrainConfig(drop_path=0.0), (32, 32))
    assert torch.equal(again.head.weight, trained.head.weight)


def ft_notes(loaded) -> list[str]:
    return emae.eval.backbone.build_classifier(loaded, 0, "avg", fc_norm=False)[1]


def test_umae_pvt_frozen_features_use_the_finetuning_ratios_and_only_trained_weights(tmp_path):
    """Frozen UM-MAE PVT runs on the full grid with the fine-tuning ratios [8,4,2,1]: the reduction has the same
    weights at any ratio, so every weight is a trained one and the features do not depend on the global seed."""
    save_checkpoint(tmp_path / "ck.pt", *PVT_UMAE)
    loaded = read_checkpoint(tmp_path / "ck.pt")
    torch.manual_seed(1)
    a = emae.eval.backbone.frozen_encoder(loaded, None)
    torch.manual_seed(2)
    b = emae.eval.backbone.frozen_encoder(loaded, "avg")
    assert a.model.encoder.sr_ratios == [8, 4, 2, 1]
    assert ft_notes(loaded) == []  # every weight loads as it is
    x = torch.randn(2, 3, 32, 32)
    assert a.dim == 128 and a(x).shape == (2, 128) and torch.equal(a(x), b(x))
    assert not any(p.requires_grad for p in a.parameters()) and not a.train().training
