"""emae's Swin (UM-MAE's reference variant) in the key layout of mmdet's and mmseg's ``SwinTransformer``.

What maps, piece by piece (emae -> framework):

- exact, one to one: the stem (4x4-stride conv + LayerNorm: ``patch_embed.projection`` / ``patch_embed.norm``), every
  block's norms, ``qkv``, ``proj`` and MLP (``attn.w_msa.qkv``, ``attn.w_msa.proj``, ``ffn.layers.0.0``,
  ``ffn.layers.1``), and the final norm (``norm3``, the norm of the last stage's output);
- exact for one window: the position MLP becomes each block's ``relative_position_bias_table``. On the regular grid
  of a dense task, the bias between a query and a key depends only on their offset inside the window, so the MLP
  evaluated at every offset of a ``window x window`` window *is* a table (the framework's window must be the exported
  one; mmdet / mmseg resample a table of another size bicubically, which is no longer exact);
- approximate: the 2x2 merges. emae normalises each of the 4 tokens over its C channels, then applies a 2x2 conv
  with a bias; the framework's ``PatchMerging`` normalises the 4C concatenated channels together and has no bias.
  The conv becomes the ``reduction`` exactly (channel order of ``nn.Unfold``: c * 4 + kh * 2 + kw), the per-token
  affine is tiled over the 4 tokens, and the conv bias is folded into the norm's bias (``beta' = beta + W^+ b``, exact
  when the reduction has full row rank). Only the normalising statistics differ: per token there, per 2x2 group here;
- fresh (the framework's own init, as for any checkpoint): the output norms of stages 1-3 (``norm0``-``norm2``),
  which emae's encoder does not have (and ``norm3`` for a fine-tuned classifier, whose encoder has no final norm);
  they act on the outputs only, not on the trunk.
- left out: UM-MAE's secondary-mask token (pre-training only).
"""

from __future__ import annotations

import re

import torch

from ..errors import CheckpointError, ConfigError
from ..models.pyramid import signed_log
from .official import State

APPROXIMATE = "stages.{i}.downsample.norm"


def offsets(window: int) -> torch.Tensor:
    """((2w-1)^2, 2) (row, col) offsets query - key in the table order of Swin (mmdet's and timm's):
    entry (dy + w - 1) * (2w - 1) + (dx + w - 1)."""
    r = torch.arange(-(window - 1), window, dtype=torch.float32)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dy.flatten(), dx.flatten()], dim=-1)


def bias_table(mlp: dict[str, torch.Tensor], window: int) -> torch.Tensor:
    """The position MLP (weights ``0.weight`` ... ``2.bias``) at every in-window offset: ((2w-1)^2, heads).
    emae's MLP reads d = key - query; the table is indexed by query - key."""
    d = signed_log(-offsets(window)).to(mlp["0.weight"].dtype)
    hidden = torch.relu(d @ mlp["0.weight"].T + mlp["0.bias"])
    return hidden @ mlp["2.weight"].T + mlp["2.bias"]


def patch_merging(norm_w: torch.Tensor, norm_b: torch.Tensor, conv_w: torch.Tensor,
                  conv_b: torch.Tensor) -> tuple[State, float]:
    """(per-token LayerNorm, 2x2 conv) -> ``PatchMerging``'s ``norm`` over 4C and bias-free ``reduction``, and the
    residual of folding the conv bias into the norm (0 when the reduction has full row rank)."""
    out_c, in_c = conv_w.shape[:2]
    reduction = conv_w.reshape(out_c, in_c * 4)  # Unfold's channel order: c * 4 + kh * 2 + kw
    w64 = reduction.double()
    fold = torch.linalg.pinv(w64) @ conv_b.double()
    residual = float((w64 @ fold - conv_b.double()).abs().max())
    beta = norm_b.repeat_interleave(4) + fold.to(norm_b.dtype)
    return {"norm.weight": norm_w.repeat_interleave(4), "norm.bias": beta, "reduction.weight": reduction}, residual


_BLOCK = {"norm1.": "norm1.", "attn.qkv.": "attn.w_msa.qkv.", "attn.proj.": "attn.w_msa.proj.", "norm2.": "norm2.",
          "mlp.fc1.": "ffn.layers.0.0.", "mlp.fc2.": "ffn.layers.1."}


def _block_key(rest: str) -> str | None:
    for old, new in _BLOCK.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def swin_state(encoder: State, window: int) -> tuple[State, dict]:
    """emae Swin encoder keys (without ``encoder.``) -> mmdet / mmseg ``SwinTransformer`` keys (without
    ``backbone.``), and a report: ``approximate`` keys, ``fresh`` keys, ``left_out`` emae keys, ``fold_residual``."""
    if window < 1:
        raise ConfigError(f"--window-size: {window} must be a positive integer")
    out: State = {}
    mlps: dict[str, dict[str, torch.Tensor]] = {}
    merges: dict[int, dict[str, torch.Tensor]] = {}
    left_out, residual = [], 0.0
    for key, t in encoder.items():
        if key == "mask_token":
            left_out.append(key)
        elif key.startswith("stem.proj."):
            out["patch_embed.projection." + key[len("stem.proj."):]] = t
        elif key.startswith("stem.norm."):
            out["patch_embed.norm." + key[len("stem.norm."):]] = t
        elif key.startswith("norm."):
            out["norm3." + key[len("norm."):]] = t
        elif m := re.match(r"stages\.(\d+)\.downsample\.(norm|proj)\.(weight|bias)$", key):
            merges.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = t
        elif m := re.match(r"(stages\.\d+\.blocks\.\d+\.)attn\.pos_mlp\.(.+)$", key):
            mlps.setdefault(m.group(1), {})[m.group(2)] = t
        elif (m := re.match(r"(stages\.\d+\.blocks\.\d+\.)(.+)$", key)) and (new := _block_key(m.group(2))):
            out[m.group(1) + new] = t
        else:
            raise CheckpointError(f"Swin weight {key!r} has no place in mmdet's / mmseg's SwinTransformer")
    for prefix, mlp in mlps.items():
        out[prefix + "attn.w_msa.relative_position_bias_table"] = bias_table(mlp, window)
    approximate = []
    for stage, parts in sorted(merges.items()):  # emae merges at the start of stage i, the framework at the end of i-1
        merged, res = patch_merging(parts["norm.weight"], parts["norm.bias"], parts["proj.weight"], parts["proj.bias"])
        residual = max(residual, res)
        out.update({f"stages.{stage - 1}.downsample.{k}": v for k, v in merged.items()})
        approximate.append(APPROXIMATE.format(i=stage - 1))
    stages = 1 + max(int(k.split(".")[1]) for k in out if k.startswith("stages."))
    fresh = [f"norm{i}" for i in range(stages) if f"norm{i}.weight" not in out]  # norm3: unless emae's final norm
    return out, {"approximate": approximate, "fresh": fresh, "left_out": left_out, "fold_residual": residual}


def framework_merge(merge, x: torch.Tensor) -> torch.Tensor:
    """What the framework's ``PatchMerging`` computes from emae's ``ConvMerge`` (``merge``) after the conversion:
    the LayerNorm over the 4C channels of each 2x2 group instead of each token's C; (B, H, W, C) -> (B, H/2, W/2, C').
    For measuring the approximation; emae's encoder never uses it."""
    b, h, w, c = x.shape
    g = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(2, 3).reshape(b, h // 2, w // 2, 4 * c)
    g = torch.nn.functional.layer_norm(g, (4 * c,), eps=merge.norm.eps)
    y = g.reshape(b, h // 2, w // 2, 2, 2, c).transpose(2, 3).reshape(b, h, w, c) * merge.norm.weight + merge.norm.bias
    return merge.proj(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def swin_backbone_args(model, window: int) -> dict:
    """mmdet's / mmseg's ``SwinTransformer`` arguments for this encoder (``model``: the encoder's ModelConfig)."""
    from ..archs import pyramid_dims, stem_stride

    dims, depths, heads = pyramid_dims(model)
    stride = stem_stride(model.patch_size)
    ratio = model.mlp_ratio
    return {"type": "SwinTransformer", "pretrain_img_size": list(model.image_size), "in_channels": model.in_chans,
            "embed_dims": dims[0], "patch_size": stride, "strides": [stride, 2, 2, 2], "window_size": window,
            "mlp_ratio": int(ratio) if float(ratio).is_integer() else ratio, "depths": depths, "num_heads": heads,
            "qkv_bias": True, "patch_norm": True, "use_abs_pos_embed": False,
            "out_indices": [0, 1, 2, 3]}
