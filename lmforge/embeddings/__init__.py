"""Word embeddings: word2vec (skip-gram, CBOW) and GloVe in PyTorch, vectors, evaluation."""

from lmforge.embeddings.evaluate import evaluate_word_analogies, evaluate_word_pairs
from lmforge.embeddings.train import read_corpus, tokenize, train_glove, train_word2vec
from lmforge.embeddings.vectors import KeyedVectors, load_into_embedding

__all__ = [
    "KeyedVectors",
    "evaluate_word_analogies",
    "evaluate_word_pairs",
    "load_into_embedding",
    "read_corpus",
    "tokenize",
    "train_glove",
    "train_word2vec",
]
