"""``train.bf16_params``: the weights of every Linear and convolution held in bf16, cast once per optimiser step.

Under plain bf16 autocast every fp32 weight is cast to bf16 at each forward (and its gradient cast back), a copy
per weight per step that a profile of the GPU step shows as ``copy_``. Here those weights *are* bf16: the forward
under the same autocast uses them as they are, their bf16 gradients are copied into fp32 master weights, AdamW
updates the masters, and one foreach copy rounds them back into the model. Norms, tokens and position embeddings
stay fp32, as autocast leaves them.

The numbers are autocast's: autocast's cast and this copy round the same fp32 master to the same bf16 weight, and
a bf16 gradient cast to fp32 is what autocast's backward gives (tested bit for bit on CPU). Checkpoints hold the
fp32 masters under the usual keys, so a run can resume with the option on or off. Gradients accumulate in bf16,
hence ``train.accum_iter`` 1 only; clipping (``clip_grad``) sees the bf16 gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CAST_ONCE = (nn.Linear, nn.Conv2d)  # the layers autocast runs in bf16


class MasterWeights:
    """Makes ``model``'s Linear / conv weights bf16 (in place, before any wrapper registers them) and keeps their
    fp32 masters; :meth:`optimizer` builds the optimiser over the masters."""

    def __init__(self, model: nn.Module) -> None:
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []  # (bf16 working weight, fp32 master)
        names = {id(p): n for n, p in model.named_parameters()}
        self.by_name: dict[str, torch.Tensor] = {}
        for module in model.modules():
            if isinstance(module, CAST_ONCE):
                for p in module.parameters(recurse=False):
                    master = p.detach().clone().float()
                    p.data = p.data.to(torch.bfloat16)
                    self.pairs.append((p, master))
                    self.by_name[names[id(p)]] = master
        self.master_of = {id(p): m for p, m in self.pairs}
        model.register_state_dict_post_hook(lambda *args: self._masters_in_state_dict(*args))  # torch tags the hook
        model.register_load_state_dict_pre_hook(lambda *args: self._masters_from_state_dict(*args))

    def optimizer(self, build, model: nn.Module) -> MasterOptimizer:
        """``build(model)``'s optimiser (its groups and weight decay decided on the model as usual), its bf16
        weights replaced by their masters."""
        inner = build(model)
        for group in inner.param_groups:
            group["params"] = [self.master_of.get(id(p), p) for p in group["params"]]
        return MasterOptimizer(inner, self)

    def grads_to_masters(self) -> None:
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.float()

    @torch.no_grad()
    def masters_to_weights(self) -> None:
        if self.pairs:
            torch._foreach_copy_([p.data for p, _ in self.pairs], [m for _, m in self.pairs])

    def zero_grad(self) -> None:
        for p, m in self.pairs:
            p.grad = m.grad = None

    def _masters_in_state_dict(self, module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
        for name, master in self.by_name.items():
            state[prefix + name] = master.detach().clone()

    @torch.no_grad()
    def _masters_from_state_dict(self, module: nn.Module, state: dict, prefix: str, *args) -> None:
        for name, master in self.by_name.items():
            value = state.get(prefix + name)
            if isinstance(value, torch.Tensor) and value.shape == master.shape:
                master.copy_(value)


class MasterOptimizer:
    """The optimiser of the masters, as the loop sees an optimiser: ``step`` copies the bf16 gradients in, updates
    the masters and rounds them back; ``zero_grad`` clears both; state dicts are the inner optimiser's."""

    def __init__(self, inner: torch.optim.Optimizer, masters: MasterWeights) -> None:
        self.inner, self.masters = inner, masters

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    @property
    def defaults(self) -> dict:
        return self.inner.defaults

    def step(self, closure=None):
        self.masters.grads_to_masters()
        out = self.inner.step(closure)
        self.masters.masters_to_weights()
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=True)
        self.masters.zero_grad()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
