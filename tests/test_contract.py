"""One encoder contract for ViT, UM-ViT, Swin and PVT: activation checkpointing reaches every block of every
(encoder, method, mask) triple the config accepts (the same numbers, fewer kept activations), and
``forward_intermediates`` gives the maps dense heads take, at their strides."""

import pytest
import torch

import emae.models.vit as vit_module
from emae.archs import FAMILY_MASKS
from emae.models import build_model
from emae.models.build import build_pyramid

from helpers import tiny_config

PYR = ["model.depth=null", "model.img_size=32", "model.patch_size=4", "model.embed_dim=16", "model.depths=[1,1,1,1]",
       "model.num_heads=1", "model.window_size=2"]
ARCH = {"vit": [], "swin": [*PYR, "model.arch=swin_t"], "pvt": [*PYR, "model.arch=pvt_s"]}
TRIPLES = [(fam, method, mask) for fam, methods in FAMILY_MASKS.items() for method, masks in methods.items()
           for mask in sorted(masks)]


def config(fam: str, method: str, mask: str):
    ratio = ["mask.ratio=0.5"] if mask == "block" else []
    return tiny_config(*ARCH[fam], f"method={method}", f"mask.type={mask}", *ratio)


def blocks(model) -> int:
    return sum(len(m.blocks) for m in model.modules() if hasattr(m, "grad_checkpointing") and hasattr(m, "blocks"))


@pytest.mark.parametrize("fam,method,mask", TRIPLES, ids=["-".join(t) for t in TRIPLES])
def test_activation_checkpointing_reaches_every_block(monkeypatch, fam, method, mask):
    torch.manual_seed(0)
    cfg = config(fam, method, mask)
    model = build_model(cfg)
    imgs = torch.randn(4, 3, *cfg.model.image_size)
    calls = [0]
    real = vit_module.checkpoint

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(vit_module, "checkpoint", counting)
    results = []
    for on in (False, True):
        model.set_grad_checkpointing(on)
        model.zero_grad()
        calls[0] = 0
        out = model(imgs, generator=torch.Generator().manual_seed(3))
        out.loss.backward()
        results.append((calls[0], out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                      if p.grad is not None}))
    (c0, l0, g0), (c1, l1, g1) = results
    assert c0 == 0 and c1 == blocks(model) > 0  # every block of encoder and decoder, once per forward
    assert torch.equal(l0, l1) and g0.keys() == g1.keys() and len(g0) > 10
    assert all(torch.allclose(g0[n], g1[n], atol=1e-7) for n in g0)


def test_forward_intermediates_give_dense_maps_at_their_strides():
    vit = build_model(tiny_config("model.img_size=[16,24]")).encoder
    x = torch.randn(2, 3, 16, 24)
    final, maps = vit.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 6)] * 2 and torch.equal(final, vit.forward_features(x))
    last = vit.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
    assert torch.allclose(last.flatten(2).transpose(1, 2), final[:, 1:], atol=1e-6)  # the final norm's tokens
    for arch in ("swin_t", "pvt_s"):
        enc = build_pyramid(tiny_config(*PYR, "method=simmim", f"model.arch={arch}").model, compact=False)
        x = torch.randn(2, 3, 32, 32)
        final, maps = enc.forward_intermediates(x, norm=True)
        assert [m.shape[-1] for m in maps] == [32 // s for s in enc.feature_strides] == [32, 16, 8, 4]
        assert [m.shape[1] for m in maps] == enc.feature_dims
        assert torch.equal(final, enc.forward_features(x))
        assert torch.allclose(maps[-1].permute(0, 2, 3, 1), final, atol=1e-6)
