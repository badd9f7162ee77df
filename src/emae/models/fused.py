"""``train.fused_norm``: each residual add fused with the layer norm that reads its sum.

A pre-norm stack computes ``x = x + f(norm(x))`` twice a block, so every sum is written, then read back by the next
norm (the next block's ``norm1``, or the stack's final norm). :func:`norm_of_blocks` runs timm blocks with the add
and the following norm as one function, which on CUDA is one compiled kernel (one read of both inputs, two writes),
for eager steps that ``torch.compile`` does not fuse. On other devices it runs the same ops unfused, so the numbers
are those of the plain blocks, bit for bit (the CPU tests compare them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

AddNorm = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float],
                   tuple[torch.Tensor, torch.Tensor]]


def add_norm_eager(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = x + y`` and ``layer_norm(s)``."""
    s = x + y
    return s, F.layer_norm(s, s.shape[-1:], weight, bias, eps)


_compiled: AddNorm | None = None


def add_norm_for(device: torch.device) -> AddNorm:
    """The fused kernel on CUDA (compiled once, for any shape), the eager ops elsewhere."""
    global _compiled
    if device.type != "cuda":
        return add_norm_eager
    if _compiled is None:
        _compiled = torch.compile(add_norm_eager, dynamic=True)
    return _compiled


def can_fuse(blocks: nn.ModuleList, norm: nn.Module) -> bool:
    """Plain timm blocks whose norms (and the final ``norm``) are affine layer norms."""
    norms = [norm, *(n for b in blocks for n in (b.norm1, b.norm2))] if len(blocks) else []
    return all(type(b) is Block for b in blocks) and all(
        type(n) is nn.LayerNorm and n.elementwise_affine and n.bias is not None for n in norms)


def fused_blocks(blocks: nn.ModuleList, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(blocks(x))`` with every residual add fused with the norm after it (the same ops as timm's Block)."""
    add_norm = add_norm_for(x.device)
    y = blocks[0].norm1(x)
    for i, blk in enumerate(blocks):
        n2 = blk.norm2
        x, y = add_norm(x, blk.drop_path1(blk.ls1(blk.attn(y))), n2.weight, n2.bias, n2.eps)
        nxt = blocks[i + 1].norm1 if i + 1 < len(blocks) else norm
        x, y = add_norm(x, blk.drop_path2(blk.ls2(blk.mlp(y))), nxt.weight, nxt.bias, nxt.eps)
    return y
