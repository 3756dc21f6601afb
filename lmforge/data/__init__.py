"""Data: corpora, token caches (numpy memmaps) and training batches."""

from lmforge.data.corpus import Corpus
from lmforge.data.tokens import split_tokens, tokenize_corpus

__all__ = ["Corpus", "split_tokens", "tokenize_corpus"]
