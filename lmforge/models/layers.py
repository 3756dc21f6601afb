"""The feed-forward and normalisation layers of decoder-only transformers, by family:
GPT-2's GELU MLP and LayerNorm, Llama's SwiGLU and RMSNorm, Gemma's GeGLU and RMSNorm with a
(1 + weight) scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.models.gpt_config import GPTConfig


class MLP(nn.Module):
    """GPT-2's GELU MLP, or a gated one: down(act(gate(x)) * up(x)) with SiLU (Llama's SwiGLU)
    or the tanh GELU (Gemma's GeGLU), gate and up fused into one projection (one matrix
    multiply instead of two)."""

    def __init__(self, d_model: int, d_ff: int, kind: str, bias: bool):
        super().__init__()
        self.gated = kind in ("swiglu", "geglu")
        if self.gated:
            self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=bias)
            self.activation = F.silu if kind == "swiglu" else _gelu_tanh
        else:
            self.up = nn.Linear(d_model, d_ff, bias=bias)
            # erf GELU (nanoGPT's choice) trains several times faster on CPUs than the tanh
            # approximation, whose backward pass PyTorch does not vectorise as well.
            self.activation = _gelu_tanh if kind == "gelu" else F.gelu
        self.down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x):
        if self.gated:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            return self.down(self.activation(gate) * up)
        return self.down(self.activation(self.up(x)))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32. Llama casts back, then scales by the weight; Gemma (`offset`)
    scales by 1 + weight in fp32, then casts back (its weights start at zero)."""

    def __init__(self, dim: int, eps: float, offset: bool = False):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x):
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        if self.offset:
            return (normed * (1.0 + self.weight.float())).to(x.dtype)
        return self.weight * normed.to(x.dtype)


def make_norm(config: GPTConfig, dim: int | None = None) -> nn.Module:
    """The config's norm over `dim` features (default: d_model)."""
    dim = dim or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps, config.norm_offset)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.norm_bias)
