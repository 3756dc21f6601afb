"""Learning-rate schedules: linear warmup, then cosine or linear decay to `min_lr`, or constant."""

from __future__ import annotations

import math

import torch

from lmforge.training.config import TrainConfig


def learning_rate(step: int, config: TrainConfig) -> float:
    """nanoGPT's schedule: warm up linearly over `warmup` steps, then decay over the rest."""
    if step < config.warmup:
        return config.lr * (step + 1) / (config.warmup + 1)
    if config.schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup)
    progress = min(1.0, (step - config.warmup) / span)
    if config.schedule == "cosine":
        coefficient = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        coefficient = 1.0 - progress
    return config.min_lr + coefficient * (config.lr - config.min_lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """A `LambdaLR` following `learning_rate` (its state is saved with each checkpoint)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate(step, config) / config.lr
    )
