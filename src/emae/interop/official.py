"""The official MAE / timm key layout <-> emae's.

Encoder keys are timm ``VisionTransformer`` names (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.N.*``, ``norm.*``): emae's are the same with an ``encoder.`` prefix. The official full checkpoints add
``decoder_embed``, ``mask_token``, ``decoder_pos_embed``, ``decoder_blocks.N.*``, ``decoder_norm``,
``decoder_pred``, which are emae's ``decoder.embed``, ``decoder.mask_token``, ... ``decoder.pred``.
A classifier (fine-tuned) adds ``head.*`` and ``fc_norm.*``; those are returned apart.
"""

from __future__ import annotations

import torch

from ..errors import CheckpointError

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
CLASSIFIER_PREFIXES = ("head.", "fc_norm.")
# official name (prefix) -> emae name (prefix); order matters: "decoder_pos_embed" before "decoder_"
DECODER_NAMES = {
    "decoder_embed.": "decoder.embed.",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.pos_embed",
    "decoder_blocks.": "decoder.blocks.",
    "decoder_norm.": "decoder.norm.",
    "decoder_pred.": "decoder.pred.",
}
STRIP_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel and torch.compile wrappers

State = dict[str, torch.Tensor]


def strip_wrappers(sd: State) -> State:
    for prefix in STRIP_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old):]
    return None


def is_official_layout(sd: State) -> bool:
    return "cls_token" in sd and "patch_embed.proj.weight" in sd


def is_emae_layout(sd: State) -> bool:
    return "encoder.cls_token" in sd and "encoder.patch_embed.proj.weight" in sd


def from_official(sd: State) -> tuple[State, State]:
    """Official MAE / timm keys -> (emae MAE keys, classifier extras ``head.*`` / ``fc_norm.*``)."""
    out: State = {}
    extras: State = {}
    for key, t in strip_wrappers(sd).items():
        if key.startswith(CLASSIFIER_PREFIXES):
            extras[key] = t
        elif key.startswith(ENCODER_PREFIXES):
            out["encoder." + key] = t
        elif (new := _rename(key, DECODER_NAMES)) is not None:
            out[new] = t
        else:
            raise CheckpointError(f"state dict key {key!r} is not part of a plain MAE / timm ViT")
    if not any(k.startswith("decoder.") and k != "decoder.mask_token" for k in out):
        out.pop("decoder.mask_token", None)  # encoder-only releases may keep the mask token alone
    return out, extras


def to_official(sd: State) -> State:
    """emae MAE keys -> official MAE keys (the encoder part is also timm's layout)."""
    back = {new: old for old, new in DECODER_NAMES.items()}
    out: State = {}
    for key, t in sd.items():
        if key.startswith("encoder."):
            out[key[len("encoder."):]] = t
        elif (old := _rename(key, back)) is not None:
            out[old] = t
        else:
            raise CheckpointError(f"no official MAE name for {key!r}")
    return out


PRETRAIN_ONLY = ("encoder.mask_token",)  # UM-MAE's secondary-mask token on ViT: no use once pre-training ends


def encoder_state(sd: State) -> State:
    """The ``encoder.*`` part of an emae state dict, in timm names, without pre-training-only tensors."""
    return {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.") and k not in PRETRAIN_ONLY}
