"""Backbones for dense-prediction frameworks: ``emae export --to vitdet | mmseg | mmdet``.

- ``vitdet`` (and ``mmdet`` for a ViT): ``{"model": encoder}`` in the official MAE / timm names, the layout of
  ``mae_pretrain_vit_base.pth``: conv ``patch_embed.proj``, ``pos_embed`` (1, 1 + N, C) at the pre-training grid,
  ``cls_token``, fused ``blocks.N.attn.qkv`` with bias, the final ``norm``; no decoder, no mask token. detectron2's
  ViTDet loads it with ``?matching_heuristics=True``, mmdet's ViTDet project through ``init_cfg=Pretrained``.
- ``mmseg`` (ViT): mmseg's ``MAE`` backbone names, the mapping of its ``beit2mmseg`` converter
  (``patch_embed.projection``, ``layers.N.ln1`` / ``ln2``, ``attn.qkv``, ``ffn.layers.0.0`` / ``ffn.layers.1``), as
  the raw state dict that converter writes; the final norm goes to ``ln1`` (used with ``final_norm=True``).
- ``mmdet`` / ``mmseg`` (Swin): ``{"state_dict": {"backbone." + key}}`` in the names of their ``SwinTransformer``
  (see :mod:`emae.interop.swin_export` for what is exact, approximate and fresh). The same file serves both.
- PVT: refused. emae's PVT (UM-MAE's reference) has no LayerNorm after its stem and merges, and reduces keys and
  values with a 1x1 conv + norm even at ratio 1; mmdet's ``PyramidVisionTransformer`` normalises after every patch
  embedding and skips the reduction at ratio 1 (mmseg has no PVT-v1). The exported network would differ at every
  stage, so no file is written.

Every export also writes ``OUTPUT.json`` (the weights' name with ``.json``): the framework's backbone arguments, and
which of the framework's keys it initialises itself (``fresh``), which are converted approximately, which keys of
the file the stock configs leave unused, and what emae left out.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..archs import family, full_grid_geometry
from ..errors import ConfigError
from .load import Loaded, from_compact
from .official import State, encoder_state
from .swin_export import swin_backbone_args, swin_state

DENSE_TARGETS = ("vitdet", "mmseg", "mmdet")
PVT_REFUSED = ("emae's PVT (UM-MAE's reference) has no LayerNorm after its stem and merges and reduces keys/values "
               "with a 1x1 conv + norm even at ratio 1, mmdet's PyramidVisionTransformer does the opposite on both "
               "(and mmseg has no PVT-v1): its features would change at every stage, so nothing is exported; "
               "fine-tune it with `emae finetune` or UM-MAE's reference detection code")
# official MAE / timm block names -> mmseg MAE layer names (tools/model_converters/beit2mmseg.py)
MMSEG_BLOCK = {"norm1.": "ln1.", "norm2.": "ln2.", "attn.qkv.": "attn.qkv.", "attn.proj.": "attn.proj.",
               "mlp.fc1.": "ffn.layers.0.0.", "mlp.fc2.": "ffn.layers.1."}


@dataclass
class DenseExport:
    """What an export wrote and what the framework makes of it (also saved as ``OUTPUT.json``)."""

    target: str
    file: str
    loads_into: str
    config: str  # the config line that loads the file
    backbone: dict  # the framework backbone's arguments for this encoder
    fresh: list[str] = field(default_factory=list)  # framework keys the file leaves to the framework's init
    approximate: list[str] = field(default_factory=list)  # converted, not exactly equal in function
    unused: list[str] = field(default_factory=list)  # file keys the stock configs do not use
    left_out: list[str] = field(default_factory=list)  # emae keys not written
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"loads into: {self.loads_into}", f"config: {self.config}"]
        for name in ("fresh", "approximate", "unused", "left_out"):
            if getattr(self, name):
                out.append(f"{name.replace('_', ' ')}: {', '.join(getattr(self, name))}")
        return out + self.notes


def _square_grid(loaded: Loaded, target: str) -> int:
    m = loaded.config.model
    h, w = m.image_size
    if h != w:
        raise ConfigError(f"--to {target}: the position embedding is a {h // m.patch_size}x{w // m.patch_size} grid; "
                          f"the framework resamples only square grids (pre-train at a square model.img_size)")
    return h


def _vit_encoder(loaded: Loaded) -> tuple[State, list[str]]:
    """The encoder in official names and what was left out (UM-MAE's mask token, a classifier's head)."""
    state = encoder_state(loaded.state)
    left = [k[len("encoder."):] for k in loaded.state if k.startswith("encoder.") and k[len("encoder."):] not in state]
    return state, left + sorted(loaded.extras)


def _vit_dims(loaded: Loaded) -> tuple[int, int, int, float]:
    from ..models import encoder_dims

    width, depth, heads = encoder_dims(loaded.config.model)
    return width, depth, heads, loaded.config.model.mlp_ratio


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def vitdet(loaded: Loaded, target: str, output: Path) -> tuple[dict, DenseExport]:
    side = _square_grid(loaded, target)
    state, left = _vit_encoder(loaded)
    width, depth, heads, ratio = _vit_dims(loaded)
    m = loaded.config.model
    args = {"type": "ViT", "patch_size": m.patch_size, "in_chans": m.in_chans, "embed_dim": width, "depth": depth,
            "num_heads": heads, "mlp_ratio": _number(ratio), "qkv_bias": True, "pretrain_img_size": side,
            "pretrain_use_cls_token": True, "use_rel_pos": True}
    into = ("detectron2's ViTDet (modeling/backbone/vit.py ViT) and mmdet's ViTDet project (projects/ViTDet ViT), "
            "as they load mae_pretrain_vit_base.pth")
    config = (f'detectron2: train.init_checkpoint = "{output}?matching_heuristics=True"; mmdet ViTDet: '
              f"backbone=dict(type='ViT', ..., init_cfg=dict(type='Pretrained', checkpoint='{output}'))")
    unused = ["cls_token"] + [k for k in ("norm.weight", "norm.bias") if k in state]
    notes = ["the ViTs of ViTDet drop the cls token (its position slot is skipped, pretrain_use_cls_token=True) and "
             "have no final norm; use_rel_pos=True adds zero-initialised rel_pos_h / rel_pos_w",
             "img_size, window_size and window_block_indexes are the detector's choice; the position embedding is "
             "resampled (bicubic) from the pre-training grid"]
    if "norm.weight" not in state:
        notes.append("no final norm: a fine-tuned classifier with global pooling keeps fc_norm instead (left out)")
    fresh = ["blocks.*.attn.rel_pos_h", "blocks.*.attn.rel_pos_w"]
    report = DenseExport(target, str(output), into, config, args, fresh, unused=unused, left_out=left, notes=notes)
    return {"model": state}, report


def mmseg_mae(loaded: Loaded, output: Path) -> tuple[dict, DenseExport]:
    side = _square_grid(loaded, "mmseg")
    state, left = _vit_encoder(loaded)
    out: State = {}
    for key, t in state.items():
        if key.startswith("patch_embed.proj."):
            out["patch_embed.projection." + key[len("patch_embed.proj."):]] = t
        elif key.startswith("norm."):
            out["ln1." + key[len("norm."):]] = t
        elif m := re.match(r"blocks\.(\d+)\.(.+)$", key):
            new = next(n + m.group(2)[len(o):] for o, n in MMSEG_BLOCK.items() if m.group(2).startswith(o))
            out[f"layers.{m.group(1)}.{new}"] = t
        else:  # cls_token, pos_embed
            out[key] = t
    width, depth, heads, ratio = _vit_dims(loaded)
    m = loaded.config.model
    outs = [3, 5, 7, 11] if depth == 12 else sorted({max(0, depth * k // 4 - 1) for k in range(1, 5)})
    args = {"type": "MAE", "img_size": [side, side], "patch_size": m.patch_size, "in_channels": m.in_chans,
            "embed_dims": width, "num_layers": depth, "num_heads": heads, "mlp_ratio": _number(ratio),
            "init_values": 1.0, "norm_cfg": {"type": "LN", "eps": 1e-6}, "final_norm": False, "out_indices": outs}
    config = (f"model=dict(pretrained='{output}', backbone=dict(type='MAE', init_values=1.0, "
              f"norm_cfg=dict(type='LN', eps=1e-6), ...))")
    fresh = ["layers.*.gamma_1", "layers.*.gamma_2", "layers.*.attn.relative_position_bias_table"]
    notes = ["MAE has neither layer scale nor relative-position tables: mmseg's MAE starts them at init_values "
             "(1.0: identity) and zeros (MAEAttention), so with init_values=1.0 the backbone computes the encoder's "
             "function", "img_size is the crop size; mmseg resamples the position embedding (bicubic)"]
    unused = [k for k in ("ln1.weight", "ln1.bias") if k in out]
    report = DenseExport("mmseg", str(output), "mmseg's MAE backbone (mmseg/models/backbones/mae.py)", config, args,
                         fresh, unused=unused, left_out=left, notes=notes)
    if unused:
        report.notes.append("ln1 is the final norm: used with final_norm=True, unused by mmseg's MAE configs "
                            "(final_norm=False)")
    return out, report


def default_window(loaded: Loaded) -> int:
    """The fine-tuning window: UM-MAE's pre-training window on the compact grid, doubled for the full grid (the rule
    of ``emae finetune``); a SimMIM or fine-tuned checkpoint keeps its own."""
    return full_grid_geometry(loaded.config.model, from_compact(loaded))[0]


def swin(loaded: Loaded, target: str, output: Path, window: int | None) -> tuple[dict, DenseExport]:
    window = default_window(loaded) if window is None else window
    encoder = {k[len("encoder."):]: v for k, v in loaded.state.items() if k.startswith("encoder.")}
    state, info = swin_state(encoder, window)
    args = swin_backbone_args(loaded.config.model, window)
    into = "mmdet's and mmseg's SwinTransformer (mmdet/models/backbones/swin.py, mmseg/models/backbones/swin.py)"
    config = (f"backbone=dict(type='SwinTransformer', window_size={window}, ..., "
              f"init_cfg=dict(type='Pretrained', checkpoint='{output}'))")
    notes = ["approximate: PatchMerging normalises the 4C channels of each 2x2 group together where emae normalises "
             "each token over C (affine tiled, conv bias folded into the norm's bias); everything else is exact",
             f"the relative-position tables are emae's position MLP evaluated for window {window}: exact with "
             f"window_size={window} where every stage grid is a multiple of {window} and larger (no padding; the "
             f"framework shifts even a one-window grid, emae does not); --window-size picks another",
             "LayerNorm eps: the framework's 1e-5 everywhere, emae's 1e-6 in the stem, merges and final norm"]
    if info["fold_residual"] > 1e-4:
        notes.append(f"a merge reduction is rank-deficient: its conv bias is folded only up to "
                     f"{info['fold_residual']:.2g}")
    left = info["left_out"] + ["stages.*.blocks.*.attn.pos_mlp (replaced by the tables)"] + sorted(loaded.extras)
    report = DenseExport(target, str(output), into, config, args, info["fresh"], info["approximate"], left_out=left,
                         notes=notes)
    return {"state_dict": {"backbone." + k: v for k, v in state.items()}}, report


def _own_storage(obj):
    """Each tensor with its own storage (a reshaped view would otherwise save the whole checkpoint tensor)."""
    if isinstance(obj, dict):
        return {k: _own_storage(v) for k, v in obj.items()}
    return obj.detach().contiguous().clone()


# (encoder family, target) -> exporter(loaded, target, output, window) -> (object to save, report)
EXPORTERS = {("vit", "vitdet"): lambda loaded, to, out, _: vitdet(loaded, to, out),
             ("vit", "mmdet"): lambda loaded, to, out, _: vitdet(loaded, to, out),
             ("vit", "mmseg"): lambda loaded, to, out, _: mmseg_mae(loaded, out),
             ("swin", "mmdet"): swin, ("swin", "mmseg"): swin}
WINDOWED = {("swin", "mmdet"), ("swin", "mmseg")}
REFUSED = {("swin", "vitdet"): "--to vitdet takes a plain ViT; {arch} is a pyramid encoder: export it --to mmdet or "
                               "--to mmseg (their SwinTransformer)",
           **{("pvt", t): "--to {to}: " + PVT_REFUSED.replace("{", "{{").replace("}", "}}") for t in DENSE_TARGETS}}


def export_dense(loaded: Loaded, to: str, output: str | Path, window_size: int | None = None) -> DenseExport:
    """Write the backbone file for ``to`` and ``OUTPUT.json``; returns the report (the CLI prints its lines)."""
    output = Path(output)
    if to not in DENSE_TARGETS:
        raise ConfigError(f"--to: {to!r} is not one of {list(DENSE_TARGETS)}")
    if output.suffix in (".json", ".safetensors"):
        raise ConfigError(f"--output {output}: the frameworks read a torch.save file; name it .pth "
                          f"(OUTPUT.json is the side file)")
    fam, arch = family(loaded.config.model.arch), loaded.config.model.arch
    if window_size is not None and (fam, to) not in WINDOWED:
        raise ConfigError(f"--window-size is for a Swin exported --to mmdet or mmseg (this is a {fam}, --to {to})")
    if (fam, to) not in EXPORTERS:
        raise ConfigError(REFUSED.get((fam, to), f"--to {to}: no {to} backbone takes a {arch}").format(to=to,
                                                                                                        arch=arch))
    obj, report = EXPORTERS[fam, to](loaded, to, output, window_size)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_own_storage(obj), output)
    output.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
