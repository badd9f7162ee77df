"""Export an encoder: to a timm ``vit_*`` state dict, to a Hugging Face ViTMAE folder, to safetensors.

- timm: the encoder in timm's names (``.pth``, or ``.safetensors`` by suffix), plus ``OUTPUT.json`` (the weights' name with ``.json`` for its suffix) with the
  ``timm.create_model`` name and arguments. It loads into that model with only the classifier head missing.
- hf: ``ViTMAEForPreTraining`` when the checkpoint has a decoder (unless ``encoder_only``), else ``ViTMAEModel``, via
  :mod:`emae.interop.huggingface`; ``from_pretrained`` loads it. An image-processor config carries mean / std.
- safetensors: the encoder in timm's names (``decoder=True`` adds the official ``decoder_*`` keys), with emae's
  model config in the metadata so ``emae.load`` needs no guessing.
- vitdet, mmseg, mmdet: backbones for detectron2 / mmdet / mmseg, via :mod:`emae.interop.dense_export`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..archs import family
from ..errors import ConfigError
from ..models import encoder_dims
from .dense_export import DENSE_TARGETS, export_dense
from .load import Loaded, build_mae
from .official import State, encoder_state, to_official

TARGETS = ("timm", "hf", "safetensors", *DENSE_TARGETS)
# the timm architecture each named size starts from; the exact dims are passed as arguments
TIMM_NAMES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
              "vit_base": "vit_base_patch16_224", "vit_large": "vit_large_patch16_224",
              "vit_huge": "vit_huge_patch14_224"}


def timm_spec(loaded: Loaded) -> dict:
    """``timm.create_model(spec["model_name"], **spec["kwargs"])`` builds the matching ViT."""
    m = loaded.config.model
    width, depth, heads = encoder_dims(m)
    kwargs = dict(img_size=list(m.image_size), patch_size=m.patch_size, in_chans=m.in_chans, embed_dim=width,
                  depth=depth, num_heads=heads, mlp_ratio=m.mlp_ratio)
    return {"model_name": TIMM_NAMES.get(m.arch, "vit_base_patch16_224"), "kwargs": kwargs,
            "mean": loaded.config.data.mean, "std": loaded.config.data.std}


def _contiguous(sd: State) -> State:
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}  # own storage: safetensors refuses views


def _save_tensors(sd: State, path: Path, metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(_contiguous(sd), str(path), metadata=metadata)
    else:
        torch.save(sd, path)


def export_timm(loaded: Loaded, output: str | Path) -> Path:
    output = Path(output)
    if output.suffix == ".json":
        raise ConfigError(f"--output {output}: the weights need a .pth or .safetensors name (OUTPUT.json is the side file)")
    sd = encoder_state(loaded.state)
    sd.update(loaded.extras)  # a fine-tuned classifier keeps its fc_norm and head
    _save_tensors(sd, output)
    spec = timm_spec(loaded)
    spec["file"] = str(output)
    output.with_suffix(".json").write_text(json.dumps(spec, indent=2) + "\n")
    return output


def export_hf(loaded: Loaded, output: str | Path, encoder_only: bool = False) -> Path:
    """``encoder_only``: a ``ViTMAEModel`` folder even from a checkpoint with a decoder, so that
    ``ViTMAEModel.from_pretrained`` finds exactly its weights (no table of unexpected decoder keys)."""
    from .huggingface import _transformers, to_hf

    output = Path(output)
    if loaded.has_decoder:
        hf = to_hf(build_mae(loaded))
        hf = hf.vit if encoder_only else hf
    else:  # encoder only: the converter needs a decoder; ViTMAEModel leaves it out
        stub = build_mae(Loaded(loaded.path, loaded.source, loaded.config, _with_decoder(loaded)))
        hf = to_hf(stub).vit
    hf.save_pretrained(str(output))
    m, d = loaded.config.model, loaded.config.data
    h, w = m.image_size
    _transformers().ViTImageProcessor(size={"height": h, "width": w}, image_mean=d.mean, image_std=d.std,
                                      resample=3).save_pretrained(str(output))
    return output


def _with_decoder(loaded: Loaded) -> State:
    """The encoder plus a freshly built decoder of the config's dims (only to drive the converter)."""
    from ..models import build_model

    fresh = build_model(loaded.config).state_dict()
    return {**loaded.state, **{k: v for k, v in fresh.items() if k.startswith("decoder.")}}


def export_safetensors(loaded: Loaded, output: str | Path, decoder: bool = False) -> Path:
    output = Path(output)
    if output.suffix != ".safetensors":
        raise ConfigError(f"--output {output}: a safetensors export needs a .safetensors file name")
    state = loaded.state if decoder else {k: v for k, v in loaded.state.items() if k.startswith("encoder.")}
    sd = {**to_official(state), **loaded.extras}
    meta = {"format": "emae", "emae_model": json.dumps(dataclasses.asdict(loaded.config.model)),
            "emae_data": json.dumps(dataclasses.asdict(loaded.config.data))}
    _save_tensors(sd, output, meta)
    return output


def export(loaded: Loaded, to: str, output: str | Path, decoder: bool = False, encoder_only: bool = False,
           window_size: int | None = None) -> Path:
    if to in DENSE_TARGETS:
        return Path(export_dense(loaded, to, output, window_size).file)
    if window_size is not None:
        raise ConfigError(f"--window-size is for a Swin exported --to mmdet or mmseg (not --to {to})")
    if family(loaded.config.model.arch) != "vit":  # timm's VisionTransformer and HF's ViTMAE are plain ViTs
        raise ConfigError(f"{loaded.path}: --to {to} takes a ViT; {loaded.config.model.arch} (UM-MAE / SimMIM pyramid) "
                          f"checkpoints go --to mmdet or mmseg (Swin), or as they are to `emae finetune`")
    if to == "timm":
        return export_timm(loaded, output)
    if to == "hf":
        return export_hf(loaded, output, encoder_only)
    if to == "safetensors":
        return export_safetensors(loaded, output, decoder)
    raise ConfigError(f"--to: {to!r} is not one of {list(TARGETS)}")
