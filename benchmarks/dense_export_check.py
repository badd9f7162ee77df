"""Do detectron2, mmdet and mmseg load emae's dense exports? Their own loaders, their own backbones, side by side.

Each export (``emae export --to vitdet | mmseg | mmdet``) goes through the framework's checkpoint loading and key
matching, imported from its source: detectron2's ``DetectionCheckpointer`` with ``?matching_heuristics=True``
(``align_and_update_state_dicts``) into the ViTDet Mask R-CNN built from its own LazyConfig; the ``init_weights`` of
mmdet's ViTDet-project ViT, mmseg's ``MAE`` and mmdet's / mmseg's ``SwinTransformer`` with a ``Pretrained``
``init_cfg`` (mmengine's ``CheckpointLoader``, their prefix handling and resampling, then ``load_state_dict``). For
every backbone it reports the parameters matched (equal to the file's tensor, or resampled from it), missing (left to
the framework's init) and the file's unexpected keys, and then compares the framework backbone's forward with
emae's encoder on the same input.

The checkpoints are emae models of the papers' sizes with perturbed weights (nothing can hide behind an init): MAE
ViT-B/16 at 224 and UM-MAE Swin-T at 256 (window 8 on the compact grid, 16 for fine-tuning); ``--vit`` / ``--swin``
take your own. Nothing of the frameworks is copied into emae: pass the folders of their sources.

    python benchmarks/dense_export_check.py --detectron2-src /work/ext/detectron2 \\
        --mmseg-src /work/ext/mmseg-1.2.2 --mmdet-src /work/ext/mmdet-3.3.0 \\
        --mmdet-vitdet-src /work/ext/mmdet-vitdet --output benchmarks/results/dense_export_check.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import tempfile
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import emae  # noqa: E402
from emae.engine.checkpoint import FORMAT, FORMAT_VERSION  # noqa: E402
from emae.errors import ConfigError  # noqa: E402
from emae.interop.dense_export import export_dense  # noqa: E402
from emae.interop.load import build_encoder, read_checkpoint  # noqa: E402
from emae.interop.swin_export import framework_merge  # noqa: E402
from emae.models import build_pyramid  # noqa: E402
from emae.models.pyramid import ConvMerge, grid_coords  # noqa: E402

VIT = ["model.arch=vit_base", "model.img_size=224", "model.patch_size=16", "model.decoder_embed_dim=512",
       "model.decoder_depth=1", "model.decoder_num_heads=16"]
SWIN = ["method=umae", "mask.type=uniform", "model.arch=swin_t", "model.img_size=256", "model.patch_size=16",
        "model.window_size=8", "model.decoder_embed_dim=512", "model.decoder_depth=1", "model.decoder_num_heads=16"]
PVT = ["method=umae", "mask.type=uniform", "model.arch=pvt_s", "model.img_size=256", "model.patch_size=16",
       "model.decoder_embed_dim=128", "model.decoder_depth=1", "model.decoder_num_heads=4"]


def synthetic(path: Path, overrides: list[str], seed: int = 0) -> Path:
    cfg = emae.load_config(None, overrides)
    torch.manual_seed(seed)
    model = emae.build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    torch.save({"format": FORMAT, "version": FORMAT_VERSION, "method": cfg.method, "config": cfg.to_dict(),
                "model": model.state_dict()}, path)
    return path


def pattern(keys) -> list[str]:
    """Key names with block / stage numbers collapsed to ``*``, for a short report."""
    return sorted({re.sub(r"\.\d+\.", ".*.", re.sub(r"\.\d+\.", ".*.", k)) for k in keys})


def compare(params: dict[str, torch.Tensor], file: dict[str, torch.Tensor], resampled=()) -> dict:
    """Backbone parameters vs the file's tensors after the framework loaded it."""
    matched = [k for k, v in params.items() if k in file and v.shape == file[k].shape and torch.equal(v, file[k])]
    changed = [k for k in params if k in file and k not in matched]
    return {"backbone_params": len(params), "matched": len(matched),
            "resampled": [k for k in changed if k in resampled],
            "not_equal": [k for k in changed if k not in resampled],
            "missing": pattern(k for k in params if k not in file),
            "unexpected": pattern(k for k in file if k not in params)}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- ViT


def vit_reference(enc, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """emae's encoder on x: the patch tokens through the blocks without the cls token (ViTDet drops it), and the
    normalised patch tokens of the full forward (mmseg's MAE keeps it)."""
    with torch.no_grad():
        t = enc.embed(x)
        for blk in enc.blocks:
            t = blk(t)
        full = enc.forward_features(x)[:, 1:]
    g = enc.grid
    grid = lambda z: z.transpose(1, 2).reshape(z.shape[0], -1, *g)  # noqa: E731
    return grid(t), grid(full)


def check_detectron2(src: Path, file: Path, enc, x) -> dict:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    class Recording(DetectionCheckpointer):
        def _log_incompatible_keys(self, incompatible):
            self.incompatible = incompatible
            super()._log_incompatible_keys(incompatible)

    cfg = LazyConfig.load(str(src / "configs/common/models/mask_rcnn_vitdet.py"))
    model = instantiate(cfg.model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ck = Recording(model)
    ck.load(f"{file}?matching_heuristics=True")  # as projects/ViTDet loads mae_pretrain_vit_base.pth
    file_sd = torch.load(file, weights_only=True)["model"]
    net = {k[len("backbone.net."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.net.")}
    out = compare(net, file_sd)
    out["checkpointer_missing"] = pattern(k for k in ck.incompatible.missing_keys if k.startswith("backbone.net."))
    out["checkpointer_unexpected"] = pattern(ck.incompatible.unexpected_keys)
    out["outside_backbone_changed"] = sorted(k for k, v in model.state_dict().items()
                                             if not k.startswith("backbone.net.") and not torch.equal(v, before[k]))
    # its ViT at the pre-training size: 14x14 patches, so window 14 is global attention; rel_pos are zeros
    vit = model.backbone.net
    with torch.no_grad():
        theirs = vit(x)[vit._out_features[0]]
    out["max_rel_err_vs_emae_blocks_without_cls"] = rel(vit_reference(enc, x)[0], theirs)
    return out


def check_mmdet_vitdet(src: Path, file: Path, enc, x) -> dict:
    from mmengine.config import ConfigDict

    module = load_module("vitdet_vit", src / "projects/ViTDet/vitdet/vit.py")
    # projects/ViTDet/configs/vitdet_mask-rcnn_vit-b-mae_lsj-100e.py
    kw = dict(img_size=1024, patch_size=16, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1, window_size=14,
              mlp_ratio=4, qkv_bias=True, norm_cfg=dict(type="LN", requires_grad=True),
              window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10], use_rel_pos=True)
    vit = module.ViT(**kw, init_cfg=ConfigDict(type="Pretrained", checkpoint=str(file)))
    vit.init_weights()
    out = compare(dict(vit.state_dict()), torch.load(file, weights_only=True)["model"])
    kw.update(img_size=224, norm_cfg=dict(type="LN", eps=1e-6))  # MAE's eps (the config's LN has 1e-5)
    small = module.ViT(**kw, init_cfg=ConfigDict(type="Pretrained", checkpoint=str(file))).eval()
    small.init_weights()
    with torch.no_grad():
        out["max_rel_err_vs_emae_blocks_without_cls"] = rel(vit_reference(enc, x)[0], small(x))
    return out


def check_mmseg_mae(file: Path, spec: dict, enc, x) -> dict:
    from mmseg.models.backbones.mae import MAE

    args = {k: v for k, v in spec["backbone"].items() if k != "type"}
    pretrained = dict(type="Pretrained", checkpoint=str(file))
    # configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py: a 512 crop, the position embedding resampled
    mae = MAE(**{**args, "img_size": (512, 512), "drop_path_rate": 0.1}, init_cfg=pretrained)
    mae.init_weights()
    file_sd = torch.load(file, weights_only=True)
    params = {k: v for k, v in mae.state_dict().items() if not k.endswith("relative_position_index")}
    out = compare(params, file_sd, resampled=("pos_embed",))
    out["buffers_not_in_file"] = pattern(k for k in mae.state_dict() if k.endswith("relative_position_index"))
    same = MAE(**{**args, "final_norm": True, "out_indices": [args["num_layers"] - 1]}, init_cfg=pretrained)
    same.init_weights()
    same.eval()  # (its train() returns None, so not chained)
    out["final_norm_true_unexpected"] = pattern(k for k in file_sd if k not in same.state_dict())
    with torch.no_grad():
        out["max_rel_err_vs_emae_tokens"] = rel(vit_reference(enc, x)[1], same(x)[0])
    return out


# ---------------------------------------------------------------- Swin


def emae_swin_stages(enc, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        t = enc.stem(x)
        coords = grid_coords(1, t.shape[1], t.shape[2])
        outs = []
        for stage in enc.stages:
            t, coords = stage(t, coords)
            outs.append(t)
    # the framework's out norms: norm0-2 fresh (weight 1, bias 0, eps 1e-5), norm3 = emae's final norm
    outs = [F.layer_norm(t, t.shape[-1:], eps=1e-5) for t in outs[:-1]] + [enc.norm(outs[-1])]
    return [t.permute(0, 3, 1, 2) for t in outs]


def check_swin(cls, file: Path, spec: dict, enc, x: torch.Tensor, window_file: Path, window_spec: dict) -> dict:
    from mmengine.config import ConfigDict

    def build(path: Path, args: dict):
        model = cls(**{k: v for k, v in args.items() if k != "type"},
                    init_cfg=ConfigDict(type="Pretrained", checkpoint=str(path)))
        model.init_weights()
        model.eval()  # (its train() returns None, so not chained)
        return model

    model = build(file, spec["backbone"])
    file_sd = {k[len("backbone."):]: v for k, v in torch.load(file, weights_only=True)["state_dict"].items()}
    params = {k: v for k, v in model.state_dict().items() if not k.endswith("relative_position_index")}
    out = compare(params, file_sd)
    out["buffers_not_in_file"] = pattern(k for k in model.state_dict() if k.endswith("relative_position_index"))
    small = build(window_file, window_spec["backbone"])
    with torch.no_grad():
        theirs = small(x)
    ours = emae_swin_stages(enc, x)
    out["window_for_numerics"] = window_spec["backbone"]["window_size"]
    out["rel_err_per_stage_vs_emae"] = [rel(a, b) for a, b in zip(ours, theirs)]
    merge = ConvMerge.forward
    ConvMerge.forward = framework_merge  # emae with the one documented approximation
    try:
        approx = emae_swin_stages(enc, x)
    finally:
        ConvMerge.forward = merge
    out["rel_err_per_stage_vs_emae_with_group_norm_merges"] = [rel(a, b) for a, b in zip(approx, theirs)]
    return out


# ---------------------------------------------------------------- main


def run(name: str, fn, *args) -> dict:
    print(f"-- {name}", flush=True)
    try:
        result = fn(*args)
    except Exception as e:  # noqa: BLE001 - a framework that cannot be imported or built is a result, not a crash
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    print(json.dumps(result, indent=1), flush=True)
    return result


def source_id(path: Path) -> str:
    commit = path / "COMMIT"
    return commit.read_text().strip() if commit.is_file() else str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectron2-src", type=Path, required=True)
    ap.add_argument("--mmseg-src", type=Path, required=True)
    ap.add_argument("--mmdet-src", type=Path, required=True)
    ap.add_argument("--mmdet-vitdet-src", type=Path, help="a folder with mmdetection's projects/ViTDet/vitdet/vit.py")
    ap.add_argument("--vit", type=Path, help="a ViT checkpoint (default: a perturbed MAE ViT-B/16 at 224)")
    ap.add_argument("--swin", type=Path, help="a UM-MAE Swin checkpoint (default: a perturbed Swin-T at 256)")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    for src in (args.detectron2_src, args.mmseg_src, args.mmdet_src):
        sys.path.insert(1, str(src))
    tmp = Path(tempfile.mkdtemp(prefix="dense-export-"))
    vit_ck = args.vit or synthetic(tmp / "vit.pt", VIT)
    swin_ck = args.swin or synthetic(tmp / "swin.pt", SWIN)
    results: dict = {"sources": {"detectron2": source_id(args.detectron2_src), "mmseg": source_id(args.mmseg_src),
                                 "mmdet": source_id(args.mmdet_src)}}
    vit_loaded, swin_loaded = read_checkpoint(vit_ck), read_checkpoint(swin_ck)
    files = {}
    for to in ("vitdet", "mmseg"):
        files[to] = tmp / f"vit_{to}.pth"
        export_dense(vit_loaded, to, files[to])
    files["swin"], files["swin_w8"] = tmp / "swin_mmdet.pth", tmp / "swin_mmdet_w8.pth"
    export_dense(swin_loaded, "mmdet", files["swin"])  # the default: the fine-tuning window (16)
    export_dense(swin_loaded, "mmdet", files["swin_w8"], window_size=8)  # for the forward comparison
    spec = {k: json.loads(f.with_suffix(".json").read_text()) for k, f in files.items()}
    try:
        export_dense(read_checkpoint(synthetic(tmp / "pvt.pt", PVT)), "mmdet", tmp / "pvt.pth")
        results["pvt"] = "exported"
    except ConfigError as e:
        results["pvt"] = f"refused: {e}"

    enc = build_encoder(vit_loaded)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    results["detectron2_vitdet"] = run("detectron2 ViTDet", check_detectron2, args.detectron2_src, files["vitdet"],
                                       enc, x)
    if args.mmdet_vitdet_src:
        results["mmdet_vitdet"] = run("mmdet ViTDet project", check_mmdet_vitdet, args.mmdet_vitdet_src,
                                      files["vitdet"], enc, x)
    results["mmseg_mae"] = run("mmseg MAE", check_mmseg_mae, files["mmseg"], spec["mmseg"], enc, x)

    m = swin_loaded.config.model
    side = 16 * (m.patch_size // 4) * 8  # stage grids 16 w ... 2 w for window w = 8: no padding, shifts everywhere
    swin_enc = build_pyramid(m, compact=False, window_size=8, img_size=(side, side)).eval()
    swin_enc.load_state_dict({k[len("encoder."):]: v for k, v in swin_loaded.state.items() if k.startswith("encoder.")})
    xs = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))

    def swin_check(module: str):
        def go():
            cls = importlib.import_module(module).SwinTransformer
            return check_swin(cls, files["swin"], spec["swin"], swin_enc, xs, files["swin_w8"], spec["swin_w8"])
        return go

    results["mmdet_swin"] = run("mmdet SwinTransformer", swin_check("mmdet.models.backbones.swin"))
    results["mmseg_swin"] = run("mmseg SwinTransformer", swin_check("mmseg.models.backbones.swin"))
    import mmengine

    results["versions"] = {"torch": torch.__version__, "mmengine": mmengine.__version__}
    for name in ("mmcv", "mmdet", "mmseg", "detectron2", "fvcore"):
        try:
            results["versions"][name] = importlib.import_module(name).__version__
        except Exception as e:  # noqa: BLE001
            results["versions"][name] = f"not importable: {type(e).__name__}"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("sources", "pvt", "versions")}, indent=1))


if __name__ == "__main__":
    main()
