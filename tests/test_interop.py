"""Checkpoints in and out: official MAE .pth (encoder-only and full), timm, Hugging Face, safetensors, emae."""

from __future__ import annotations

import json

import pytest
import timm
import torch

import emae
from emae.cli.main import main
from emae.engine import read_log
from emae.errors import CheckpointError, ConfigError
from emae.interop.export import export
from emae.interop.load import build_mae, init_from, read_checkpoint
from emae.interop.official import from_official, to_official
from emae.models import ViTEncoder

from evalkit import SMALL, labelled_data, perturbed_model, save_emae_checkpoint
from helpers import tiny_config

TOL = 1e-5


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A full official-layout MAE checkpoint ({"model": state dict} with decoder_* keys) and its source model."""
    model = perturbed_model()
    path = tmp_path_factory.mktemp("official") / "mae_full.pth"
    torch.save({"model": to_official(model.state_dict()), "epoch": 7}, path)
    return path, model


def images(model, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, *model.encoder.patch_embed.img_size, generator=torch.Generator().manual_seed(1))


def test_official_keys_map_to_emae_names(official):
    path, model = official
    sd = torch.load(path, weights_only=True)["model"]
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "norm.weight",
            "decoder_embed.weight", "mask_token", "decoder_pos_embed", "decoder_blocks.0.mlp.fc1.weight",
            "decoder_norm.bias", "decoder_pred.weight"} <= set(sd)
    ours, extras = from_official(sd)
    assert not extras and ours.keys() == model.state_dict().keys()
    assert ours["decoder.blocks.0.mlp.fc1.weight"] is sd["decoder_blocks.0.mlp.fc1.weight"]


def test_dimensions_are_inferred_from_the_state_dict(official):
    m = read_checkpoint(official[0]).config.model
    assert (m.embed_dim, m.depth, m.num_heads, m.img_size, m.patch_size, m.in_chans) == (192, 2, 3, 16, 4, 3)
    assert (m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads, m.mlp_ratio) == (64, 1, 2, 4.0)


def test_official_full_to_emae_to_timm_and_hf_same_features(official, tmp_path):
    """The round trip of the issue: official layout -> emae -> timm and Hugging Face, same tokens within 1e-5."""
    transformers = pytest.importorskip("transformers")
    path, source = official
    model = emae.load(path)
    assert isinstance(model, emae.MaskedAutoencoder) and not model.training
    x = images(model)
    ours = model.extract_features(x, pool="none")
    assert (ours - source.extract_features(x, pool="none")).abs().max() < TOL

    loaded = read_checkpoint(path)
    export(loaded, "timm", tmp_path / "vit.pth")
    spec = json.loads((tmp_path / "vit.json").read_text())
    vit = timm.create_model(spec["model_name"], **spec["kwargs"]).eval()
    missing, unexpected = vit.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
    with torch.no_grad():
        assert (vit.forward_features(x) - ours).abs().max() < TOL

    export(loaded, "hf", tmp_path / "hf")
    hf = transformers.ViTMAEModel.from_pretrained(tmp_path / "hf", mask_ratio=0.0).eval()
    noise = torch.arange(model.encoder.num_patches, dtype=torch.float).expand(x.shape[0], -1)  # identity order
    with torch.no_grad():
        theirs = hf(pixel_values=x, noise=noise).last_hidden_state
    assert (theirs - ours).abs().max() < TOL
    full = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf")  # the decoder came along
    assert full.config.decoder_hidden_size == 64
    back = emae.load(tmp_path / "hf")
    assert (back.extract_features(x, pool="none") - ours).abs().max() < TOL


def test_encoder_only_official_checkpoint(official, tmp_path):
    path, source = official
    sd = {k: v for k, v in torch.load(path, weights_only=True)["model"].items() if not k.startswith("decoder_")}
    torch.save({"model": sd}, tmp_path / "mae_pretrain_vit.pth")  # like mae_pretrain_vit_base.pth (+ mask_token)
    enc = emae.load(tmp_path / "mae_pretrain_vit.pth")
    assert isinstance(enc, ViTEncoder)
    x = images(source)
    assert (enc.extract_features(x) - source.extract_features(x)).abs().max() < TOL
    with pytest.raises(CheckpointError, match="no decoder"):
        build_mae(read_checkpoint(tmp_path / "mae_pretrain_vit.pth"))  # e.g. for visualize
    transformers = pytest.importorskip("transformers")
    export(read_checkpoint(tmp_path / "mae_pretrain_vit.pth"), "hf", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["ViTMAEModel"]
    hf = transformers.ViTMAEModel.from_pretrained(tmp_path / "hf", mask_ratio=0.0).eval()
    noise = torch.arange(source.encoder.num_patches, dtype=torch.float).expand(x.shape[0], -1)
    with torch.no_grad():
        assert (hf(pixel_values=x, noise=noise).last_hidden_state[:, 0] - source.extract_features(x)).abs().max() < TOL
    assert isinstance(emae.load(tmp_path / "hf"), ViTEncoder)


@pytest.mark.parametrize("container", ["raw", "state_dict"])
def test_timm_state_dict_is_recognised(official, tmp_path, container):
    path, source = official
    sd = {k: v for k, v in to_official(source.state_dict()).items() if not k.startswith(("decoder_", "mask_"))}
    vit = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, num_classes=0)
    vit.load_state_dict(sd)
    obj = vit.state_dict() if container == "raw" else {"state_dict": vit.state_dict(), "epoch": 3}
    torch.save(obj, tmp_path / "timm.pth")
    loaded = read_checkpoint(tmp_path / "timm.pth")
    assert loaded.source == "timm" and not loaded.has_decoder
    x = images(source)
    assert (emae.load(tmp_path / "timm.pth").extract_features(x) - source.extract_features(x)).abs().max() < TOL


def test_safetensors_round_trip_keeps_the_config(tmp_path):
    overrides = [*SMALL, "model.img_size=[16,24]"]  # non-square: not inferable, so it comes from the metadata
    model = perturbed_model(*overrides)
    ckpt = tmp_path / "ck.pt"
    config = emae.load_config(None, overrides).to_dict()
    torch.save({"format": "emae-checkpoint", "version": 1, "config": config, "model": model.state_dict()}, ckpt)
    assert main(["export", str(ckpt), "--to", "safetensors", "--output", str(tmp_path / "enc.safetensors")]) == 0
    enc = emae.load(tmp_path / "enc.safetensors")
    assert isinstance(enc, ViTEncoder) and enc.grid == (4, 6)
    x = torch.randn(2, 3, 16, 24)
    assert (enc.extract_features(x, pool="none") - model.extract_features(x, pool="none")).abs().max() < TOL
    # timm reads the same file
    from safetensors.torch import load_file

    vit = timm.create_model("vit_tiny_patch16_224", img_size=(16, 24), patch_size=4, depth=2, num_classes=0)
    vit.load_state_dict(load_file(tmp_path / "enc.safetensors"))


def test_emae_checkpoint_loads_as_mae(tmp_path):
    path = save_emae_checkpoint(tmp_path / "c.pt")
    model = emae.load(path)
    assert isinstance(model, emae.MaskedAutoencoder) and model.extract_features(torch.randn(1, 3, 16, 16)).shape == (1, 32)


def test_init_continues_from_official_full_checkpoint(official, tmp_path):
    path, source = official
    model = emae.build_model(emae.load_config(None, SMALL))
    summary = init_from(model, path)
    assert summary["init_decoder"] and summary["init_source"] == "official"
    for key, t in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], t), key
    with pytest.raises(ConfigError, match="set model"):
        init_from(emae.build_model(tiny_config()), path)  # width 32 model, width 192 checkpoint


def test_pretrain_cli_init(official, tmp_path, capsys):
    path, _ = official
    data = labelled_data(tmp_path / "d")
    argv = ["pretrain", "--data", str(data / "train"), "--output", str(tmp_path / "run"), "--init", str(path),
            "--no-progress", *SMALL, "train.batch_size=4", "train.stop_after_steps=1", "data.num_workers=0",
            "train.num_vis=0"]
    assert main(argv) == 0, capsys.readouterr().err
    start = read_log(tmp_path / "run" / "log.jsonl")[0]
    assert start["init"] == str(path) and start["init_source"] == "official"


def test_unknown_formats_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "noise.bin").write_bytes(b"\x00\x01garbage" * 50)
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    (tmp_path / "folder").mkdir()
    for bad, words in (("noise.bin", "is not an emae checkpoint, an official MAE .pth"),
                       ("other.pth", "not a ViT emae recognises"), ("folder", "without config.json"),
                       ("missing.pth", "does not exist")):
        with pytest.raises(CheckpointError, match=words):
            read_checkpoint(tmp_path / bad)
        data = labelled_data(tmp_path / "d") if not (tmp_path / "d").exists() else tmp_path / "d"
        assert main(["knn", str(tmp_path / bad), "--data", str(data), "--output", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("emae: error: ") and "\n" not in err and words in err


def test_export_cli_timm(tmp_path, capsys):
    path = save_emae_checkpoint(tmp_path / "c.pt")
    assert main(["export", str(path), "--to", "timm", "--output", str(tmp_path / "x" / "vit.safetensors")]) == 0
    assert "-> timm" in capsys.readouterr().out
    spec = json.loads((tmp_path / "x" / "vit.json").read_text())
    vit = timm.create_model(spec["model_name"], pretrained=True, num_classes=5, **spec["kwargs"],
                            pretrained_cfg_overlay={"file": str(tmp_path / "x" / "vit.safetensors")})
    assert vit.head.out_features == 5


def test_export_hf_encoder_only_loads_into_vitmaemodel_cleanly(tmp_path, capsys):
    """A full checkpoint's hf folder loads into ViTMAEModel with the decoder's keys left over ("unexpected");
    --encoder-only writes exactly the encoder, so nothing is left over."""
    transformers = pytest.importorskip("transformers")
    path = save_emae_checkpoint(tmp_path / "c.pt")
    assert main(["export", str(path), "--to", "hf", "--output", str(tmp_path / "full")]) == 0
    assert main(["export", str(path), "--to", "hf", "--output", str(tmp_path / "enc"), "--encoder-only"]) == 0
    _, info = transformers.ViTMAEModel.from_pretrained(tmp_path / "full", output_loading_info=True)
    assert any(k.startswith("decoder.") for k in info["unexpected_keys"])
    enc, info = transformers.ViTMAEModel.from_pretrained(tmp_path / "enc", output_loading_info=True)
    assert not info["unexpected_keys"] and not info["missing_keys"]
    assert json.loads((tmp_path / "enc" / "config.json").read_text())["architectures"] == ["ViTMAEModel"]
    assert main(["export", str(path), "--to", "timm", "--output", str(tmp_path / "t.pth"), "--encoder-only"]) == 2
    assert "--encoder-only is for --to hf" in capsys.readouterr().err
