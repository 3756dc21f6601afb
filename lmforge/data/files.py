"""Reading the text files data comes in: UTF-8, gzip when the name ends in `.gz`, line by line or
as JSON objects one a line, with errors that name the file and the line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError


def open_text(path: Path):
    """A UTF-8 text file opened for reading (gzip when it ends in .gz); missing: a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return path.open(encoding="utf-8", newline="\n")


def text_lines(path: Path) -> Iterator[str]:
    """The file's lines, without their line ends."""
    try:
        with open_text(path) as handle:
            for line in handle:
                yield line.rstrip("\r\n")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise ConfigError(f"{path}: not readable UTF-8 text ({exc})") from None


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; a line that is not a JSON
    object is an error naming it."""
    for number, line in enumerate(text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{number}: expected a JSON object")
        yield number, record
