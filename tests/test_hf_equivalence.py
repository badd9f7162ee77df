"""emae's MAE against Hugging Face ``ViTMAEForPreTraining`` with the same weights, images and noise (fp32)."""

from __future__ import annotations

import sys

import pytest
import torch

import emae
from emae.errors import ConfigError, EmaeError
from emae.interop.hf_equivalence import compare, equivalent_pair
from emae.interop.huggingface import from_hf, state_dict_from_hf, state_dict_to_hf, to_hf
from emae.models.pos_embed import sincos_2d

transformers = pytest.importorskip("transformers")

TOL = 1e-5

CONFIGS = {
    "tiny": [
        "model.arch=vit_tiny", "model.depth=2", "model.img_size=32", "model.patch_size=4",
        "model.decoder_embed_dim=64", "model.decoder_depth=2", "model.decoder_num_heads=4",
    ],
    "vit_base": [
        "model.arch=vit_base", "model.img_size=224", "model.patch_size=16",
        "model.decoder_embed_dim=512", "model.decoder_depth=8", "model.decoder_num_heads=16",
    ],
}


def make_pair(name: str, norm_pix: bool) -> tuple[emae.MaskedAutoencoder, torch.nn.Module]:
    return equivalent_pair(emae.load_config(None, [*CONFIGS[name], f"model.norm_pix_loss={str(norm_pix).lower()}"]))


@pytest.fixture(scope="module")
def pairs():
    cache: dict = {}

    def get(name: str, norm_pix: bool):
        if (name, norm_pix) not in cache:
            cache[(name, norm_pix)] = make_pair(name, norm_pix)
        return cache[(name, norm_pix)]

    return get


@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm_pix", "raw_pix"])
@pytest.mark.parametrize("name", ["tiny", "vit_base"])
def test_same_loss_pred_and_mask(pairs, name, norm_pix):
    model, hf = pairs(name, norm_pix)
    assert hf.config.layer_norm_eps == 1e-6 and hf.config.norm_pix_loss == norm_pix and not hf.training
    diff = compare(model, hf)
    assert diff["mask_equal"] and diff["ids_restore_equal"] and diff["pred_shape_equal"]
    assert diff["max_pred_diff"] < TOL
    assert diff["loss_diff"] < TOL


@pytest.mark.parametrize("name", ["tiny", "vit_base"])
def test_round_trip_state_dict_identical(pairs, name):
    model, hf = pairs(name, True)
    back = from_hf(hf)
    ours, theirs = model.state_dict(), back.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert back.loss.norm_pix and back.mask_ratio == model.mask_ratio and not back.training


def test_position_embeddings_copied_and_match_sincos(pairs):
    model, hf = pairs("tiny", True)
    enc = hf.vit.embeddings.position_embeddings
    dec = hf.decoder.decoder_pos_embed
    assert torch.equal(enc, model.encoder.pos_embed) and torch.equal(enc, sincos_2d(192, (8, 8)))
    assert torch.equal(dec, model.decoder.pos_embed)
    assert not enc.requires_grad and not dec.requires_grad


def test_hf_checkpoint_layout_4x_round_trips(pairs):
    model, _ = pairs("tiny", True)
    sd = model.state_dict()
    legacy = state_dict_to_hf(sd, legacy=True)
    assert "vit.encoder.layer.1.attention.attention.query.weight" in legacy
    assert "decoder.decoder_layers.0.intermediate.dense.bias" in legacy
    back = state_dict_from_hf(legacy)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_non_square_is_a_config_error():
    cfg = emae.load_config(None, ["model.img_size=[32,16]", "model.depth=1", "model.decoder_depth=1"])
    with pytest.raises(ConfigError, match="square"):
        to_hf(emae.build_model(cfg))


def test_native_hf_eps_warns():
    config = transformers.ViTMAEConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=256, image_size=32,
        patch_size=4, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
        decoder_intermediate_size=128,
    )  # HF's default layer_norm_eps is 1e-12
    with pytest.warns(UserWarning, match="eps"):
        model = from_hf(transformers.ViTMAEForPreTraining(config))
    assert model.encoder.embed_dim == 64 and len(model.decoder.blocks) == 1


def test_missing_transformers_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    cfg = emae.load_config(None, ["model.depth=1", "model.decoder_depth=1"])
    with pytest.raises(EmaeError, match="pip install transformers"):
        to_hf(emae.build_model(cfg))
