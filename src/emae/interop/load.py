"""Read a checkpoint in any format emae knows, and build a model from it.

Formats, recognised by content: an emae checkpoint (pre-training ``checkpoint-*.pt`` or fine-tuned ``best.pt``);
the official MAE ``.pth`` (``{"model": state_dict}``, encoder-only or full with ``decoder_*`` keys); a timm ViT
state dict (raw, or under ``state_dict`` / ``model``) as ``.pth`` or ``.safetensors``; a Hugging Face ViTMAE
folder (``config.json`` + weights). Everything is normalised to emae's MAE key layout (``encoder.*``,
``decoder.*``) plus classifier extras (``head.*``, ``fc_norm.*``), with dimensions taken from the stored config
or inferred from the tensors' shapes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import Config, DataConfig, ModelConfig, config_from_dict, set_key
from ..engine.checkpoint import FORMAT, FORMAT_VERSION
from ..engine.safe_load import REFUSED, TRUST_HINT, refused_object, torch_load
from ..errors import CheckpointError, ConfigError, UnsafeCheckpointError
from ..models import VIT_SIZES, MaskedAutoencoder, ViTEncoder, build_model, encoder_dims
from .official import State, encoder_state, from_official, is_emae_layout, is_official_layout, strip_wrappers

KNOWN = "an emae checkpoint, an official MAE .pth, a timm ViT state dict (.pth/.safetensors) or a Hugging Face ViTMAE folder"
CLASSIFIER_FORMAT = "emae-classifier"


@dataclass
class Loaded:
    """A checkpoint normalised to emae's layout."""

    path: str
    source: str  # emae | emae-classifier | official | timm | safetensors | hf | random
    config: Config  # model dims (stored or inferred), data mean/std, mask
    state: State  # encoder.* and, for full checkpoints, decoder.*
    extras: State = field(default_factory=dict)  # classifier head.* / fc_norm.*
    classes: list[str] | None = None  # a fine-tuned classifier's class names

    @property
    def has_decoder(self) -> bool:
        return any(k.startswith("decoder.") for k in self.state)

    @property
    def num_classes(self) -> int | None:
        head = self.extras.get("head.weight")
        return int(head.shape[0]) if head is not None else None


# ---------------------------------------------------------------- dimensions


def _count_blocks(state: State, prefix: str) -> int:
    ids = {int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def infer_model_config(state: State, num_heads: int | None = None, decoder_num_heads: int | None = None,
                       img_size: int | list[int] | None = None) -> ModelConfig:
    """Dimensions of an emae-layout state dict. Attention heads are not visible in the weights: the encoder's come
    from the named sizes by width (else width / 64), the decoder's are width / 32 (MAE's 512 x 16); pass them to
    override. The image size comes from the position-embedding length (a square grid) unless given."""
    proj = state["encoder.patch_embed.proj.weight"]
    width, in_chans, ph, pw = proj.shape
    if ph != pw:
        raise CheckpointError(f"patch embedding kernel {ph}x{pw} is not square; emae's ViT uses square patches")
    depth = _count_blocks(state, "encoder.blocks")
    if depth == 0:
        raise CheckpointError("state dict has no encoder blocks (blocks.0.*)")
    named = [name for name, (w, _, _) in VIT_SIZES.items() if w == width]
    if num_heads is None:
        if named:
            num_heads = VIT_SIZES[named[0]][2]
        elif width % 64 == 0:
            num_heads = width // 64
        else:
            raise CheckpointError(f"cannot infer the attention heads of width {width}; pass --num-heads")
    mlp_ratio = state["encoder.blocks.0.mlp.fc1.weight"].shape[0] / width
    if img_size is None:
        tokens = state["encoder.pos_embed"].shape[1] - 1
        side = round(tokens**0.5)
        if side * side != tokens:
            raise CheckpointError(f"position embedding of {tokens} patches is not a square grid; pass --img-size")
        img_size = side * ph
    m = ModelConfig(arch=named[0] if named else "vit_base", embed_dim=width, depth=depth, num_heads=num_heads,
                    img_size=img_size, patch_size=ph, in_chans=in_chans, mlp_ratio=mlp_ratio)
    if "decoder.embed.weight" in state:
        dim = state["decoder.embed.weight"].shape[0]
        m.decoder_embed_dim = dim
        m.decoder_depth = _count_blocks(state, "decoder.blocks")
        m.decoder_num_heads = decoder_num_heads or max(1, dim // 32)
        ratio = state["decoder.blocks.0.mlp.fc1.weight"].shape[0] / dim if m.decoder_depth else mlp_ratio
        if ratio != mlp_ratio:
            raise CheckpointError(f"decoder MLP ratio {ratio:g} differs from the encoder's {mlp_ratio:g}; emae uses one")
    return m


def _config(model: ModelConfig) -> Config:
    chans = model.in_chans
    data = DataConfig() if chans == 3 else DataConfig(mean=[0.5] * chans, std=[0.5] * chans)
    return Config(model=model, data=data)


# ---------------------------------------------------------------- reading


def _torch_load(path: Path, trust: bool) -> object:
    """Weights only (see :mod:`emae.engine.safe_load`) unless ``trust``: a file from a stranger runs no code."""
    try:
        return torch_load(path, "cpu", trust)
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise CheckpointError(f"{path} is not {KNOWN} ({type(e).__name__}: {first})") from None


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _from_state_dict(path: Path, sd: State, source: str, hints: dict, model: ModelConfig | None = None) -> Loaded:
    sd = strip_wrappers(sd)
    extras: State = {}
    if is_emae_layout(sd):
        state = {k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder."))}
    elif is_official_layout(sd):
        state, extras = from_official(sd)
    elif any(k.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for k in sd):
        from .huggingface import state_dict_from_hf

        state = state_dict_from_hf({k if k.startswith(("vit.", "decoder.")) else "vit." + k: v for k, v in sd.items()})
        source = "hf"
    else:
        raise CheckpointError(f"{path} holds tensors but not a ViT emae recognises (expected {KNOWN})")
    model = model or infer_model_config(state, **hints)
    return Loaded(str(path), source, _config(model), state, extras)


def _read_safetensors(path: Path, hints: dict) -> Loaded:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        sd = load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__})") from None
    model = ModelConfig(**json.loads(meta["emae_model"])) if "emae_model" in meta else None
    loaded = _from_state_dict(path, sd, "safetensors", hints, model)
    if "emae_data" in meta:
        loaded.config.data = DataConfig(**json.loads(meta["emae_data"]))
    return loaded


def _from_pretrained(cls, path: Path, trust: bool):
    """``from_pretrained`` of a local folder: safetensors when present, a ``.bin`` weights-only unless ``trust``,
    never remote code; a refused or broken file is one line."""
    try:
        return cls.from_pretrained(str(path), weights_only=not trust, trust_remote_code=False, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers' errors carry pages of advice
        text = str(e)
        if not trust and "Weights only load failed" in text:
            what = refused_object(text) or "Python objects"
            raise UnsafeCheckpointError(f"{path}: its weights file holds {what}, {REFUSED}; {TRUST_HINT}") from None
        first = (text.strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: Hugging Face cannot load it ({type(e).__name__}: {first})") from None


def _read_hf_folder(path: Path, trust: bool) -> Loaded:
    from .huggingface import _transformers, config_from_hf, from_hf, state_dict_from_hf

    info = json.loads((path / "config.json").read_text())
    if info.get("model_type") != "vit_mae":
        raise CheckpointError(f"{path} is a Hugging Face {info.get('model_type')!r} model; emae reads ViTMAE")
    tf = _transformers()
    if "ViTMAEForPreTraining" in (info.get("architectures") or ["ViTMAEForPreTraining"]):
        hf = _from_pretrained(tf.ViTMAEForPreTraining, path, trust)
        model = from_hf(hf)
        return Loaded(str(path), "hf", config_from_hf(hf.config), model.state_dict())
    hf = _from_pretrained(tf.ViTMAEModel, path, trust)  # encoder only
    state = state_dict_from_hf({"vit." + k: v for k, v in hf.state_dict().items()})
    cfg = config_from_hf(hf.config)
    return Loaded(str(path), "hf", cfg, state)


CLASSIFIER_VERSION = 2


def upgrade_classifier(obj: dict) -> dict:
    """A fine-tuned classifier file in today's layout. Version 1 (emae before the one-loop refactor) kept the
    classifier's description under ``vit``, also for Swin / PVT; version 2 names it ``classifier``."""
    version = obj.get("version", 1)
    if version > CLASSIFIER_VERSION:
        raise CheckpointError(f"classifier format version {version}; this emae reads up to {CLASSIFIER_VERSION}")
    if version == 1:
        obj = {**obj, "version": CLASSIFIER_VERSION, "classifier": obj.get("vit") or {}}
        obj.pop("vit", None)
    return obj


def _read_classifier(path: Path, obj: dict, hints: dict) -> Loaded:
    """A fine-tuned classifier (``best.pt``, or a fine-tune's run checkpoint): its encoder as the state, head.* and
    fc_norm.* as extras; a pyramid's fine-tuning geometry (Swin's window, PVT's reduction ratios) in its config."""
    model = ModelConfig(**obj["model_config"])
    sd = obj["model"]
    spec = obj.get("classifier") or {}
    for key in ("window_size", "sr_ratios"):  # a pyramid's fine-tuning geometry
        if spec.get(key) is not None:
            setattr(model, key, spec[key])
    if any(k.startswith("encoder.") for k in sd):  # emae's own layout (PyramidClassifier): encoder.*, fc_norm, head
        state = {k: v for k, v in sd.items() if k.startswith("encoder.")}
        extras = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
        loaded = Loaded(str(path), CLASSIFIER_FORMAT, _config(model), state, extras)
    else:
        loaded = _from_state_dict(path, sd, CLASSIFIER_FORMAT, hints, model)
    loaded.config.data = DataConfig(**obj["data"])
    loaded.classes = obj.get("classes")
    return loaded


def read_checkpoint(path: str | Path, num_heads: int | None = None, decoder_num_heads: int | None = None,
                    img_size: int | list[int] | None = None, trust: bool = False) -> Loaded:
    """Any known checkpoint -> :class:`Loaded`. The hints override inferred dimensions (not stored configs).
    Pickled files load weights-only; ``trust=True`` unpickles in full, which can run code from the file."""
    path = Path(path)
    hints = {"num_heads": num_heads, "decoder_num_heads": decoder_num_heads, "img_size": img_size}
    if path.is_dir():
        if (path / "config.json").is_file():
            return _read_hf_folder(path, trust)
        from ..engine.sharded import is_sharded, load_sharded

        if is_sharded(path):  # a sharded FSDP checkpoint, gathered here
            obj = load_sharded(path, trust)
            return Loaded(str(path), "emae", config_from_dict(obj["config"]), dict(obj["model"]))
        raise CheckpointError(f"{path} is a folder without config.json; expected {KNOWN}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with path.open("rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) > 8 and head[8:10] == b'{"'):
        return _read_safetensors(path, hints)
    obj = _torch_load(path, trust)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path} has format version {obj['version']}; this emae reads up to {FORMAT_VERSION}")
        if obj.get("command", "pretrain") == "pretrain":
            return Loaded(str(path), "emae", config_from_dict(obj["config"]), dict(obj["model"]))
        if "classifier" not in obj:
            raise CheckpointError(f"{path} is a checkpoint of `emae {obj['command']}`, which holds no encoder to load")
        return _read_classifier(path, obj, hints)  # a fine-tune's run checkpoint: its classifier, as best.pt's
    if isinstance(obj, dict) and obj.get("format") == CLASSIFIER_FORMAT:
        return _read_classifier(path, upgrade_classifier(obj), hints)
    for key, source in (("model", "official"), ("state_dict", "timm"), ("model_state", "timm")):
        if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            return _from_state_dict(path, obj[key], source, hints)
    if _is_state_dict(obj):
        return _from_state_dict(path, obj, "timm", hints)
    raise CheckpointError(f"{path} is not {KNOWN}")


def from_compact(loaded: Loaded) -> bool:
    """Whether the encoder's weights come from UM-MAE's compact-grid pre-training (not yet on the full grid)."""
    return loaded.config.method == "umae" and loaded.source != CLASSIFIER_FORMAT


def random_checkpoint(model: ModelConfig, seed: int = 0) -> Loaded:
    """A randomly initialised encoder (MAE's init) with the given dims: the from-scratch baseline."""
    width, depth, heads = encoder_dims(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = ViTEncoder(model.image_size, model.patch_size, model.in_chans, width, depth, heads, model.mlp_ratio)
    state = {"encoder." + k: v for k, v in enc.state_dict().items()}
    model = ModelConfig(**{**vars(model), "embed_dim": width, "depth": depth, "num_heads": heads})
    return Loaded(f"random:{seed}", "random", _config(model), state)


# ---------------------------------------------------------------- models


def _load_strict(module: nn.Module, state: State, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{what}: weights do not fit the model ({detail})") from None


def build_mae(loaded: Loaded, mask_type: str | None = None, mask_ratio: float | None = None) -> MaskedAutoencoder:
    """The full masked autoencoder (needs a checkpoint with a decoder), eval mode."""
    if not loaded.has_decoder:
        raise CheckpointError(f"{loaded.path} has no decoder (an encoder-only checkpoint); this needs a full one")
    cfg = loaded.config
    if mask_type is not None:
        set_key(cfg, "mask.type", mask_type)
    if mask_ratio is not None:
        set_key(cfg, "mask.ratio", mask_ratio)
    model = build_model(cfg)
    _load_strict(model, loaded.state, loaded.path)
    return model.eval()


def build_encoder(loaded: Loaded) -> ViTEncoder:
    m = loaded.config.model
    width, depth, heads = encoder_dims(m)
    enc = ViTEncoder(m.image_size, m.patch_size, m.in_chans, width, depth, heads, m.mlp_ratio)
    _load_strict(enc, encoder_state(loaded.state), loaded.path)
    return enc.eval()


def init_from(model: MaskedAutoencoder, path: str | Path, trust: bool = False) -> dict:
    """Copy a checkpoint's weights into ``model`` (continue pre-training): every encoder weight, and the decoder's
    when present. The fixed sin-cos position embeddings stay the model's own. Returns a summary for the log."""
    loaded = read_checkpoint(path, trust=trust)
    own = model.state_dict()
    take = {k: v for k, v in loaded.state.items() if not k.endswith("pos_embed")}
    for key, t in take.items():
        if key not in own:
            raise CheckpointError(f"--init {path}: {key!r} has no place in the model built from the config")
        if own[key].shape != t.shape:
            m = loaded.config.model
            raise ConfigError(
                f"--init {path}: {key} is {tuple(t.shape)} there but {tuple(own[key].shape)} here; set model.* to "
                f"match the checkpoint (width {m.embed_dim}, depth {m.depth}, patch {m.patch_size}, "
                f"decoder {m.decoder_embed_dim}x{m.decoder_depth})"
            )
    missing = [k for k in own if k.startswith("encoder.") and not k.endswith("pos_embed") and k not in take]
    if missing:
        raise CheckpointError(f"--init {path}: the checkpoint lacks {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict(take, strict=False)
    return {"init": str(path), "init_source": loaded.source, "init_decoder": loaded.has_decoder}
