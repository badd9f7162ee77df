"""The MAE model against SPEC §1: positions, initialisation, encoder input, loss, shapes, timm compatibility."""

import numpy as np
import pytest
import timm
import torch

from emae import build_model
from emae.config import load_config
from emae.errors import ConfigError
from emae.losses import pixel_target
from emae.models import VIT_SIZES, encoder_dims
from emae.models.pos_embed import sincos_2d
from emae.patches import patchify, unpatchify


def reference_sincos(dim, gh, gw):
    """The official MAE numpy construction (get_2d_sincos_pos_embed), generalised to gh x gw."""
    def one_d(d, pos):
        omega = np.arange(d // 2, dtype=np.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)))
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


@pytest.mark.parametrize("dim,gh,gw", [(192, 8, 8), (64, 3, 5), (768, 14, 14)])
def test_sincos_matches_official_layout(dim, gh, gw):
    ours = sincos_2d(dim, (gh, gw))[0].numpy()
    np.testing.assert_allclose(ours, reference_sincos(dim, gh, gw), atol=1e-6)
    assert (ours[0] == 0).all()


def test_positions_fixed_and_initialisation(tiny):
    model = build_model(tiny())
    assert not model.encoder.pos_embed.requires_grad and not model.decoder.pos_embed.requires_grad
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            fan_out, fan_in = mod.weight.shape
            bound = (6 / (fan_in + fan_out)) ** 0.5
            assert mod.weight.abs().max() <= bound + 1e-7, name
            assert (mod.bias == 0).all(), name
        if isinstance(mod, torch.nn.LayerNorm):
            assert (mod.weight == 1).all() and (mod.bias == 0).all() and mod.eps == 1e-6
    w = model.encoder.patch_embed.proj.weight
    bound = (6 / (w.shape[0] + w[0].numel())) ** 0.5
    assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.5 * bound  # xavier on the flattened conv
    big = build_model(load_config(None, ["model.arch=vit_small", "model.depth=1"]))
    assert abs(big.encoder.cls_token.std().item() - 0.02) < 0.004
    assert abs(big.decoder.mask_token.std().item() - 0.02) < 0.008


def test_encoder_sees_only_visible_tokens(tiny):
    model = build_model(tiny())
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model.decoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    model(torch.randn(2, 3, 16, 16))
    assert seen[0] == (2, 1 + 4, 32)  # 16 patches, 75% masked: 4 visible + cls
    assert seen[1] == (2, 1 + 16, 32)  # decoder: every position


def test_loss_ignores_visible_patches(tiny):
    model = build_model(tiny())
    imgs = torch.randn(3, 3, 16, 16)
    out = model(imgs, generator=torch.Generator().manual_seed(0))
    pred = out.pred.detach().requires_grad_(True)
    model.loss(pred, out.target, out.mask)["loss"].backward()
    visible = out.mask.mask == 0
    assert (pred.grad[visible] == 0).all()
    assert (pred.grad[~visible].abs().sum(-1) > 0).all()


def test_loss_value_matches_definition(tiny):
    model = build_model(tiny())
    imgs = torch.randn(2, 3, 16, 16)
    out = model(imgs, noise=torch.rand(2, 16))
    t = patchify(imgs, 4)
    t = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True, unbiased=True) + 1e-6) ** 0.5
    per_patch = ((out.pred - t) ** 2).mean(-1)
    expected = (per_patch * out.mask.mask).sum() / out.mask.mask.sum()
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-6)
    raw = pixel_target(imgs, 4, norm_pix=False)
    assert torch.equal(raw, patchify(imgs, 4))


@pytest.mark.parametrize("size,patch,chans", [((32, 48), 8, 3), ((20, 12), 4, 1), ((16, 16), 2, 4)])
def test_non_square_any_patch_any_channels(size, patch, chans):
    cfg = load_config(None, [f"model.img_size=[{size[0]},{size[1]}]", f"model.patch_size={patch}",
                             f"model.in_chans={chans}", "model.depth=1", "model.decoder_depth=1",
                             f"data.mean={[0.5] * chans}", f"data.std={[0.5] * chans}"])
    model = build_model(cfg)
    imgs = torch.randn(2, chans, *size)
    out = model(imgs)
    gh, gw = size[0] // patch, size[1] // patch
    assert model.grid == (gh, gw)
    assert out.pred.shape == (2, gh * gw, patch * patch * chans)
    assert torch.equal(unpatchify(patchify(imgs, patch), patch, (gh, gw), chans), imgs)
    out.loss.backward()


def test_feature_extraction_without_masking(tiny):
    model = build_model(tiny()).eval()
    imgs = torch.randn(2, 3, 16, 16)
    tokens = model.extract_features(imgs, pool="none")
    assert tokens.shape == (2, 1 + 16, 32)
    assert torch.equal(model.extract_features(imgs), tokens[:, 0])
    assert torch.equal(model.extract_features(imgs, pool="mean"), tokens[:, 1:].mean(1))
    with pytest.raises(ConfigError):
        model.extract_features(imgs, pool="max")


def test_named_sizes_and_overrides():
    assert VIT_SIZES["vit_base"] == (768, 12, 12) and VIT_SIZES["vit_huge"] == (1280, 32, 16)
    cfg = load_config(None, ["model.arch=vit_large", "model.depth=2"])
    assert encoder_dims(cfg.model) == (1024, 2, 16)
    model = build_model(load_config(None, ["model.arch=vit_base", "model.img_size=224", "model.patch_size=16",
                                           "model.decoder_embed_dim=512", "model.decoder_depth=8",
                                           "model.decoder_num_heads=16"]))
    n_enc = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    assert 85.5e6 < n_enc < 86.0e6  # ViT-B/16 without head: 85.8M


def test_encoder_is_a_timm_vit(tiny):
    """Same keys and the same features as timm's VisionTransformer."""
    model = build_model(load_config(None, ["model.depth=2"])).eval()
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=4,
                            depth=2).eval()
    vit.load_state_dict(model.encoder.state_dict(), strict=True)
    imgs = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(vit.forward_features(imgs), model.encoder.forward_features(imgs), rtol=0, atol=1e-5)


def test_wrong_input_shape_is_one_line(tiny):
    model = build_model(tiny())
    with pytest.raises(ConfigError, match=r"input images have shape \(2, 3, 20, 20\)"):
        model(torch.randn(2, 3, 20, 20))
