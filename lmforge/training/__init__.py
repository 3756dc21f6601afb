"""Training: one trainer for every lmforge model (from scratch, fine-tuning, LoRA, translation,
torchrun)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from lmforge.training.classification import ClassificationTrainer
from lmforge.training.config import SEQ2SEQ_ARCHS, TrainConfig
from lmforge.training.sft import SFTTrainer
from lmforge.training.trainer import Trainer, TrainResult
from lmforge.training.translation import TranslationTrainer


def train(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    changes: Iterable[str] | None = None,
) -> TrainResult:
    """Train (or resume) a run; see `TrainConfig` for the settings. `on_step(step, loss)` is
    called after every optimizer step (after any evaluation and checkpoint of that step).

    A resumed run continues with the settings it was started with; `changes` names the settings
    of `config` to apply over them (None: every one that differs; the CLI passes the flags given)."""
    trainer = Trainer
    if config.arch in SEQ2SEQ_ARCHS:
        trainer = TranslationTrainer
    elif config.task == "classification":
        trainer = ClassificationTrainer
    elif config.task == "sft":
        trainer = SFTTrainer
    return trainer(config, out, resume, on_step, changes).run()


__all__ = [
    "ClassificationTrainer",
    "TrainConfig",
    "TrainResult",
    "SFTTrainer",
    "Trainer",
    "TranslationTrainer",
    "train",
]
