"""Model FLOPs of a pre-training step, counted analytically from the config, and the device's peak for MFU.

A multiply-add is 2 FLOPs; only matrix products count (patch embedding, projections, MLPs, attention scores
and values), as in the MFU convention; norms, activations and the optimiser are left out. Training costs
3x the forward pass (backward is twice the forward).
"""

from __future__ import annotations

import torch

from ..config import Config


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one pre-norm Transformer block on ``tokens`` tokens of width ``dim``."""
    projections = 4 * tokens * dim * dim  # qkv (3) + output projection (1)
    mlp = 2 * tokens * dim * int(dim * mlp_ratio)
    attention = 2 * tokens * tokens * dim  # q @ k^T and attn @ v over all heads
    return 2.0 * (projections + mlp + attention)


def vit_mae_forward_flops(cfg: Config) -> float:
    """Forward FLOPs per *image* of the MAE-family ViT model (encoder on the kept tokens + cls, decoder on all
    tokens + cls). With a parallel mask (EMAE) every image runs as K sequences; the patch embedding is shared."""
    from ..masks import PARALLEL_MASKS, num_parts
    from ..models.build import encoder_dims

    m = cfg.model
    width, depth, _ = encoder_dims(m)
    h, w = m.image_size
    patches = (h // m.patch_size) * (w // m.patch_size)
    parallel = cfg.mask.type in PARALLEL_MASKS
    parts = num_parts(cfg.mask.ratio) if parallel else 1
    kept = patches // parts if parallel else int(patches * (1 - cfg.mask.ratio))
    pix = m.patch_size**2 * m.in_chans
    embed = 2.0 * patches * pix * width  # all patches are embedded, then the kept ones gathered
    encoder = depth * block_flops(kept + 1, width, m.mlp_ratio)
    dd = m.decoder_embed_dim
    decoder = (
        2.0 * (kept + 1) * width * dd  # decoder embedding of the encoder output
        + m.decoder_depth * block_flops(patches + 1, dd, m.mlp_ratio)
        + 2.0 * (patches + 1) * dd * pix  # pixel prediction head
    )
    return embed + parts * (encoder + decoder)


def counted_forward_flops(model: torch.nn.Module, imgs: torch.Tensor) -> float:
    """Forward FLOPs per image counted by PyTorch's FlopCounterMode on one real forward pass (any model)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # the math backend spells attention out as matmuls, which the counter sees on every device
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(imgs)
    return counter.get_total_flops() / imgs.shape[0]


def train_flops_per_image(cfg: Config, model: torch.nn.Module | None = None, imgs: torch.Tensor | None = None) -> float:
    """3x the forward FLOPs: analytic for the ViT MAE family, else counted on one forward of ``model``."""
    if cfg.model.arch.startswith("vit"):
        return 3.0 * vit_mae_forward_flops(cfg)
    if model is None or imgs is None:
        raise ValueError("FLOPs of a non-ViT model are counted on a forward pass: pass model and imgs")
    return 3.0 * counted_forward_flops(model, imgs)


# Dense peak TFLOP/s (no sparsity) per precision, from the vendors' data sheets. The first entry whose words
# all appear in the device name wins, so the PCIe H100 comes before the SXM one.
PEAK_TFLOPS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("H100", "PCIe"), {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0, "tf32": 378.0}),
    (("H200",), {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0, "tf32": 494.0}),
    (("H100",), {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0, "tf32": 494.0}),
    (("A100",), {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5, "tf32": 156.0}),
    (("L40S",), {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6, "tf32": 183.0}),
    (("A10",), {"bf16": 125.0, "fp16": 125.0, "fp32": 31.2, "tf32": 62.5}),
    (("L4",), {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3, "tf32": 60.0}),
    (("V100",), {"fp16": 125.0, "fp32": 15.7}),
]


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for ``precision`` (fp32 counts TF32 when it is enabled); None if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if precision == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    for words, table in PEAK_TFLOPS:
        if all(w in name for w in words):
            return table.get(precision)
    return None
