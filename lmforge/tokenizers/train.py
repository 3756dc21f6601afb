"""Tokenizers trained on a user's text: characters, words, or byte-level BPE.

Each is a `tokenizers.Tokenizer`, so it saves as a `tokenizer.json` any tool that speaks Hugging
Face's format can read. Every one has `<|endoftext|>` at id 0: it separates documents in a
corpus, starts an empty prompt and ends a generation.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers

from lmforge.errors import ConfigError
from lmforge.tokenizers.base import Tokenizer

END_OF_TEXT = "<|endoftext|>"
UNKNOWN = "<unk>"
END_OF_LINE = "<eos>"  # word_language_model's name for the end of a line
KINDS = ("char", "word", "bpe")


def _wrap(backend: tokenizers.Tokenizer, specials: Sequence[str]) -> Tokenizer:
    backend.add_special_tokens(
        [tokenizers.AddedToken(s, special=True, normalized=False) for s in specials]
    )
    eot = backend.token_to_id(END_OF_TEXT)
    return Tokenizer(backend, bos_id=eot, eos_ids=[eot], pad_id=eot, add_bos=False)


def train_char_tokenizer(texts: Iterable[str], byte_fallback: bool = True) -> Tokenizer:
    """One token per character seen in `texts`.

    With `byte_fallback` (the default) an unseen character becomes its UTF-8 bytes (`<0xE2>`...),
    as in Llama's tokenizer, so any string round-trips exactly; without it, it becomes `<unk>`."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    chars.discard("")
    if not chars:
        raise ConfigError("cannot build a character tokenizer: the corpus has no characters")
    vocab = {END_OF_TEXT: 0}
    if not byte_fallback:
        vocab[UNKNOWN] = 1
    for char in sorted(chars):
        vocab.setdefault(char, len(vocab))
    if byte_fallback:
        for byte in range(256):
            vocab[f"<0x{byte:02X}>"] = len(vocab)
    # A BPE model with no merges is a character model; it is the one that offers byte fallback.
    model = models.BPE(
        vocab=vocab,
        merges=[],
        byte_fallback=byte_fallback,
        unk_token=None if byte_fallback else UNKNOWN,
        ignore_merges=True,
    )
    backend = tokenizers.Tokenizer(model)
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return _wrap(backend, [END_OF_TEXT] if byte_fallback else [END_OF_TEXT, UNKNOWN])


def train_word_tokenizer(
    texts: Iterable[str],
    lowercase: bool = False,
    min_frequency: int = 1,
    max_vocab: int | None = None,
    end_of_line: bool = True,
) -> Tokenizer:
    """Whitespace-separated words, most frequent first; rarer words become `<unk>`.

    `end_of_line` adds `<eos>` at every line end, as PyTorch's word_language_model does, so a
    model learns where lines stop (it decodes back to a newline)."""
    if min_frequency < 1:
        raise ConfigError(f"min_frequency={min_frequency}; expected >= 1")
    if max_vocab is not None and max_vocab < 4:
        raise ConfigError(f"max_vocab={max_vocab}; expected at least 4 (room for special tokens)")
    steps = [normalizers.Lowercase()] if lowercase else []
    if end_of_line:
        steps.append(normalizers.Replace(Regex(r"\r?\n"), f" {END_OF_LINE} "))
    backend = tokenizers.Tokenizer(models.WordLevel(unk_token=UNKNOWN))
    if steps:
        backend.normalizer = normalizers.Sequence(steps)
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()

    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        normalized = backend.normalizer.normalize_str(text) if steps else text
        counts.update(normalized.split())
    if not counts:
        raise ConfigError("cannot build a word tokenizer: the corpus has no words")
    specials = [END_OF_TEXT, UNKNOWN] + ([END_OF_LINE] if end_of_line else [])
    ranked = sorted(
        (w for w, c in counts.items() if c >= min_frequency and w not in specials),
        key=lambda w: (-counts[w], w),
    )
    room = None if max_vocab is None else max_vocab - len(specials)
    words = specials + ranked[:room]
    backend.model = models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNKNOWN)
    # Words are joined by spaces; an end-of-line token becomes a newline again.
    steps = [decoders.WordPiece(prefix="##", cleanup=False)]
    if end_of_line:
        steps += [decoders.Replace(f" {END_OF_LINE}", "\n"), decoders.Replace(END_OF_LINE, "\n")]
    backend.decoder = decoders.Sequence(steps)
    # Only <|endoftext|> is special: <unk> and <eos> are words a model predicts and decodes.
    return _wrap(backend, [END_OF_TEXT])


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    special_tokens: Sequence[str] = (),
    min_frequency: int = 2,
) -> Tokenizer:
    """GPT-2-style byte-level BPE trained by the `tokenizers` library: every string round-trips,
    because the 256 bytes are in the vocabulary before any merge."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = [END_OF_TEXT, *(s for s in special_tokens if s != END_OF_TEXT)]
    if vocab_size < len(alphabet) + len(specials):
        raise ConfigError(
            f"vocab_size={vocab_size} is too small for byte-level BPE: it needs at least "
            f"{len(alphabet) + len(specials)} (256 bytes + special tokens)"
        )
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return _wrap(backend, specials)


def train_tokenizer(kind: str, texts: Iterable[str], **options) -> Tokenizer:
    """Train a tokenizer of `kind` ("char", "word" or "bpe") with that kind's options."""
    builders = {
        "char": train_char_tokenizer,
        "word": train_word_tokenizer,
        "bpe": train_bpe_tokenizer,
    }
    if kind not in builders:
        raise ConfigError(f"tokenizer={kind!r}; expected one of {KINDS} or a pretrained model")
    return builders[kind](texts, **options)
