"""Backbones for detectron2 / mmdet / mmseg (``emae export --to vitdet | mmseg | mmdet``), without the frameworks.

The key lists below are written down from the frameworks' sources (facebookresearch/mae models_vit.py and timm's
vit_base_patch16_224 without head for the official checkpoint; mmseg/models/backbones/mae.py + beit.py; mmdet's and
mmseg's backbones/swin.py). Where emae claims a function is preserved, a small re-implementation of the framework's
forward, reading the exported keys, is compared with emae's encoder. benchmarks/dense_export_check.py runs the same
files through the frameworks' own loaders.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from emae.cli.main import main
from emae.config import ModelConfig
from emae.errors import ConfigError
from emae.interop.dense_export import export_dense, vitdet
from emae.interop.export import export
from emae.interop.load import CLASSIFIER_FORMAT, Loaded, random_checkpoint, read_checkpoint
from emae.interop.swin_export import framework_merge, patch_merging
from emae.models import build_pyramid
from emae.models.pyramid import ConvMerge, grid_coords

from evalkit import SMALL, save_emae_checkpoint
from test_eval_knn import one_line_error
from test_umae import PYR, UMAE, save_checkpoint

# the official MAE encoder checkpoint (mae_pretrain_vit_*.pth): these top-level keys + these per block
OFFICIAL_TOP = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
                "norm.bias"]
OFFICIAL_BLOCK = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                  "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight",
                  "mlp.fc2.bias"]
VIT_BASE_SHAPES = {"cls_token": (1, 1, 768), "pos_embed": (1, 197, 768), "patch_embed.proj.weight": (768, 3, 16, 16),
                   "blocks.11.attn.qkv.weight": (2304, 768), "blocks.11.attn.qkv.bias": (2304,),
                   "blocks.0.mlp.fc1.weight": (3072, 768), "blocks.0.mlp.fc2.weight": (768, 3072),
                   "norm.weight": (768,)}
# mmseg's MAE backbone (final_norm=True): top level + per layer; FRESH: what it initialises itself for MAE weights
MMSEG_TOP = ["cls_token", "pos_embed", "patch_embed.projection.weight", "patch_embed.projection.bias", "ln1.weight",
             "ln1.bias"]
MMSEG_LAYER = ["ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
               "ln2.weight", "ln2.bias", "ffn.layers.0.0.weight", "ffn.layers.0.0.bias", "ffn.layers.1.weight",
               "ffn.layers.1.bias", "gamma_1", "gamma_2", "attn.relative_position_bias_table",
               "attn.relative_position_index"]
MMSEG_FRESH = {"gamma_1", "gamma_2", "attn.relative_position_bias_table", "attn.relative_position_index"}
# mmdet's / mmseg's SwinTransformer (patch_norm=True, out_indices=(0, 1, 2, 3))
SWIN_TOP = ["patch_embed.projection.weight", "patch_embed.projection.bias", "patch_embed.norm.weight",
            "patch_embed.norm.bias"] + [f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")]
SWIN_BLOCK = ["norm1.weight", "norm1.bias", "attn.w_msa.relative_position_bias_table",
              "attn.w_msa.relative_position_index", "attn.w_msa.qkv.weight", "attn.w_msa.qkv.bias",
              "attn.w_msa.proj.weight", "attn.w_msa.proj.bias", "norm2.weight", "norm2.bias", "ffn.layers.0.0.weight",
              "ffn.layers.0.0.bias", "ffn.layers.1.weight", "ffn.layers.1.bias"]
SWIN_MERGE = ["downsample.norm.weight", "downsample.norm.bias", "downsample.reduction.weight"]
SWIN_FRESH = {"norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"}
SWIN = [*UMAE, *PYR, "model.arch=swin_t", "model.depths=[2,2,2,2]"]  # full-grid stages 32, 16, 8, 4


def official_keys(depth: int) -> set[str]:
    return set(OFFICIAL_TOP) | {f"blocks.{i}.{k}" for i in range(depth) for k in OFFICIAL_BLOCK}


def swin_keys(depths: list[int]) -> set[str]:
    keys = set(SWIN_TOP)
    for i, depth in enumerate(depths):
        keys |= {f"stages.{i}.blocks.{j}.{k}" for j in range(depth) for k in SWIN_BLOCK}
        keys |= {f"stages.{i}.{k}" for k in SWIN_MERGE} if i < len(depths) - 1 else set()
    return keys


@pytest.fixture(scope="module")
def vit_ck(tmp_path_factory):
    return save_emae_checkpoint(tmp_path_factory.mktemp("vit") / "ck.pt", *SMALL)


@pytest.fixture(scope="module")
def swin_ck(tmp_path_factory):
    path = tmp_path_factory.mktemp("swin") / "ck.pt"
    return path, save_checkpoint(path, *SWIN)


# ---------------------------------------------------------------- ViTDet


def test_vitdet_file_has_exactly_the_official_vit_base_keys_and_shapes(tmp_path):
    loaded = random_checkpoint(ModelConfig(arch="vit_base", img_size=224, patch_size=16))
    obj, report = vitdet(loaded, "vitdet", tmp_path / "b.pth")
    assert set(obj) == {"model"} and set(obj["model"]) == official_keys(12)
    assert {k: tuple(obj["model"][k].shape) for k in VIT_BASE_SHAPES} == VIT_BASE_SHAPES
    assert report.backbone["pretrain_img_size"] == 224 and report.backbone["embed_dim"] == 768


@pytest.mark.parametrize("to", ["vitdet", "mmdet"])
def test_vitdet_export_round_trip_equals_the_encoder(vit_ck, tmp_path, to):
    out = tmp_path / "vitdet.pth"
    assert export(read_checkpoint(vit_ck), to, out) == out  # the Python API's one entry point
    sd = torch.load(out, weights_only=True)["model"]
    enc = {k[len("encoder."):]: v for k, v in torch.load(vit_ck, weights_only=True)["model"].items()
           if k.startswith("encoder.")}
    assert set(sd) == official_keys(2) == set(enc)
    assert all(torch.equal(sd[k], enc[k]) for k in sd)
    assert not any(k.startswith(("decoder", "mask_token")) for k in sd)
    back = read_checkpoint(out, num_heads=2)  # emae reads it back as the official layout it is
    assert back.source == "official" and all(torch.equal(back.state[f"encoder.{k}"], v) for k, v in sd.items())
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["backbone"]["depth"] == 2 and spec["unused"] == ["cls_token", "norm.weight", "norm.bias"]


def test_umae_vit_secondary_mask_token_is_left_out(tmp_path):
    ck = save_emae_checkpoint(tmp_path / "um.pt", *SMALL, "method=umae", "mask.type=uniform")
    assert "encoder.mask_token" in torch.load(ck, weights_only=True)["model"]
    report = export_dense(read_checkpoint(ck), "vitdet", tmp_path / "um.pth")
    assert set(torch.load(tmp_path / "um.pth", weights_only=True)["model"]) == official_keys(2)
    assert report.left_out == ["mask_token"]


# ---------------------------------------------------------------- mmseg MAE


def mmseg_mae_forward(sd: dict, x: torch.Tensor, depth: int, heads: int, patch: int) -> torch.Tensor:
    """mmseg's MAE forward (mae.py / beit.py) with final_norm=True, init_values 1.0 and zero relative tables, from the
    exported keys: patch conv, cls + pos, pre-norm layers with layer scale, ln1; the patch tokens of the last layer."""
    t = F.conv2d(x, sd["patch_embed.projection.weight"], sd["patch_embed.projection.bias"], stride=patch)
    t = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), t.flatten(2).transpose(1, 2)], 1) + sd["pos_embed"]
    b, n, c = t.shape
    ln = lambda z, p: F.layer_norm(z, (c,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # noqa: E731
    lin = lambda z, p: F.linear(z, sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731
    for i in range(depth):
        p = f"layers.{i}."
        q, k, v = lin(ln(t, p + "ln1"), p + "attn.qkv").reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)  # + zero relative bias
        t = t + 1.0 * lin((attn @ v).transpose(1, 2).reshape(b, n, c), p + "attn.proj")  # gamma_1 = init_values
        t = t + 1.0 * lin(F.gelu(lin(ln(t, p + "ln2"), p + "ffn.layers.0.0")), p + "ffn.layers.1")
    return ln(t, "ln1")[:, 1:]


def test_mmseg_export_keys_and_the_mae_backbones_function(vit_ck, tmp_path):
    out = tmp_path / "mmseg.pth"
    report = export_dense(read_checkpoint(vit_ck), "mmseg", out)
    sd = torch.load(out, weights_only=True)  # a raw state dict, as beit2mmseg writes it
    expected = set(MMSEG_TOP) | {f"layers.{i}.{k}" for i in range(2) for k in MMSEG_LAYER if k not in MMSEG_FRESH}
    assert set(sd) == expected
    assert report.fresh == ["layers.*.gamma_1", "layers.*.gamma_2", "layers.*.attn.relative_position_bias_table"]
    enc = emae_encoder(vit_ck)
    assert torch.equal(sd["layers.1.ffn.layers.1.weight"], enc.blocks[1].mlp.fc2.weight)
    assert torch.equal(sd["ln1.bias"], enc.norm.bias) and torch.equal(sd["layers.0.ln1.bias"], enc.blocks[0].norm1.bias)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = enc.forward_features(x)[:, 1:]
        theirs = mmseg_mae_forward(sd, x, depth=2, heads=2, patch=4)
    assert (ours - theirs).abs().max() < 1e-5


def emae_encoder(path):
    from emae.interop.load import build_encoder

    return build_encoder(read_checkpoint(path))


# ---------------------------------------------------------------- Swin


def mm_rel_index(w: int) -> torch.Tensor:
    """mmdet's WindowMSA.relative_position_index (double_step_seq + flip), as written in its swin.py."""
    seq = (torch.arange(0, (2 * w - 1) * w, 2 * w - 1)[:, None] + torch.arange(0, w)[None, :]).reshape(1, -1)
    return (seq + seq.T).flip(1)


def mm_swin_forward(sd: dict, x: torch.Tensor, depths: list[int], heads: list[int], w: int, stride: int,
                    eps: tuple[float, float] = (1e-6, 1e-5)) -> list[torch.Tensor]:
    """mmdet's SwinTransformer.forward from the exported keys (no padding: grids are multiples of ``w``): the stage
    outputs before the out norms, and the last one after ``norm3``. ``eps``: (stem / merge / out, blocks)."""
    lin = lambda z, p, b=True: F.linear(z, sd[p + ".weight"], sd[p + ".bias"] if b else None)  # noqa: E731
    ln = lambda z, p, e: F.layer_norm(z, z.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=e)  # noqa: E731
    t = F.conv2d(x, sd["patch_embed.projection.weight"], sd["patch_embed.projection.bias"], stride=stride)
    h, wd = t.shape[2:]
    t = ln(t.flatten(2).transpose(1, 2), "patch_embed.norm", eps[0])
    outs = []
    for i, depth in enumerate(depths):
        for j in range(depth):
            p, shift = f"stages.{i}.blocks.{j}.", w // 2 if j % 2 else 0
            b, n, c = t.shape
            y = ln(t, p + "norm1", eps[1]).view(b, h, wd, c)
            mask = None
            if shift:
                y = torch.roll(y, (-shift, -shift), (1, 2))
                img = torch.zeros(1, h, wd, 1)
                cuts = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
                for cnt, (a, bb) in enumerate((a, bb) for a in cuts for bb in cuts):
                    img[:, a, bb] = cnt
                mw = img.view(1, h // w, w, wd // w, w, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w)
                mask = (mw[:, None] - mw[:, :, None]).ne(0).float() * -100.0
            win = y.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
            qkv = lin(win, p + "attn.w_msa.qkv").reshape(win.shape[0], w * w, 3, heads[i], -1)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            attn = (q * (c // heads[i]) ** -0.5) @ k.transpose(-2, -1)
            table = sd[p + "attn.w_msa.relative_position_bias_table"]
            attn = attn + table[mm_rel_index(w).view(-1)].view(w * w, w * w, -1).permute(2, 0, 1)[None]
            if mask is not None:
                attn = (attn.view(-1, mask.shape[0], heads[i], w * w, w * w) + mask[None, :, None]).flatten(0, 1)
            win = lin((attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, w * w, c), p + "attn.w_msa.proj")
            y = win.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, wd, c)
            if shift:
                y = torch.roll(y, (shift, shift), (1, 2))
            t = t + y.reshape(b, n, c)
            t = t + lin(F.gelu(lin(ln(t, p + "norm2", eps[1]), p + "ffn.layers.0.0")), p + "ffn.layers.1")
        outs.append(t.view(t.shape[0], h, wd, -1))
        if i < len(depths) - 1:  # PatchMerging: Unfold 2x2 (channel order c * 4 + kh * 2 + kw), LN over 4C, Linear
            g = F.unfold(t.transpose(1, 2).reshape(t.shape[0], -1, h, wd), 2, stride=2).transpose(1, 2)
            p = f"stages.{i}.downsample"
            t = F.linear(ln(g, p + ".norm", eps[0]), sd[p + ".reduction.weight"])
            h, wd = h // 2, wd // 2
    outs.append(ln(outs[-1], "norm3", eps[0]))
    return outs


def emae_stages(enc, x: torch.Tensor) -> list[torch.Tensor]:
    t = enc.stem(x)
    coords = grid_coords(1, t.shape[1], t.shape[2])
    outs = []
    for stage in enc.stages:
        t, coords = stage(t, coords)
        outs.append(t)
    return outs + [enc.norm(t)]


def test_swin_export_keys_tables_and_stage_outputs(swin_ck, tmp_path, monkeypatch):
    path, pre = swin_ck
    out = tmp_path / "swin.pth"
    assert export_dense(read_checkpoint(path), "mmdet", out).backbone["window_size"] == 4  # UM-MAE's 2, doubled
    report = export_dense(read_checkpoint(path), "mmdet", out, window_size=2)  # a window every stage grid exceeds
    obj = torch.load(out, weights_only=True)
    assert set(obj) == {"state_dict"} and all(k.startswith("backbone.") for k in obj["state_dict"])
    sd = {k[len("backbone."):]: v for k, v in obj["state_dict"].items()}
    expected = {k for k in swin_keys([2, 2, 2, 2]) if k not in SWIN_FRESH and not k.endswith("relative_position_index")}
    assert set(sd) == expected
    assert report.fresh == ["norm0", "norm1", "norm2"] and report.left_out[0] == "mask_token"
    assert report.approximate == [f"stages.{i}.downsample.norm" for i in range(3)]
    assert report.backbone["window_size"] == 2 and report.backbone["patch_size"] == 1  # the stem's stride, p / 4
    assert tuple(sd["stages.2.blocks.1.attn.w_msa.relative_position_bias_table"].shape) == (9, 4)

    enc = build_pyramid(read_checkpoint(path).config.model, compact=False, window_size=2).eval()
    enc.load_state_dict({k[len("encoder."):]: v for k, v in pre.state_dict().items() if k.startswith("encoder.")})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = emae_stages(enc, x)
        theirs = mm_swin_forward(sd, x, [2, 2, 2, 2], [1, 2, 4, 8], w=2, stride=1)
    rel = [float((a - b).norm() / a.norm()) for a, b in zip(ours, theirs)]
    assert rel[0] < 1e-5, rel  # stem, blocks, shifted windows, position tables: exact
    assert 1e-3 < min(rel[1:]), rel  # after a merge: not equal (per-token vs per-group statistics) ...
    monkeypatch.setattr(ConvMerge, "forward", framework_merge)
    with torch.no_grad():
        approx = emae_stages(enc, x)
    rel = [float((a - b).norm() / a.norm()) for a, b in zip(approx, theirs)]
    assert max(rel) < 1e-5, rel  # ... and that statistic is the only difference, through every stage


def test_patch_merging_conversion_is_exact_when_the_group_statistics_agree():
    """Per-token and per-group LayerNorm coincide when the 4 tokens of every 2x2 group are permutations of one
    vector: then the framework's merge must give emae's ConvMerge output exactly (channel order, tiled affine,
    folded bias)."""
    torch.manual_seed(0)
    merge = ConvMerge(8, 16, norm=True)
    with torch.no_grad():
        for p in merge.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    base = torch.randn(2, 3, 3, 8)
    x = torch.empty(2, 6, 6, 8)
    for kh in range(2):
        for kw in range(2):
            x[:, kh::2, kw::2] = base[..., torch.randperm(8)]
    conv = merge.state_dict()
    sd, residual = patch_merging(conv["norm.weight"], conv["norm.bias"], conv["proj.weight"], conv["proj.bias"])
    g = F.unfold(x.permute(0, 3, 1, 2), 2, stride=2).transpose(1, 2)
    theirs = F.linear(F.layer_norm(g, (32,), sd["norm.weight"], sd["norm.bias"], eps=1e-6), sd["reduction.weight"])
    with torch.no_grad():
        ours = merge(x).reshape(2, 9, 16)
    assert residual < 1e-6 and (ours - theirs).abs().max() < 1e-5


def test_swin_window_size_option_sets_the_tables(swin_ck, tmp_path, capsys):
    path, _ = swin_ck
    assert main(["export", str(path), "--to", "mmseg", "--window-size", "7", "--output", str(tmp_path / "s.pth")]) == 0
    sd = torch.load(tmp_path / "s.pth", weights_only=True)["state_dict"]
    assert tuple(sd["backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_table"].shape) == (169, 1)
    text = capsys.readouterr().out
    assert "fresh: norm0, norm1, norm2" in text and "approximate: stages.0.downsample.norm" in text
    assert json.loads((tmp_path / "s.json").read_text())["backbone"]["window_size"] == 7


def test_finetuned_swin_classifier_exports_without_its_head(swin_ck, tmp_path):
    """A fine-tuned best.pt: its encoder has no final norm (fc_norm after the pool) and keeps its fine-tuning window."""
    pre = read_checkpoint(swin_ck[0])
    state = {k: v for k, v in pre.state.items() if k.startswith("encoder.") and not k.startswith("encoder.norm.")}
    pre.config.model.window_size = 4  # what a best.pt stores: the full-grid window
    clf = Loaded("best.pt", CLASSIFIER_FORMAT, pre.config, state,
                 {"head.weight": torch.zeros(10, 128), "fc_norm.weight": torch.ones(128)})
    report = export_dense(clf, "mmdet", tmp_path / "clf.pth")
    sd = torch.load(tmp_path / "clf.pth", weights_only=True)["state_dict"]
    assert report.fresh == ["norm0", "norm1", "norm2", "norm3"] and not any("norm3" in k or "head" in k for k in sd)
    assert {"head.weight", "fc_norm.weight"} <= set(report.left_out) and report.backbone["window_size"] == 4


# ---------------------------------------------------------------- CLI and bad input


def test_export_cli_vitdet_prints_what_the_framework_initialises(vit_ck, tmp_path, capsys):
    assert main(["export", str(vit_ck), "--to", "vitdet", "--output", str(tmp_path / "v.pth")]) == 0
    text = capsys.readouterr().out
    assert "fresh: blocks.*.attn.rel_pos_h, blocks.*.attn.rel_pos_w" in text and "matching_heuristics=True" in text


@pytest.mark.parametrize("case", ["swin-vitdet", "pvt-mmdet", "pvt-mmseg", "vit-window", "json-output",
                                  "non-square", "decoder", "zero-window"])
def test_bad_dense_exports_are_one_line_errors(case, vit_ck, swin_ck, tmp_path, capsys):
    ck = {"vit": str(vit_ck), "swin": str(swin_ck[0])}
    if case.startswith("pvt"):
        ck["pvt"] = str(tmp_path / "pvt.pt")
        save_checkpoint(ck["pvt"], *UMAE, *PYR, "model.arch=pvt_t")
    if case == "non-square":
        ck["vit"] = str(save_emae_checkpoint(tmp_path / "rect.pt", *SMALL, "model.img_size=[16,32]"))
    arch, to, extra, needle = {
        "swin-vitdet": ("swin", "vitdet", [], "takes a plain ViT"),
        "pvt-mmdet": ("pvt", "mmdet", [], "LayerNorm after its stem"),
        "pvt-mmseg": ("pvt", "mmseg", [], "mmseg has no PVT-v1"),
        "vit-window": ("vit", "vitdet", ["--window-size", "7"], "--window-size is for a Swin"),
        "json-output": ("vit", "vitdet", [], "name it .pth"),
        "non-square": ("vit", "mmseg", [], "only square grids"),
        "decoder": ("vit", "mmseg", ["--decoder"], "--decoder is for --to safetensors"),
        "zero-window": ("swin", "mmdet", ["--window-size", "0"], "must be a positive integer"),
    }[case]
    name = "out.json" if case == "json-output" else "out.pth"
    err = one_line_error(capsys, ["export", ck[arch], "--to", to, "--output", str(tmp_path / name), *extra])
    assert needle in err
    assert not (tmp_path / "out.pth").exists()


def test_dense_target_errors_are_config_errors_in_python(swin_ck, tmp_path):
    with pytest.raises(ConfigError, match="takes a plain ViT"):
        export_dense(read_checkpoint(swin_ck[0]), "vitdet", tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="not one of"):
        export_dense(read_checkpoint(swin_ck[0]), "detectron", tmp_path / "x.pth")
