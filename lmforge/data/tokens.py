"""A corpus tokenized once into a flat numpy memmap, then split and reused by every later run.

The cache key is the corpus fingerprint plus the tokenizer's own JSON, so editing a file or
changing the tokenizer builds a new cache. Tokens are uint16 when the vocabulary fits (half the
disk and memory), else uint32. Documents are separated by the tokenizer's end-of-text token.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmforge.data.corpus import Corpus
from lmforge.errors import ConfigError
from lmforge.paths import cache_root
from lmforge.tokenizers import Tokenizer

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of the vocabulary."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ConfigError(f"vocab_size={vocab_size} does not fit 32-bit token ids")


def tokenizer_digest(tokenizer: Tokenizer) -> str:
    """Identifies a tokenizer by its full JSON (vocabulary, merges, normalizers, specials)."""
    return hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()[:24]


def tokens_root() -> Path:
    root = cache_root()
    return (root / "tokens") if root is not None else Path(tempfile.gettempdir()) / "lmforge-tokens"


@dataclass
class TokenSplits:
    """Train/validation/test views of one tokenized corpus (contiguous, in corpus order)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        return getattr(self, name)


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer, root: Path | None = None) -> np.memmap:
    """All tokens of `corpus`, from the cache when it is there, else tokenized and cached."""
    key = hashlib.sha256(
        f"{FORMAT_VERSION}|{corpus.fingerprint()}|{tokenizer_digest(tokenizer)}".encode()
    ).hexdigest()[:24]
    directory = (root or tokens_root()) / key
    meta_path = directory / "meta.json"
    if meta_path.exists():
        cached = _open_cached(directory)
        if cached is not None:
            return cached
        shutil.rmtree(directory, ignore_errors=True)  # damaged: tokenize again
    _build(corpus, tokenizer, directory)
    cached = _open_cached(directory)
    if cached is None:
        raise ConfigError(f"{directory}: the token cache just written cannot be read back")
    return cached


def _open_cached(directory: Path) -> np.memmap | None:
    """The cached tokens, or None when the entry is damaged (unreadable, or sizes disagree)."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        tokens = np.memmap(
            directory / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["count"],)
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return tokens


def _build(corpus: Corpus, tokenizer: Tokenizer, directory: Path) -> None:
    """Tokenize piece by piece, appending to a file: memory stays flat however big the corpus."""
    from tqdm import tqdm

    dtype = token_dtype(tokenizer.vocab_size)
    separator = tokenizer.eos_ids[0] if tokenizer.eos_ids else None
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=".building-"))
    count = 0
    try:
        with (
            open(staging / "tokens.bin", "wb") as out,
            tqdm(
                desc=f"tokenizing {corpus.source}", unit=" tok", unit_scale=True, leave=False
            ) as bar,
        ):
            for number, document in enumerate(corpus.documents()):
                ids: list[int] = [separator] if number and separator is not None else []
                for piece in document:
                    ids.extend(tokenizer.encode(piece, add_special_tokens=False))
                np.asarray(ids, dtype=dtype).tofile(out)
                count += len(ids)
                bar.update(len(ids))
        if count == 0:
            raise ConfigError(f"data={corpus.source!r} is empty: it gives no tokens")
        meta = {
            "format": FORMAT_VERSION,
            "count": count,
            "dtype": dtype.name,
            "source": corpus.source,
            "vocab_size": tokenizer.vocab_size,
        }
        (staging / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(staging, directory)
        except OSError:  # another process built it first
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def split_tokens(
    tokens: np.ndarray, val_fraction: float = 0.05, test_fraction: float = 0.05
) -> TokenSplits:
    """First (1 - val - test) of the tokens for training, then validation, then test: the same
    split on every run, and no window crosses from training into held-out text."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name}={value}; expected a fraction in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction}; leave some for training"
        )
    n = len(tokens)
    train_end = int(n * (1 - val_fraction - test_fraction))
    val_end = train_end + int(n * val_fraction)
    return TokenSplits(tokens[:train_end], tokens[train_end:val_end], tokens[val_end:])
