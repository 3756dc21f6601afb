"""Text embeddings: one vector per text, from a language model's hidden states or from word vectors.

A language model's states (`model.hidden`) are pooled as a classifier head pools them: `mean` over
the text's tokens, or the `last` token's (the one that has read the whole text in a causal or
recurrent model). Word vectors give the mean of the text's known words' vectors. Vectors are
scaled to length 1 by default, so a dot product is the cosine similarity (as OpenAI's are).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmforge.data.batches import pad_rows
from lmforge.device import model_device
from lmforge.embeddings.train import tokenize
from lmforge.embeddings.vectors import KeyedVectors
from lmforge.errors import ConfigError
from lmforge.models.heads import POOLINGS, pool


def text_ids(
    tokenizer, texts: Sequence[str | list[int]], limit: int, vocab_size: int, truncate: bool
) -> list[list[int]]:
    """Token ids of each input (a text, or token ids checked against the vocabulary); an empty
    input is an error, one longer than `limit` too unless `truncate` (then its start is kept)."""
    rows = []
    for i, item in enumerate(texts):
        if isinstance(item, str):
            if not item.strip():
                raise ConfigError(f"input {i} is empty; give some text to embed")
            ids = tokenizer.encode(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
            if not all(0 <= t < vocab_size for t in item):
                raise ConfigError(f"input {i} has token ids outside [0, {vocab_size})")
            ids = item
        else:
            raise ConfigError(f"input {i} must be a non-empty string or list of token ids")
        if len(ids) > limit:
            if not truncate:
                raise ConfigError(
                    f"input {i} has {len(ids)} tokens; this model reads at most {limit} "
                    "(shorten it, or ask for truncation)"
                )
            ids = ids[:limit]
        rows.append(ids)
    return rows


@torch.inference_mode()
def embed_ids(
    model,
    rows: list[list[int]],
    pad_id: int,
    pooling: str = "mean",
    batch_size: int = 32,
    normalize: bool = True,
) -> torch.Tensor:
    """(texts, width) float32 vectors of token-id rows, run in batches of similar length."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r}; expected one of {POOLINGS}")
    if not hasattr(model, "hidden"):
        raise ConfigError(f"a {type(model).__name__} has no hidden states to embed texts with")
    device = model_device(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    vectors: list = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch, mask = pad_rows([rows[i] for i in chunk], pad_id)
        mask = mask.to(device)
        pooled = pool(model.hidden(batch.to(device)), mask, pooling).float().cpu()
        for i, vector in zip(chunk, pooled, strict=True):
            vectors[i] = vector
    stacked = torch.stack(vectors)
    return torch.nn.functional.normalize(stacked, dim=-1) if normalize else stacked


def embed_with_word_vectors(
    vectors: KeyedVectors, texts: Sequence[str], normalize: bool = True
) -> torch.Tensor:
    """(texts, dim) means of each text's known words' vectors (words as word2vec training split
    them); a text with no known word is an error naming it."""
    rows = []
    for i, text in enumerate(texts):
        known = [vectors.index[w] for w in tokenize(text) if w in vectors.index]
        if not known:
            raise ConfigError(f"input {i} has no word in the vectors' vocabulary: {text[:60]!r}")
        rows.append(vectors.vectors[known].mean(dim=0))
    stacked = torch.stack(rows)
    return torch.nn.functional.normalize(stacked, dim=-1) if normalize else stacked
