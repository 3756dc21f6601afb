"""Where lmforge keeps files between runs (one cache root, a folder per kind of entry), and how it
writes a file so that a crash never leaves half of one."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lmforge.errors import CheckpointError, ConfigError, LMForgeError


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


def read_json(path: Path, error: type[LMForgeError] = CheckpointError) -> Any:
    """A JSON file's content, or `error` naming the file and what is wrong with it."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (bad byte at {exc.start}); is it damaged?") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc}); is it damaged or cut short?") from None


# `write_atomically`'s `.NAME.tmp-PID`, and a checkpoint staged before its rename `.staged-PID.pt`
_TEMPORARY = re.compile(r"^\.(?:.+\.tmp|staged)-(\d+)(?:\.pt)?$")


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file; a missing or non-UTF-8 file is a `ConfigError` naming
    `what` it is (e.g. "--input") and the path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files a process killed mid-write left in `directory` (those of a
    process still running are kept); return what was removed."""
    removed = []
    for path in directory.glob(".*"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _running(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True
