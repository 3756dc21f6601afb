"""Rotary position embeddings (RoPE): each pair of a head's features is rotated by an angle that
grows with the position, so attention scores depend on how far apart two tokens are."""

from __future__ import annotations

import math
from typing import Any

import torch

from lmforge.errors import ConfigError


def rope_inverse_frequencies(
    head_dim: int, theta: float, scaling: dict[str, Any] | None = None
) -> torch.Tensor:
    """The rotation speed of each feature pair, with a checkpoint's scaling ("linear" or Llama 3's
    "llama3") for contexts longer than it was trained on."""
    # Computed on the CPU even while a model is built on the meta device (cheap, and real values).
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    scaling = scaling or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / scaling["factor"]
    if rope_type == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(is_medium, smoothed, scaled)
    raise ConfigError(
        f"rope_scaling type {rope_type!r} is not supported; supported: default, linear, llama3"
    )


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """(cos, sin) of every position's angles, (batch, 1, seq, head_dim), broadcast over heads."""
    freqs = positions[..., None].float() * inv_freq  # (batch, seq, head_dim / 2)
    angles = torch.cat((freqs, freqs), dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (batch, heads, seq, head_dim): its first half against its second half."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
