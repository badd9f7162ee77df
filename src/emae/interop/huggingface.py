"""Convert an MAE to and from Hugging Face ``transformers.ViTMAEForPreTraining``.

Weights map one to one, except that emae's fused ``attn.qkv`` is split into HF's query / key / value.
The fixed sin-cos position embeddings are copied too: both layouts agree, but a freshly constructed
``ViTMAEForPreTraining`` (transformers 5.x) holds zeros there until weights are loaded.
HF always masks at random and needs square images; ``transformers`` is imported only when called.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..config import Config, DataConfig, MaskConfig, ModelConfig
from ..errors import CheckpointError, ConfigError, EmaeError
from ..models import VIT_SIZES, MaskedAutoencoder, build_model
from .official import PRETRAIN_ONLY

if TYPE_CHECKING:
    from types import ModuleType

    from transformers import ViTMAEConfig, ViTMAEForPreTraining

LAYER_NORM_EPS = 1e-6  # every emae LayerNorm

# emae name inside a block -> HF name (index 0: transformers >= 5, index 1: transformers 4.x)
_BLOCK_NAMES = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "attn.proj": ("attention.o_proj", "attention.output.dense"),
    "mlp.fc1": ("mlp.fc1", "intermediate.dense"),
    "mlp.fc2": ("mlp.fc2", "output.dense"),
}
_QKV_NAMES = (
    ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
)
_STACKS = {"encoder.blocks": ("vit.layers", "vit.encoder.layer"), "decoder.blocks": ("decoder.decoder_layers",) * 2}
# emae key or key prefix outside the blocks -> HF
_TOP = {
    "encoder.cls_token": "vit.embeddings.cls_token",
    "encoder.pos_embed": "vit.embeddings.position_embeddings",
    "encoder.patch_embed.proj": "vit.embeddings.patch_embeddings.projection",
    "encoder.norm": "vit.layernorm",
    "decoder.embed": "decoder.decoder_embed",
    "decoder.mask_token": "decoder.mask_token",
    "decoder.pos_embed": "decoder.decoder_pos_embed",
    "decoder.norm": "decoder.decoder_norm",
    "decoder.pred": "decoder.decoder_pred",
}
_EMAE_BLOCK = re.compile(r"(encoder\.blocks|decoder\.blocks)\.(\d+)\.(.+)\.(weight|bias)")
_HF_BLOCK = re.compile(r"(vit\.layers|vit\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)")


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise EmaeError("Hugging Face export needs transformers: pip install transformers") from None
    return transformers


def _split_top(key: str) -> tuple[str, str]:
    """'encoder.norm.weight' -> ('encoder.norm', '.weight'); 'encoder.cls_token' -> ('encoder.cls_token', '')."""
    if key in _TOP or key in _TOP.values():
        return key, ""
    base, _, kind = key.rpartition(".")
    return base, "." + kind


# ---------------------------------------------------------------- state dicts


def state_dict_to_hf(sd: dict[str, torch.Tensor], legacy: bool = False) -> dict[str, torch.Tensor]:
    """emae MAE keys -> ``ViTMAEForPreTraining`` keys (``legacy``: transformers 4.x names); qkv is split."""
    v = int(legacy)
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if m := _EMAE_BLOCK.fullmatch(key):
            stack, i, name, kind = m.groups()
            prefix = f"{_STACKS[stack][v]}.{i}"
            if name == "attn.qkv":
                for hf_name, part in zip(_QKV_NAMES[v], t.chunk(3)):
                    out[f"{prefix}.{hf_name}.{kind}"] = part.clone()  # own storage: safetensors refuses shared views
            elif name in _BLOCK_NAMES:
                out[f"{prefix}.{_BLOCK_NAMES[name][v]}.{kind}"] = t
            else:
                raise CheckpointError(f"no Hugging Face ViTMAE name for {key!r}")
            continue
        base, tail = _split_top(key)
        if base not in _TOP:
            raise CheckpointError(f"no Hugging Face ViTMAE name for {key!r}")
        out[_TOP[base] + tail] = t
    return out


def state_dict_from_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``ViTMAEForPreTraining`` keys (transformers 4.x or 5.x) -> emae MAE keys; query/key/value are fused."""
    stacks = {hf: emae for emae, names in _STACKS.items() for hf in names}
    block_names = {hf: emae for emae, names in _BLOCK_NAMES.items() for hf in names}
    qkv_index = {hf: j for names in _QKV_NAMES for j, hf in enumerate(names)}
    top = {hf: emae for emae, hf in _TOP.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, list[torch.Tensor | None]] = {}
    for key, t in sd.items():
        if m := _HF_BLOCK.fullmatch(key):
            stack, i, name, kind = m.groups()
            prefix = f"{stacks[stack]}.{i}"
            if name in qkv_index:
                qkv.setdefault(f"{prefix}.attn.qkv.{kind}", [None, None, None])[qkv_index[name]] = t
            elif name in block_names:
                out[f"{prefix}.{block_names[name]}.{kind}"] = t
            else:
                raise CheckpointError(f"no emae name for Hugging Face key {key!r}")
            continue
        base, tail = _split_top(key)
        if base not in top:
            raise CheckpointError(f"no emae name for Hugging Face key {key!r}")
        out[top[base] + tail] = t
    for key, parts in qkv.items():
        if any(p is None for p in parts):
            raise CheckpointError(f"Hugging Face state dict lacks part of query/key/value for {key!r}")
        out[key] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------- models


def to_hf_config(model: MaskedAutoencoder) -> ViTMAEConfig:
    """The ``ViTMAEConfig`` with ``model``'s dimensions (LayerNorm eps 1e-6, exact GELU, qkv bias, no dropout)."""
    tf = _transformers()
    enc, dec = model.encoder, model.decoder
    h, w = enc.patch_embed.img_size
    if h != w:
        raise ConfigError(f"Hugging Face ViTMAEForPreTraining only supports square images; this model takes {h}x{w}")
    return tf.ViTMAEConfig(
        hidden_size=enc.embed_dim,
        num_hidden_layers=len(enc.blocks),
        num_attention_heads=enc.blocks[0].attn.num_heads,
        intermediate_size=enc.blocks[0].mlp.fc1.out_features,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=LAYER_NORM_EPS,
        image_size=h,
        patch_size=enc.patch_size,
        num_channels=enc.in_chans,
        qkv_bias=True,
        decoder_hidden_size=dec.embed_dim,
        decoder_num_hidden_layers=len(dec.blocks),
        decoder_num_attention_heads=dec.blocks[0].attn.num_heads,
        decoder_intermediate_size=dec.blocks[0].mlp.fc1.out_features,
        mask_ratio=model.mask_ratio,
        norm_pix_loss=bool(getattr(model.loss, "norm_pix", False)),
    )


def to_hf(model: MaskedAutoencoder) -> ViTMAEForPreTraining:
    """A ``ViTMAEForPreTraining`` with ``model``'s weights, fp32, in eval mode, on ``model``'s device."""
    tf, config = _transformers(), to_hf_config(model)
    device = model.encoder.cls_token.device
    with torch.device("meta"):  # skip HF's random init; every tensor is assigned below
        hf = tf.ViTMAEForPreTraining(config)
    legacy = any(k.startswith("vit.encoder.layer.") for k in hf.state_dict())
    # UM-MAE's ViT: the secondary-mask token only serves pre-training; the rest is MAE's model
    sd = state_dict_to_hf({k: v for k, v in model.state_dict().items() if k not in PRETRAIN_ONLY}, legacy)
    sd = {k: v.detach().to(device, torch.float32, copy=True) for k, v in sd.items()}
    hf.load_state_dict(sd, strict=True, assign=True)
    if any(t.is_meta for t in [*hf.parameters(), *hf.buffers()]):  # a buffer outside the state dict: build for real
        hf = tf.ViTMAEForPreTraining(config).to(device)
        hf.load_state_dict(sd, strict=True)
    return hf.eval()


def _side(value: Any, name: str) -> int:
    """HF allows int or pair for image_size / patch_size; emae needs one value here."""
    if isinstance(value, int):
        return value
    a, b = value
    if a != b:
        raise ConfigError(f"Hugging Face config {name} {list(value)} is not square; emae's MAE import needs square")
    return int(a)


def config_from_hf(hf_config: ViTMAEConfig) -> Config:
    """An emae :class:`Config` whose model and mask sections match ``hf_config``."""
    c = hf_config
    if not c.qkv_bias:
        raise ConfigError("Hugging Face config has qkv_bias=False; emae's blocks always have a qkv bias")
    if c.hidden_act != "gelu":
        raise ConfigError(f"Hugging Face config has hidden_act={c.hidden_act!r}; emae's blocks use exact GELU ('gelu')")
    mlp_ratio = c.intermediate_size / c.hidden_size
    if int(c.hidden_size * mlp_ratio) != c.intermediate_size or int(
        c.decoder_hidden_size * mlp_ratio
    ) != c.decoder_intermediate_size:
        raise ConfigError(
            f"Hugging Face intermediate sizes {c.intermediate_size} / {c.decoder_intermediate_size} need one "
            "mlp_ratio for encoder and decoder, as emae uses"
        )
    if c.layer_norm_eps != LAYER_NORM_EPS:
        warnings.warn(
            f"the Hugging Face model uses LayerNorm eps {c.layer_norm_eps:g}; emae always uses {LAYER_NORM_EPS:g} "
            "(the original MAE's), so outputs differ very slightly",
            stacklevel=2,
        )
    dims = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads)
    arch = next((name for name, size in VIT_SIZES.items() if size == dims), "vit_base")
    chans = c.num_channels
    model = ModelConfig(
        arch=arch,
        embed_dim=c.hidden_size,
        depth=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        img_size=_side(c.image_size, "image_size"),
        patch_size=_side(c.patch_size, "patch_size"),
        in_chans=chans,
        mlp_ratio=mlp_ratio,
        decoder_embed_dim=c.decoder_hidden_size,
        decoder_depth=c.decoder_num_hidden_layers,
        decoder_num_heads=c.decoder_num_attention_heads,
        norm_pix_loss=bool(c.norm_pix_loss),
    )
    data = DataConfig() if chans == 3 else DataConfig(mean=[0.5] * chans, std=[0.5] * chans)
    return Config(model=model, mask=MaskConfig(ratio=float(c.mask_ratio)), data=data)


def from_hf(hf_model: ViTMAEForPreTraining) -> MaskedAutoencoder:
    """An emae MAE with ``hf_model``'s weights (loaded strictly), fp32, in eval mode, on ``hf_model``'s device."""
    model = build_model(config_from_hf(hf_model.config))
    sd = state_dict_from_hf(hf_model.state_dict())
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise CheckpointError(f"Hugging Face weights do not fit the emae model: {detail}") from None
    device = next(hf_model.parameters()).device
    return model.to(device=device, dtype=torch.float32).eval()
