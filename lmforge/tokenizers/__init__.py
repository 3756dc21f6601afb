"""Tokenizers: text <-> token ids, special tokens and an optional chat template.

Every tokenizer is a `tokenizers.Tokenizer` (Hugging Face's Rust library) wrapped in our
`Tokenizer`, so it saves as a `tokenizer.json` that other tools read.
"""

from lmforge.tokenizers.base import Tokenizer

__all__ = ["Tokenizer"]
