"""EMAE: parallel-mask invariants, reduction to MAE, the stop-gradient consistency loss, and a training run."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emae import build_model
from emae.engine import pretrain, read_log
from emae.errors import ConfigError
from emae.losses import masked_patch_loss, self_consistency
from emae.masks import num_parts, parallel_mask

from helpers import tiny_config, write_images


@settings(max_examples=60, deadline=None)
@given(batch=st.integers(1, 4), grid=st.tuples(st.integers(2, 9), st.integers(2, 9)),
       ratio=st.sampled_from([0.5, 2 / 3, 0.75, 0.8]), seed=st.integers(0, 2**31))
def test_parallel_mask_invariants(batch, grid, ratio, seed):
    k = num_parts(ratio)
    length = grid[0] * grid[1]
    per_part = length // k
    if per_part == 0:
        return
    m = parallel_mask(batch, grid, ratio, generator=torch.Generator().manual_seed(seed))
    assert m.parts == k and m.ids_keep.shape == (batch * k, per_part)  # exact part sizes
    masks = m.mask.view(batch, k, length)
    visible = 1 - masks
    assert (visible.sum(-1) == per_part).all()
    assert (visible.sum(1) <= 1).all()  # disjoint
    # every patch is visible in exactly one part, except the L mod K remainder, visible in none
    assert (visible.sum((1, 2)) == k * per_part).all()
    times_masked = masks.sum(1)
    assert ((times_masked == k - 1).sum(-1) == k * per_part).all()
    assert ((times_masked == k).sum(-1) == length % k).all()
    # indices agree with the mask, part by part
    kept = torch.zeros(batch * k, length).scatter_(1, m.ids_keep, 1.0)
    assert torch.equal(kept, 1 - m.mask)


@pytest.mark.parametrize("ratio", [0.7, 0.6, 0.9 + 1e-3])
def test_ratio_without_whole_k_is_an_error(ratio):
    with pytest.raises(ConfigError, match="not a whole number"):
        parallel_mask(2, (4, 4), ratio)
    with pytest.raises(ConfigError, match="not a whole number"):
        tiny_config("method=emae", "mask.type=parallel", f"mask.ratio={ratio}")


def test_method_and_mask_must_agree():
    with pytest.raises(ConfigError, match="method emae needs one of"):
        tiny_config("method=emae", "mask.type=random")
    with pytest.raises(ConfigError, match="parallel masks need method: emae"):
        tiny_config("mask.type=parallel")


def emae_config(*extra, **flags):
    return tiny_config("method=emae", "mask.type=parallel", *extra, **flags)


def test_every_patch_visible_to_the_encoder_once_per_iteration():
    model = build_model(emae_config())
    seen = []
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    out = model(torch.randn(3, 3, 16, 16))
    assert seen == [(3 * 4, 1 + 4, 32)]  # B*K sequences of L/K visible tokens + cls
    assert out.pred.shape == (12, 16, 48) and set(out.terms) == {"loss", "recon", "consistency"}


def test_emae_reduces_to_mae():
    """Consistency off: each part's loss is the MAE loss with that part's mask given as noise."""
    emae = build_model(emae_config("consistency.enabled=false")).eval()
    mae = build_model(tiny_config()).eval()
    mae.load_state_dict(emae.state_dict())
    imgs = torch.randn(3, 3, 16, 16)
    out = emae(imgs, generator=torch.Generator().manual_seed(0))
    k = out.mask.parts
    part_losses = []
    for i in range(k):
        rows = slice(i, None, k)
        part_loss = masked_patch_loss(out.pred[rows], out.target[rows], out.mask.mask[rows])
        ref = mae(imgs, noise=out.mask.ids_restore[rows].float())  # argsort(ids_restore) is part i's order
        assert torch.equal(ref.mask.mask, out.mask.mask[rows])
        torch.testing.assert_close(part_loss, ref.loss, rtol=0, atol=1e-6)
        torch.testing.assert_close(out.pred[rows], ref.pred, rtol=0, atol=1e-6)
        part_losses.append(part_loss)
    torch.testing.assert_close(out.loss, torch.stack(part_losses).mean(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_consistency_stop_gradient(distance):
    torch.manual_seed(0)
    mask = parallel_mask(1, (2, 4), 0.5, generator=torch.Generator().manual_seed(0)).mask  # 2 parts
    mask = torch.ones_like(mask)  # let every position count, so both parts get gradient everywhere
    pred = torch.randn(2, 8, 3, requires_grad=True)
    (g_full,) = torch.autograd.grad(self_consistency(pred, mask, 2, distance), pred)

    def dist(a, b):
        return ((a - b).abs() if distance == "l1" else (a - b).pow(2)).mean(-1).sum() / 8

    (g_to_1,) = torch.autograd.grad(dist(pred[0].detach(), pred[1]), pred)  # |sg(P0) - P1|
    (g_to_0,) = torch.autograd.grad(dist(pred[0], pred[1].detach()), pred)  # |P0 - sg(P1)|
    assert (g_to_1[0] == 0).all() and (g_to_0[1] == 0).all()
    torch.testing.assert_close(g_full[0], g_to_0[0])  # part 0 gets gradient only from the term it is live in
    torch.testing.assert_close(g_full[1], g_to_1[1])
    # ... which is exactly the gradient of the plain distance: the symmetric stop-gradient does not change training
    (g_plain,) = torch.autograd.grad(dist(pred[0], pred[1]), pred)
    torch.testing.assert_close(g_full, g_plain)
    same = torch.randn(1, 8, 3).expand(2, -1, -1).clone().requires_grad_(True)
    assert self_consistency(same, mask, 2, distance).item() == 0.0  # exactly zero when predictions agree


def test_consistency_only_on_patches_masked_in_both_parts():
    m = parallel_mask(2, (4, 4), 0.75, generator=torch.Generator().manual_seed(3))
    # each part predicts 0 where it is masked and noise where it sees the patch: pairs differ only on
    # patches that one of the two parts sees, which the loss must ignore
    pred = torch.randn(8, 16, 3) * (1 - m.mask).unsqueeze(-1)
    assert self_consistency(pred, m.mask, 4).item() == 0.0
    pred[0, m.mask[0].bool()] += 1.0  # now part 0 disagrees on its masked patches
    assert self_consistency(pred, m.mask, 4).item() > 0


def test_two_parts_have_no_consistency_term_and_a_run_says_so(tmp_path, capsys):
    m = parallel_mask(3, (4, 4), 0.5, generator=torch.Generator().manual_seed(1))
    pred = torch.randn(6, 16, 3, requires_grad=True)  # any predictions at all: no patch is masked in both parts
    loss = self_consistency(pred, m.mask, 2)
    assert loss.item() == 0.0 and torch.autograd.grad(loss, pred)[0].abs().sum() == 0
    write_images(tmp_path / "imgs", 4, size=16)
    for ratio, warned in ((0.5, True), (0.75, False)):
        cfg = tiny_config("method=emae", "mask.type=parallel", f"mask.ratio={ratio}", "train.max_steps=1",
                          "train.batch_size=2", "data.num_workers=0", "train.num_vis=0",
                          **{"data.path": str(tmp_path / "imgs"), "output_dir": str(tmp_path / f"run{ratio}")})
        pretrain(cfg, progress=False)
        out = capsys.readouterr()
        assert ("consistency.weight=1 has no effect with K = 2 parts" in out.out + out.err) == warned


def test_emae_trains_and_logs_terms(tmp_path):
    write_images(tmp_path / "data", 16, size=16)
    cfg = emae_config("train.epochs=2", "train.batch_size=4", "train.log_every=1", "consistency.distance=l2",
                      **{"data.path": str(tmp_path / "data"), "output_dir": str(tmp_path / "run")})
    result = pretrain(cfg, progress=False)
    records = [r for r in read_log(tmp_path / "run" / "log.jsonl") if r["type"] == "train"]
    assert result.global_step == 8 and len(records) == 8
    for r in records:
        assert r["loss"] == pytest.approx(r["recon"] + r["consistency"], rel=1e-5)
    assert (tmp_path / "run" / "reconstruction.png").exists()


def test_consistency_measure_definitions():
    from emae.eval.consistency import ConsistencyStats

    # two rounds, one image, two patches both masked in both rounds; values chosen by hand
    preds = torch.tensor([[[[0.0, 0.0], [4.0, 4.0]]], [[[2.0, 2.0], [4.0, 4.0]]]])  # (R=2, B=1, L=2, P=2)
    target = torch.tensor([[[1.0, 1.0], [1.0, 3.0]]])  # (B=1, L=2, P=2)
    masks = torch.ones(2, 1, 2)
    stats = ConsistencyStats()
    stats.add(preds, target, masks)
    s = stats.summary()
    assert s["patches"] == 2 and s["masked"] == 4
    assert s["variance"] == pytest.approx(1.0)  # unbiased var of {0, 2} is 2; of {1, 1} is 0; mean over patches
    assert s["pairwise"] == pytest.approx(1.0)  # RMS differences 2 and 0
    assert s["recon_error"] == pytest.approx((1 + 5 + 1 + 5) / 4)  # per-patch MSE: patch 0 1 and 1, patch 1 5
    assert s["prediction_variance"] == pytest.approx(11 / 3)  # unbiased var of the predictions 0, 4, 2, 4
    assert s["inconsistency"] == pytest.approx(1.0 / (11 / 3))
    assert s["target_variance"] == pytest.approx((0 + 1) / 2)  # per value: {1,1,1,1} and {1,3,1,3}
    masks[1, 0, 0] = 0  # patch 0 masked once: left out
    stats = ConsistencyStats()
    stats.add(preds, target, masks)
    assert stats.summary()["patches"] == 1


def test_consistency_command(tmp_path, capsys):
    import json

    from emae.cli.main import main

    write_images(tmp_path / "data", 8, size=16)
    cfg = tiny_config("train.epochs=1", "train.batch_size=4",
                      **{"data.path": str(tmp_path / "data"), "output_dir": str(tmp_path / "run")})
    ckpt = pretrain(cfg, progress=False).checkpoint
    argv = ["consistency", str(ckpt), "--data", str(tmp_path / "data"), "--rounds", "4", "--output",
            str(tmp_path / "c.json")]
    assert main(argv) == 0
    stats = json.loads((tmp_path / "c.json").read_text())
    assert stats["images"] == 8 and stats["rounds"] == 4 and stats["variance"] > 0 and stats["pairwise"] > 0
    assert stats["target"] == "norm_pix" and stats["recon_error"] > 0 and 0 < stats["inconsistency"] <= 1
    assert stats["inconsistency"] == pytest.approx(min(1.0, stats["variance"] / stats["prediction_variance"]))
    out = capsys.readouterr().out
    assert "inconsist." in out and "recon" in out
    # a model whose predictions ignore the visible patches has no variance across rounds, and the worst score
    model = build_model(cfg)
    for p in model.decoder.pred.parameters():
        torch.nn.init.zeros_(p)
    from emae.eval.consistency import measure_consistency

    s = measure_consistency(model, [torch.randn(4, 3, 16, 16)], rounds=3)
    assert s["variance"] == 0.0 and s["inconsistency"] == 1.0
    # bad input: one line, before any work
    for bad, msg in ((["--rounds", "1"], "--rounds"), (["--images", "0"], "--images"), (["--ratio", "1.5"], "--ratio")):
        assert main(["consistency", str(ckpt), "--data", str(tmp_path / "data"), *bad]) == 2
        assert msg in capsys.readouterr().err
