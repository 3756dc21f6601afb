"""lmforge: language models and text generation in plain PyTorch."""

from lmforge.api import LM, export_gguf, finetune, load
from lmforge.errors import CheckpointError, ConfigError, LMForgeError, UnknownModelError
from lmforge.generation.config import GenerationConfig

__all__ = [
    "LM",
    "load",
    "finetune",
    "export_gguf",
    "GenerationConfig",
    "LMForgeError",
    "ConfigError",
    "CheckpointError",
    "UnknownModelError",
]
__version__ = "0.1.0"
