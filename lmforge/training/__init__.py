"""Training: one trainer for every lmforge model (from scratch, fine-tuning, LoRA, torchrun)."""

from lmforge.training.config import TrainConfig
from lmforge.training.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
