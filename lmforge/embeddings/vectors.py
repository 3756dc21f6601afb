"""Word vectors: nearest neighbours, analogies, and the word2vec / GloVe file formats.

`KeyedVectors` follows gensim's names and semantics (`most_similar`, `similarity`,
`doesnt_match`, `most_similar_cosmul`, `restrict_vocab`), so code and files move freely between
the two: gensim's `KeyedVectors.load_word2vec_format` reads what `save` writes, and back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmforge.errors import ConfigError


class KeyedVectors:
    """Words and their vectors (rows of a float32 matrix), most frequent first by convention."""

    def __init__(self, words: list[str], vectors: torch.Tensor | np.ndarray):
        vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise ConfigError(
                f"{len(words)} words but vectors of shape {tuple(vectors.shape)}; expected (words, dim)"
            )
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ConfigError("the vocabulary has duplicate words")
        self.vectors = vectors
        self._unit: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> torch.Tensor:
        return self.vectors[self._id(word)]

    @property
    def unit(self) -> torch.Tensor:
        """Rows scaled to length 1 (cosine similarity is then a dot product)."""
        if self._unit is None:
            norms = self.vectors.norm(dim=1, keepdim=True).clamp(min=1e-12)
            self._unit = self.vectors / norms
        return self._unit

    def _id(self, word: str) -> int:
        try:
            return self.index[word]
        except KeyError:
            raise ConfigError(
                f"word {word!r} is not in the vocabulary ({len(self)} words)"
            ) from None

    def similarity(self, a: str, b: str) -> float:
        return float(self.unit[self._id(a)] @ self.unit[self._id(b)])

    def most_similar(
        self,
        positive: str | list[str] = (),
        negative: str | list[str] = (),
        topn: int = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]]:
        """Words nearest (by cosine) to the mean of unit `positive` minus `negative` vectors
        (3CosAdd for analogies); the query words themselves are left out."""
        positive, negative, ids = self._query(positive, negative)
        weights = torch.tensor([1.0] * len(positive) + [-1.0] * len(negative))
        query = (self.unit[ids] * weights[:, None]).mean(dim=0)
        query = query / query.norm().clamp(min=1e-12)
        return self._top(self.unit @ query, ids, topn, restrict_vocab)

    def most_similar_cosmul(
        self,
        positive: str | list[str] = (),
        negative: str | list[str] = (),
        topn: int = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]]:
        """3CosMul (Levy & Goldberg 2014): prod cos(w, p) / (prod cos(w, n) + eps), cosines
        shifted to [0, 1], as gensim computes it."""
        positive, negative, ids = self._query(positive, negative)
        shifted = (1 + self.unit @ self.unit[ids].T) / 2  # (words, query words)
        score = shifted[:, : len(positive)].prod(dim=1)
        below = shifted[:, len(positive) :].prod(dim=1)  # 1 when there is no negative word
        return self._top(score / (below + 1e-6), ids, topn, restrict_vocab)

    def _query(self, positive, negative) -> tuple[list[str], list[str], list[int]]:
        """Positive and negative words as lists (a single word may be a string), and their ids."""
        positive = [positive] if isinstance(positive, str) else list(positive)
        negative = [negative] if isinstance(negative, str) else list(negative)
        if not positive and not negative:
            raise ConfigError("give at least one positive or negative word")
        return positive, negative, [self._id(w) for w in positive + negative]

    def _top(self, scores: torch.Tensor, exclude: list[int], topn: int, restrict_vocab):
        scores = (scores if restrict_vocab is None else scores[:restrict_vocab]).clone()
        exclude = [i for i in exclude if i < len(scores)]
        scores[exclude] = -float("inf")
        values, ids = torch.topk(scores, min(topn, len(scores) - len(exclude)))
        return [(self.words[i], float(v)) for v, i in zip(values, ids.tolist(), strict=True)]

    def doesnt_match(self, words: list[str]) -> str:
        """The word furthest from the mean of the others' unit vectors."""
        known = [w for w in words if w in self.index]
        if len(known) < 2:
            raise ConfigError(f"doesnt_match needs at least 2 known words, got {known}")
        unit = self.unit[[self.index[w] for w in known]]
        mean = unit.mean(dim=0)
        mean = mean / mean.norm().clamp(min=1e-12)
        return known[int((unit @ mean).argmin())]

    # Files -------------------------------------------------------------------------------

    def save(self, path: str | Path, binary: bool = False, header: bool = True) -> None:
        """word2vec text (header "count dim"), word2vec binary (`binary=True`), or GloVe text
        (`header=False`: no count line)."""
        path = Path(path)
        if binary:
            with path.open("wb") as f:
                f.write(f"{len(self)} {self.dim}\n".encode())
                array = self.vectors.numpy().astype("<f4")
                for word, row in zip(self.words, array, strict=True):
                    f.write(word.encode("utf-8") + b" " + row.tobytes() + b"\n")
            return
        with path.open("w", encoding="utf-8") as f:
            if header:
                f.write(f"{len(self)} {self.dim}\n")
            for word, row in zip(self.words, self.vectors.tolist(), strict=True):
                f.write(word + " " + " ".join(f"{x:.6g}" for x in row) + "\n")

    @classmethod
    def load(cls, path: str | Path, binary: bool | None = None) -> KeyedVectors:
        """Read word2vec text or binary, or GloVe text (no header); `binary=None` sniffs it."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"vectors file {path} does not exist")
        if binary is None:
            with path.open("rb") as f:
                first = f.readline()
                sample = f.read(4096)
            binary = _looks_binary(first, sample)
        return _read_binary(path) if binary else _read_text(path)


def _looks_binary(first_line: bytes, sample: bytes) -> bool:
    parts = first_line.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return False  # no header: GloVe text
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(sample) - 4  # bytes that are no text, well before a cut character
    return False


def _read_text(path: Path) -> KeyedVectors:
    words, rows = [], []
    with path.open(encoding="utf-8", errors="strict") as f:
        try:
            lines = f.read().splitlines()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); binary file?") from None
    header = lines[0].split() if lines else []
    expected = None
    start = 0
    if len(header) == 2 and all(p.isdigit() for p in header):
        expected, dim = int(header[0]), int(header[1])
        start = 1
    elif lines:
        dim = len(header) - 1
    else:
        raise ConfigError(f"{path}: empty vectors file")
    for number, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            continue
        parts = line.rstrip().split(" ")
        if len(parts) != dim + 1:
            raise ConfigError(
                f"{path}, line {number}: {len(parts) - 1} numbers, expected {dim} (the header's dimension)"
            )
        try:
            rows.append([float(x) for x in parts[1:]])
        except ValueError:
            raise ConfigError(f"{path}, line {number}: a value is not a number") from None
        words.append(parts[0])
    if expected is not None and expected != len(words):
        raise ConfigError(f"{path}: the header says {expected} words, the file has {len(words)}")
    return KeyedVectors(words, np.asarray(rows, dtype=np.float32).reshape(len(words), dim))


def _read_binary(path: Path) -> KeyedVectors:
    data = path.read_bytes()
    newline = data.find(b"\n")
    try:
        count, dim = (int(x) for x in data[:newline].split())
    except ValueError:
        raise ConfigError(
            f"{path}: bad header {data[:newline][:40]!r}; expected 'count dim'"
        ) from None
    words, rows, pos, size = [], [], newline + 1, 4 * dim
    for record in range(1, count + 1):
        space = data.find(b" ", pos)
        if space < 0 or space + 1 + size > len(data):
            raise ConfigError(f"{path}: record {record} of {count} is truncated")
        word = data[pos:space].decode("utf-8", errors="replace").lstrip("\n")
        rows.append(np.frombuffer(data, dtype="<f4", count=dim, offset=space + 1))
        words.append(word)
        pos = space + 1 + size
        if pos < len(data) and data[pos : pos + 1] == b"\n":
            pos += 1
    return KeyedVectors(words, np.stack(rows) if rows else np.zeros((0, dim), np.float32))


def load_into_embedding(
    embedding: torch.nn.Embedding,
    vocabulary: list[str],
    vectors: KeyedVectors,
    freeze: bool = False,
) -> tuple[int, int]:
    """Copy pretrained vectors into a language model's input embedding, row by row of its
    `vocabulary` (token id -> word); words without a vector keep their random initialisation.
    Returns (initialised, left random). `freeze` stops training of the whole table."""
    if embedding.embedding_dim != vectors.dim:
        raise ConfigError(
            f"the embedding has {embedding.embedding_dim} dimensions, the vectors {vectors.dim}"
        )
    if len(vocabulary) != embedding.num_embeddings:
        raise ConfigError(
            f"vocabulary has {len(vocabulary)} words but the embedding {embedding.num_embeddings} rows"
        )
    pairs = [(i, vectors.index[w]) for i, w in enumerate(vocabulary) if w in vectors.index]
    if pairs:
        rows, sources = (torch.tensor(x) for x in zip(*pairs, strict=True))
        with torch.no_grad():
            embedding.weight[rows] = vectors.vectors[sources].to(embedding.weight.dtype)
    embedding.weight.requires_grad_(not freeze)
    return len(pairs), len(vocabulary) - len(pairs)
