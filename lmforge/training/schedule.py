"""Learning-rate schedules: linear warmup, then cosine or linear decay to `min_lr`, constant, or
"plateau" (constant, divided by 4 whenever an evaluation does not improve, as PyTorch's
word_language_model anneals SGD), or "inverse_sqrt" (the Transformer paper's and fairseq's:
lr * sqrt(warmup / step) after the warmup, never below `min_lr`)."""

from __future__ import annotations

import math

import torch

from lmforge.training.config import TrainConfig


def learning_rate(step: int, config: TrainConfig) -> float:
    """nanoGPT's schedule: warm up linearly over `warmup` steps, then decay over the rest."""
    if step < config.warmup:
        return config.lr * (step + 1) / (config.warmup + 1)
    if config.schedule in ("constant", "plateau"):
        return config.lr
    if config.schedule == "inverse_sqrt":
        return max(config.min_lr, config.lr * math.sqrt(max(1, config.warmup) / max(1, step)))
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    if config.schedule == "cosine":
        coefficient = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        coefficient = 1.0 - progress
    return config.min_lr + coefficient * (config.lr - config.min_lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, scale=lambda: 1.0):
    """A `LambdaLR` following `learning_rate` times `scale()` (the plateau factor the trainer
    keeps and checkpoints; the scheduler's own state is saved with each checkpoint too)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate(step, config) * scale() / config.lr
    )
