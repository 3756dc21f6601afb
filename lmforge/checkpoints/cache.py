"""An on-disk cache of converted models, so a GGUF file is parsed and dequantised only once.

A converted model is a directory: our `GPTConfig` (`lmforge_config.json`), our weights
(`model.safetensors`, fp32, fused q/k/v) and the tokenizer in Hugging Face files. The key is the
source file's resolved path, size and modification time; the directory is written under a
temporary name and renamed into place, so an interrupted write never leaves a half cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lmforge.models.gpt import GPTConfig

FORMAT_VERSION = 1


def cache_root() -> Path | None:
    """`$LMFORGE_CACHE_DIR`, else `$XDG_CACHE_HOME/lmforge`, else `~/.cache/lmforge`; "off" disables."""
    configured = os.environ.get("LMFORGE_CACHE_DIR")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmforge"


def entry_for(source: Path) -> Path | None:
    root = cache_root()
    if root is None:
        return None
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{FORMAT_VERSION}"
    return root / "converted" / f"{source.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def save_converted(entry: Path, model, tokenizer) -> None:
    """Write a converted model atomically (temporary directory, then rename)."""
    from safetensors.torch import save_file

    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        state = {
            k: v.contiguous()
            for k, v in model.state_dict().items()
            if k != "lm_head.weight" or not model.config.tie_embeddings
        }
        save_file(state, staging / "model.safetensors")
        tokenizer.save(staging)
        (staging / "lmforge_config.json").write_text(json.dumps(model.config.to_dict(), indent=1))
        os.replace(staging, entry)
    except OSError:
        pass  # a cache that cannot be written (read-only disk, race with another process) is not an error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_converted(entry: Path):
    """(config, tensors, tokenizer) from a cache entry, or None if it is missing or unreadable
    (an unreadable entry is removed, so the next conversion can replace it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lmforge.tokenizers import Tokenizer

    if not entry.exists():
        return None
    try:
        config = GPTConfig(**json.loads((entry / "lmforge_config.json").read_text()))
        tensors: dict[str, torch.Tensor] = load_file(entry / "model.safetensors")
        generation = json.loads((entry / "generation_config.json").read_text())
        tokenizer = Tokenizer.from_hf_directory(entry, generation)
    except (OSError, ValueError, TypeError, KeyError, SafetensorError):
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return config, tensors, tokenizer
