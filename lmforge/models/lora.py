"""LoRA: fine-tune a large model by training a low-rank update B @ A beside frozen weights.

y = W x + (alpha / r) * B (A x), with A (r x in) random and B (out x r) zero, so training starts
from the pretrained model exactly. Only A and B train (and are saved: a few MB instead of the
model); `merge_lora` folds the update into W for deployment, leaving a plain model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.errors import ConfigError


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear (and peft) do

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scaling

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def float_weight(self) -> torch.Tensor:
        """The weight with the update added, in float32 (the layer itself unchanged)."""
        update = self.scaling * (self.lora_b.float() @ self.lora_a.float())
        return self.base.weight.float() + update

    def merged(self) -> nn.Linear:
        """The base layer with the update added to its weight."""
        with torch.no_grad():
            self.base.weight += self.scaling * (self.lora_b @ self.lora_a)
        return self.base


def apply_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> list[str]:
    """Freeze `model` and wrap every `nn.Linear` whose name ends with one of `targets`
    (e.g. "qkv", "out", "gate_up", "down"); returns the wrapped names."""
    if rank <= 0:
        raise ConfigError(f"lora_rank={rank}; expected a positive integer")
    model.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and child_name in targets:
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(full)
    if not wrapped:
        linear = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ConfigError(f"lora_targets={targets} match no linear layer; this model has {linear}")
    return wrapped


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights."""
    return {k: v for k, v in model.state_dict().items() if ".lora_a" in k or ".lora_b" in k}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` by its merged `nn.Linear` (in place); returns the model."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    model.requires_grad_(True)
    return model
