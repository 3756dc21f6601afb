"""Word-vector benchmarks with gensim's protocol: word-pair similarity (WordSim-353, SimLex-999)
and Google-style analogies, case-insensitive, over the `restrict_vocab` most frequent words."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmforge.embeddings.vectors import KeyedVectors
from lmforge.errors import ConfigError
from lmforge.paths import read_lines


@dataclass
class PairScores:
    pearson: float
    spearman: float
    oov_ratio: float  # percent of pairs with a word outside the vocabulary
    pairs: int  # pairs scored


@dataclass
class AnalogyScores:
    accuracy: float  # over all questions whose four words are in the vocabulary
    sections: dict[str, tuple[int, int]]  # section -> (correct, asked)
    semantic: float
    syntactic: float
    oov_ratio: float
    questions: list[tuple[str, str, str, str, str | None]] = field(repr=False, default_factory=list)


def _case_folded(vectors: KeyedVectors, restrict_vocab: int) -> dict[str, int]:
    """UPPER word -> index, the most frequent spelling winning, as gensim does."""
    return {w.upper(): i for i, w in reversed(list(enumerate(vectors.words[:restrict_vocab])))}


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank (what Spearman's rho needs)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def evaluate_word_pairs(
    vectors: KeyedVectors, path: str | Path, restrict_vocab: int = 300000, delimiter: str = "\t"
) -> PairScores:
    """Pearson and Spearman correlation of cosine similarity with human scores."""
    vocab = _case_folded(vectors, restrict_vocab)
    gold, model, oov, bad = [], [], 0, 0
    for line in read_lines(path, "evaluation file"):
        if not line or line.startswith("#"):
            continue
        parts = line.split(delimiter)
        if len(parts) != 3:
            bad += 1
            continue
        try:
            a, b, score = parts[0].upper(), parts[1].upper(), float(parts[2])
        except ValueError:
            bad += 1
            continue
        if a not in vocab or b not in vocab:
            oov += 1
            continue
        gold.append(score)
        model.append(float(vectors.unit[vocab[a]] @ vectors.unit[vocab[b]]))
    if len(gold) < 2:
        raise ConfigError(
            f"{path}: {len(gold)} scorable pairs ({oov} out of vocabulary, {bad} malformed lines); "
            "expected 'word<TAB>word<TAB>score' lines"
        )
    gold_array, model_array = np.array(gold), np.array(model)
    return PairScores(
        pearson=_pearson(gold_array, model_array),
        spearman=_pearson(_ranks(gold_array), _ranks(model_array)),
        oov_ratio=100.0 * oov / (len(gold) + oov),
        pairs=len(gold),
    )


def evaluate_word_analogies(
    vectors: KeyedVectors, path: str | Path, restrict_vocab: int = 300000
) -> AnalogyScores:
    """a : b :: c : ? by 3CosAdd over the restricted vocabulary; questions with a word outside it
    are skipped (and counted in `oov_ratio`). Sections named "gram..." are syntactic."""
    vocab = _case_folded(vectors, restrict_vocab)
    unit = vectors.unit[:restrict_vocab]
    sections: dict[str, list[int]] = {}
    questions, asked, oov, section = [], [], 0, None
    for number, line in enumerate(read_lines(path, "evaluation file"), start=1):
        if line.startswith(": "):
            section = line[2:].strip()
            sections[section] = [0, 0]
            continue
        words = line.upper().split()
        if len(words) != 4:
            continue
        if section is None:
            raise ConfigError(f"{path}, line {number}: a question before any ': section' line")
        if any(w not in vocab for w in words):
            oov += 1
            continue
        asked.append((section, words))
    # One matrix product per batch of questions instead of one per question.
    for start in range(0, len(asked), 512):
        batch = asked[start : start + 512]
        ids = torch.tensor([[vocab[w] for w in words[:3]] for _, words in batch])
        query = unit[ids[:, 1]] + unit[ids[:, 2]] - unit[ids[:, 0]]
        query = query / 3  # the mean of +b, +c, -a, as gensim's most_similar takes it
        query = query / query.norm(dim=1, keepdim=True).clamp(min=1e-12)
        scores = query @ unit.T
        scores.scatter_(1, ids, -float("inf"))
        top = torch.topk(scores, min(5, unit.shape[0]), dim=1).indices.tolist()
        for (name, words), candidates in zip(batch, top, strict=True):
            inputs = set(words[:3])
            predicted = next(
                (p for p in (vectors.words[i].upper() for i in candidates) if p not in inputs), None
            )
            correct = predicted == words[3]
            sections[name][0] += correct
            sections[name][1] += 1
            questions.append((*words, predicted))
    correct = sum(c for c, _ in sections.values())
    total = sum(n for _, n in sections.values())

    def share(names) -> float:
        c = sum(sections[s][0] for s in names)
        n = sum(sections[s][1] for s in names)
        return c / n if n else 0.0

    syntactic = [s for s in sections if s.startswith("gram")]
    semantic = [s for s in sections if not s.startswith("gram")]
    return AnalogyScores(
        accuracy=correct / total if total else 0.0,
        sections={k: (v[0], v[1]) for k, v in sections.items()},
        semantic=share(semantic),
        syntactic=share(syntactic),
        oov_ratio=100.0 * oov / (len(asked) + oov) if asked or oov else 0.0,
        questions=questions,
    )


def benchmark_data_dir(given: str | Path | None = None) -> Path:
    """`given`, else the word-similarity files inside an installed gensim wheel (found through
    its package metadata, not imported)."""
    import importlib.metadata

    if given:
        return Path(given)
    try:
        return Path(importlib.metadata.distribution("gensim").locate_file("gensim/test/test_data"))
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "--data-dir DIR with wordsim353.tsv, simlex999.txt and questions-words.txt is needed "
            "(gensim's wheel ships them: pip install --no-deps gensim)"
        ) from None


def evaluation_report(
    vectors: KeyedVectors, data_dir: str | Path | None = None, restrict_vocab: int = 300_000
) -> list[str]:
    """WordSim-353 and SimLex-999 correlations and the Google analogies, as report lines."""
    data = benchmark_data_dir(data_dir)
    lines = []
    for name in ("wordsim353.tsv", "simlex999.txt"):
        scores = evaluate_word_pairs(vectors, data / name)
        lines.append(
            f"{name}: spearman {scores.spearman:.4f}  pearson {scores.pearson:.4f}  "
            f"pairs {scores.pairs}  oov {scores.oov_ratio:.1f}%"
        )
    analogies = evaluate_word_analogies(
        vectors, data / "questions-words.txt", restrict_vocab=restrict_vocab
    )
    lines.append(
        f"analogies: accuracy {analogies.accuracy:.4f}  semantic {analogies.semantic:.4f}  "
        f"syntactic {analogies.syntactic:.4f}  oov {analogies.oov_ratio:.1f}%"
    )
    for section, (correct, asked) in analogies.sections.items():
        lines.append(f"  {section:<28} {correct:>5} / {asked}")
    return lines
