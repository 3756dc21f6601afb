"""Find and load model checkpoints: known names, GGUF files, Hugging Face directories, bundles."""

from lmforge.checkpoints.load import Checkpoint, load_checkpoint
from lmforge.checkpoints.resolve import DEFAULT_MODEL, KNOWN_MODELS, locate_known, resolve

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "Checkpoint",
    "load_checkpoint",
    "locate_known",
    "resolve",
]
