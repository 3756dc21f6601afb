"""Generation diagnostics: how varied, how repetitive and how surprising generated text is.

- distinct-n (Li et al. 2016): distinct n-grams / all n-grams, over every generated sequence.
- repetition rate (seq-rep-n, Welleck et al. 2019): within each sequence, the share of its
  n-grams that repeat an earlier one; averaged over sequences.
- mean surprisal: the mean of -log2 p(token) the model gave its own tokens (bits per token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lmforge.errors import ConfigError


def _ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(sequences: Sequence[Sequence[int]], n: int = 2) -> float:
    if n < 1:
        raise ConfigError(f"n={n}; expected >= 1")
    grams = [g for ids in sequences for g in _ngrams(ids, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(sequences: Sequence[Sequence[int]], n: int = 4) -> float:
    if n < 1:
        raise ConfigError(f"n={n}; expected >= 1")
    rates = []
    for ids in sequences:
        grams = _ngrams(ids, n)
        if grams:
            rates.append(1 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def mean_surprisal(logprobs: Sequence[Sequence[float]]) -> float:
    values = [-lp / math.log(2) for seq in logprobs for lp in seq]
    return sum(values) / len(values) if values else 0.0


def diagnose(completions) -> dict[str, float]:
    """The diagnostics of `Completion`s (one, or a list) from `LM.generate`."""
    items = completions if isinstance(completions, list) else [completions]
    ids = [c.token_ids for c in items]
    return {
        "sequences": len(items),
        "tokens": sum(map(len, ids)),
        "distinct-1": distinct_n(ids, 1),
        "distinct-2": distinct_n(ids, 2),
        "distinct-3": distinct_n(ids, 3),
        "repetition rate (4-grams)": repetition_rate(ids, 4),
        "mean surprisal (bits/token)": mean_surprisal([c.logprobs for c in items]),
    }
