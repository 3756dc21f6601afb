"""Where a model runs: a `device=` option checked once, and the device a model's tensors are on.

The generation engine, the server and the evaluators make every tensor they create on
`model_device(model)`, so the same code runs on a CPU or a CUDA GPU.
"""

from __future__ import annotations

import functools
import time

import torch
from torch import nn

from lmforge.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(device: str | torch.device | None = "cpu") -> torch.device:
    """The torch.device for a user's `device=`: "auto" (a CUDA GPU if PyTorch sees one, else the
    CPU), "cpu", "cuda", "cuda:N" or "mps"; an unknown or unavailable device is a ConfigError."""
    if device is None:
        device = "cpu"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={device!r}; expected one of {', '.join(DEVICE_CHOICES)}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={device!r} but PyTorch sees no CUDA GPU (a CPU-only build of torch, or "
                "no driver); use device='cpu' or 'auto'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(
                f"device={device!r} but there are {count} CUDA GPU(s): cuda:0 to cuda:{count - 1}"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device!r} but PyTorch has no MPS backend here; use 'cpu'")
    return resolved


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's weights (parameters, or buffers for quantised layers)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@functools.cache
def bf16_matmul_is_fast() -> bool:
    """Whether this CPU multiplies bfloat16 matrices clearly faster than float32 (AVX-512 BF16 or
    AMX: two to three times; without them bfloat16 is emulated and slower). Timed once, in ~0.1 s,
    because PyTorch reports the instruction set ("AVX512") but not whether it has BF16."""

    def seconds(dtype: torch.dtype) -> float:
        a, b = torch.randn(512, 256, dtype=dtype), torch.randn(256, 1024, dtype=dtype)
        a @ b
        started = time.perf_counter()
        for _ in range(20):
            a @ b
        return time.perf_counter() - started

    return seconds(torch.bfloat16) < 0.7 * seconds(torch.float32)
