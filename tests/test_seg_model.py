"""The segmentation network: the simple feature pyramid's strides and shapes for ViTs of patch 4, 8 and 16, the
stage maps of Swin and PVT, non-square inputs, gradients, and the layer-wise lr decay groups."""

from __future__ import annotations

import pytest
import torch
from timm.optim import create_optimizer_v2
from torch import nn

from emae.config import ModelConfig
from emae.errors import ConfigError
from emae.eval.backbone import build_vit
from emae.eval.pyramid import PyramidClassifier
from emae.interop.load import random_checkpoint
from emae.models import build_pyramid
from emae.models.dense import SegmentationModel, SimpleFeaturePyramid, map_stride

K = 5


def tiny_vit(patch: int, size: tuple[int, int], pretrain_size: tuple[int, int] | None = None):
    m = ModelConfig(arch="vit_tiny", embed_dim=32, depth=2, num_heads=2, img_size=list(pretrain_size or size),
                    patch_size=patch)
    return build_vit(random_checkpoint(m, 0), img_size=size)


def tiny_pyramid(arch: str, size: tuple[int, int]) -> PyramidClassifier:
    m = ModelConfig(arch=arch, embed_dim=16, num_heads=1, depths=[1, 1, 1, 1], img_size=list(size), patch_size=16,
                    window_size=2)
    enc = build_pyramid(m, compact=False, window_size=2 if arch == "swin_t" else None,
                        sr=[8, 4, 2, 1] if arch == "pvt_s" else None)
    return PyramidClassifier(enc, 10)


def seg_model(backbone, size):
    return SegmentationModel(backbone, K, size, neck_dim=16, head_dim=8).eval()


@pytest.mark.parametrize("patch", [4, 8, 16])
def test_simple_feature_pyramid_strides_and_shapes_for_vit(patch):
    size = (64, 96)
    model = seg_model(tiny_vit(patch, size), size)
    assert model.single_scale and model.indices == [1] and model.feature_strides == [4, 8, 16, 32]
    maps = model.forward_features(torch.randn(2, 3, *size))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    deconvs = [sum(isinstance(m, nn.ConvTranspose2d) for m in level.modules()) for level in model.neck.levels]
    pools = [sum(isinstance(m, nn.MaxPool2d) for m in level.modules()) for level in model.neck.levels]
    expected = {4: ([0, 0, 0, 0], [0, 1, 1, 1]), 8: ([1, 0, 0, 0], [0, 0, 1, 1]), 16: ([2, 1, 0, 0], [0, 0, 0, 1])}
    assert (deconvs, pools) == expected[patch]
    assert model(torch.randn(2, 3, *size)).shape == (2, K, *size)


def test_vit_on_a_non_square_input_with_odd_grids_and_resampled_positions():
    size = (176, 240)  # 11 x 15 patches of 16: the stride-32 level is 5 x 7
    vit = tiny_vit(16, size, pretrain_size=(32, 32))
    assert vit.pos_embed.shape[1] == 1 + 11 * 15
    model = seg_model(vit, size)
    maps = model.forward_features(torch.randn(1, 3, *size))
    assert [tuple(m.shape[-2:]) for m in maps] == [(44, 60), (22, 30), (11, 15), (5, 7)]
    assert model(torch.randn(1, 3, *size)).shape == (1, K, *size)


@pytest.mark.parametrize("arch,size", [("swin_t", (64, 128)), ("pvt_s", (176, 240))])
def test_pyramid_stage_maps_go_to_the_head(arch, size):
    backbone = tiny_pyramid(arch, size)
    model = seg_model(backbone, size)
    assert not model.single_scale and model.indices == [0, 1, 2, 3] and isinstance(model.neck, nn.Identity)
    assert model.feature_strides == backbone.encoder.feature_strides == [4, 8, 16, 32]
    assert model.feature_dims == backbone.encoder.feature_dims
    maps = model.forward_features(torch.randn(1, 3, *size))
    assert [m.shape[1] for m in maps] == backbone.encoder.feature_dims
    assert [tuple(m.shape[-2:]) for m in maps][0] == (size[0] // 4, size[1] // 4)
    assert model(torch.randn(2, 3, *size)).shape == (2, K, *size)
    assert isinstance(backbone.head, nn.Identity)  # its classifier went: no weight without a gradient


@pytest.mark.parametrize("backbone", ["vit", "pvt"])
def test_gradients_reach_the_backbone_and_the_head(backbone):
    size = (64, 64)
    model = SegmentationModel(tiny_vit(8, size) if backbone == "vit" else tiny_pyramid("pvt_s", size), K, size,
                              neck_dim=16, head_dim=8)
    x, y = torch.randn(2, 3, *size), torch.randint(0, K, (2, *size))
    nn.functional.cross_entropy(model(x), y).backward()
    first = next(p for n, p in model.backbone.named_parameters() if "blocks.0" in n or "stages.0" in n)
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert model.decode_head.classifier.weight.grad.abs().sum() > 0


def test_layer_decay_groups_put_neck_and_head_on_top():
    size = (32, 32)
    model = SegmentationModel(tiny_vit(8, size), K, size, neck_dim=16, head_dim=8)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    depth = 2
    assert scale[id(named["backbone.patch_embed.proj.weight"])] == 0.5 ** (depth + 1)
    assert scale[id(named["backbone.blocks.0.attn.qkv.weight"])] == 0.5**depth
    assert scale[id(named["backbone.blocks.1.attn.qkv.weight"])] == 0.5
    assert scale[id(named["backbone.norm.weight"])] == 1.0
    for name, p in named.items():
        if name.startswith(("neck.", "decode_head.")):
            assert scale[id(p)] == 1.0, name
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(named["backbone.pos_embed"]) not in decayed and id(named["decode_head.classifier.weight"]) in decayed


def test_layer_decay_groups_of_a_pyramid():
    size = (64, 64)
    model = SegmentationModel(tiny_pyramid("swin_t", size), K, size, neck_dim=16, head_dim=8)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    stem = scale[id(named["backbone.encoder.stem.proj.weight"])]
    last_block = scale[id(named["backbone.encoder.stages.3.blocks.0.mlp.fc1.weight"])]
    assert stem < last_block < 1.0 and scale[id(named["decode_head.fuse.0.weight"])] == 1.0


def test_strides_and_bad_pyramids():
    assert map_stride((176, 240), (11, 15)) == 16 and map_stride((176, 240), (5, 7)) == 32
    assert map_stride((224, 224), (16, 16)) == 14
    with pytest.raises(ConfigError, match="power-of-two"):
        SimpleFeaturePyramid(32, 14, 16)
    with pytest.raises(ConfigError, match="num_classes"):
        SegmentationModel(tiny_vit(8, (32, 32)), 0, (32, 32))
