"""MAE's initialisation: xavier-uniform Linear layers, zero biases, unit LayerNorms."""

from __future__ import annotations

from torch import nn


def init_mae_weights(module: nn.Module) -> None:
    """Apply with ``model.apply(init_mae_weights)``."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_patch_embed(proj: nn.Conv2d) -> None:
    """The patch-embed conv initialised as the Linear layer it is (xavier on the flattened kernel)."""
    w = proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    if proj.bias is not None:
        nn.init.zeros_(proj.bias)
