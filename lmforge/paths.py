"""Where lmforge keeps files between runs (one cache root, a folder per kind of entry), and how it
writes a file so that a crash never leaves half of one."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path | None:
    """`$LMFORGE_CACHE_DIR`, else `$XDG_CACHE_HOME/lmforge`, else `~/.cache/lmforge`; "off" disables."""
    configured = os.environ.get("LMFORGE_CACHE_DIR")
    if configured == "off":
        return None
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lmforge"


def write_atomically(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it to `path`.
    On any error the temporary file is removed and `path` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
