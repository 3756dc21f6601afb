"""An on-disk cache of converted models, so a GGUF file is parsed and dequantised only once.

A converted model is a directory: our `GPTConfig` (`lmforge_config.json`), our weights
(`model.pt`: fp32, bf16 or quantised, fused q/k/v) and the tokenizer in Hugging Face files. The key is the
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
from lmforge.models.quantized import head_reads_embedding
from lmforge.paths import cache_root
from lmforge.tokenizers import Tokenizer

FORMAT_VERSION = 4  # 4: the source GGUF's weight type is in the config (quantize="auto")
# torch's own format: it aligns every tensor to 64 bytes (the int8/int4 kernels' vector loads
# need that; safetensors packs at 8) and `torch.load(mmap=True)` maps it without a copy.
WEIGHTS_FILE = "model.pt"


def variant(quantize: str, group_size: int) -> str:
    """The cache-entry suffix for a quantisation mode. Packed int4/int8 layouts belong to the
    kernels of one PyTorch build and CPU instruction set, so those are part of the name."""
    if quantize == "none":
        return "f32"
    if quantize == "bf16":
        return "bf16"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    group = f"g{group_size}-" if quantize == "int4" else ""
    return f"{quantize}-{group}torch{torch.__version__.split('+')[0]}-{capability}"


def entry_for(source: Path, variant_name: str = "f32") -> Path | None:
    """The cache directory for `source` converted as `variant_name` (None if caching is off)."""
    root = cache_root()
    if root is None:
        return None
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{FORMAT_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / "converted" / f"{source.stem}-{digest}-{variant_name}"


def weight_type_of(source: Path) -> str | None:
    """The source GGUF's block-weight type, read from any converted entry of it (so choosing
    `quantize="auto"` needs no GGUF parsing once the file was converted), or None."""
    float_entry = entry_for(source)
    if float_entry is None:
        return None
    for config in float_entry.parent.glob(
        float_entry.name.removesuffix("f32") + "*/lmforge_config.json"
    ):
        try:
            return json.loads(config.read_text())["extra"]["weight_type"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def save_converted(entry: Path, model, tokenizer) -> None:
    """Write a converted model atomically (temporary directory, then rename)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        state = {
            k: v.contiguous()
            for k, v in model.state_dict().items()
            if not (head_reads_embedding(model) and k.startswith("lm_head."))
        }
        torch.save(state, staging / WEIGHTS_FILE)
        tokenizer.save(staging)
        (staging / "lmforge_config.json").write_text(json.dumps(model.config.to_dict(), indent=1))
        os.replace(staging, entry)
    except OSError:
        pass  # a cache that cannot be written (read-only disk, race with another process) is not an error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_converted(entry: Path):
    """(config, tensors, tokenizer) from a cache entry, or None if it is missing or unreadable
    (an unreadable entry is removed, so the next conversion can replace it).

    The weights are memory-mapped, not read: loading costs no copy, and the pages are shared
    by every process that uses the same model."""
    import pickle

    if not entry.exists():
        return None
    try:
        config = GPTConfig(**json.loads((entry / "lmforge_config.json").read_text()))
        tensors = torch.load(entry / WEIGHTS_FILE, mmap=True, weights_only=True)
        generation = json.loads((entry / "generation_config.json").read_text())
        tokenizer = Tokenizer.from_hf_directory(entry, generation)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, EOFError, pickle.PickleError):
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return config, tensors, tokenizer
