"""Parallel text for translation: sentence pairs read from two line-aligned files, one TSV file or a
JSONL file, and training batches that hold about the same number of tokens each.

Files may be gzip-compressed (`.gz`). A pair with an empty side is skipped and counted, never
trained on; files of different lengths are an error that names the first line without a partner.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.batches import ShuffledBatches, pad_rows
from lmforge.data.files import jsonl_objects, text_lines
from lmforge.errors import ConfigError


@dataclass
class ParallelText:
    """Source-target sentence pairs, and how many pairs with an empty side were skipped."""

    sources: list[str]
    targets: list[str]
    skipped_empty: int = 0

    def __len__(self) -> int:
        return len(self.sources)


def _pairs_of_files(source: Path, target: Path) -> Iterator[tuple[int, str, str]]:
    sources, targets = text_lines(source), text_lines(target)
    number = 0
    while True:
        src, tgt = next(sources, None), next(targets, None)
        if src is None or tgt is None:
            break
        number += 1
        yield number, src, tgt
    if src is not None or tgt is not None:
        longer, shorter = (source, target) if src is not None else (target, source)
        raise ConfigError(
            f"--source and --target differ in length: {longer} has a line {number + 1} but "
            f"{shorter} ends after line {number}; the files must be line-aligned"
        )


def _pairs_of_tsv(path: Path) -> Iterator[tuple[int, str, str]]:
    for number, line in enumerate(text_lines(path), start=1):
        if not line.strip():
            yield number, "", ""
            continue
        columns = line.split("\t")
        if len(columns) < 2:
            raise ConfigError(
                f"{path}:{number}: expected a source and a target separated by a tab, found "
                f"{len(columns)} column"
            )
        yield number, columns[0], columns[1]


def _pairs_of_jsonl(path: Path, fields: tuple[str, str]) -> Iterator[tuple[int, str, str]]:
    for number, record in jsonl_objects(path):
        if any(f not in record for f in fields):
            raise ConfigError(
                f"{path}:{number}: expected a JSON object with the fields {list(fields)}"
            )
        yield number, str(record[fields[0]]), str(record[fields[1]])


def read_parallel(
    source: str | Path,
    target: str | Path | None = None,
    fields: tuple[str, str] = ("source", "target"),
    limit: int | None = None,
) -> ParallelText:
    """Sentence pairs from `source` and `target` (line-aligned files), or from `source` alone: a
    `.tsv` (source<TAB>target) or `.jsonl` (`fields` name the source and target keys).
    `limit` keeps the first pairs only."""
    source = Path(source).expanduser()
    if target is not None:
        pairs = _pairs_of_files(source, Path(target).expanduser())
    elif source.name.removesuffix(".gz").endswith(".tsv"):
        pairs = _pairs_of_tsv(source)
    elif source.name.removesuffix(".gz").endswith(".jsonl"):
        pairs = _pairs_of_jsonl(source, fields)
    else:
        raise ConfigError(
            f"{source}: give --target too (two line-aligned files), or a .tsv or .jsonl file "
            "holding both sides"
        )
    text = ParallelText([], [])
    for _, src, tgt in pairs:
        if not src.strip() or not tgt.strip():
            text.skipped_empty += 1
            continue
        text.sources.append(src.strip())
        text.targets.append(tgt.strip())
        if limit is not None and len(text) >= limit:
            break
    if not text.sources:
        raise ConfigError(f"{source}: no sentence pair with text on both sides")
    return text


@dataclass
class EncodedPairs:
    """Token ids of each pair: the source (ending in EOS), and the target with EOS."""

    sources: list[list[int]]
    targets: list[list[int]]

    def __len__(self) -> int:
        return len(self.sources)


def encode_pairs(
    text: ParallelText,
    encode,
    eos_id: int,
    max_len: int,
    truncate: bool = False,
    what: str = "training",
) -> tuple[EncodedPairs, int]:
    """Tokenize every pair with `encode(str) -> ids`; pairs longer than `max_len` tokens (EOS
    included) are dropped, or cut when `truncate`. Returns the pairs and how many were dropped."""
    pairs, dropped = EncodedPairs([], []), 0
    for src, tgt in zip(text.sources, text.targets, strict=True):
        src_ids, tgt_ids = encode(src) + [eos_id], encode(tgt) + [eos_id]
        if max(len(src_ids), len(tgt_ids)) > max_len:
            if not truncate:
                dropped += 1
                continue
            src_ids, tgt_ids = src_ids[: max_len - 1] + [eos_id], tgt_ids[: max_len - 1] + [eos_id]
        pairs.sources.append(src_ids)
        pairs.targets.append(tgt_ids)
    if not pairs.sources:
        raise ConfigError(
            f"every {what} pair is longer than {max_len} tokens; raise the model's maximum "
            "length or pass truncate"
        )
    return pairs, dropped


@dataclass
class PairBatch:
    """A batch of pairs: the padded sources, the decoder's inputs (start token, then the target)
    and its targets (the target, then EOS); masks mark real tokens."""

    source: torch.Tensor
    source_mask: torch.Tensor
    target_in: torch.Tensor
    target_out: torch.Tensor
    target_mask: torch.Tensor

    @property
    def target_tokens(self) -> int:
        return int(self.target_mask.sum())

    def rows(self, select) -> PairBatch:
        """The batch's rows `select` (a slice or an index tensor), e.g. one process's share."""
        return PairBatch(*(t[select] for t in vars(self).values()))


def make_batch(
    sources: list[list[int]], targets: list[list[int]], pad_id: int, start_id: int
) -> PairBatch:
    """Pad a list of pairs into a `PairBatch` (targets already end in EOS)."""
    source, source_mask = pad_rows(sources, pad_id)
    target_out, target_mask = pad_rows(targets, pad_id)
    target_in = torch.cat(
        (torch.full((len(targets), 1), start_id, dtype=torch.long), target_out[:, :-1]), dim=1
    )
    target_in[:, 1:][~target_mask[:, :-1]] = pad_id
    return PairBatch(source, source_mask, target_in, target_out, target_mask)


class TokenBatches(ShuffledBatches):
    """Batches of about `batch_tokens` source+target tokens: pairs sorted by length into buckets
    (little padding), the batches shuffled each epoch (fairseq's and Marian's scheme). Knows where
    it is (`state_dict`), so a resumed run sees exactly the batches it would have seen."""

    def __init__(
        self, pairs: EncodedPairs, batch_tokens: int, pad_id: int, start_id: int, seed: int
    ):
        longest = max(len(s) + len(t) for s, t in zip(pairs.sources, pairs.targets, strict=True))
        if batch_tokens < longest:
            raise ConfigError(
                f"batch_tokens={batch_tokens} is smaller than the longest pair ({longest} "
                "tokens); raise it or lower the maximum length"
            )
        self.pairs, self.pad_id, self.start_id = pairs, pad_id, start_id
        order = sorted(
            range(len(pairs)), key=lambda i: (len(pairs.sources[i]), len(pairs.targets[i]), i)
        )
        batches: list[list[int]] = []
        current: list[int] = []
        widest = 0
        for index in order:
            size = len(pairs.sources[index]) + len(pairs.targets[index])
            if current and max(widest, size) * (len(current) + 1) > batch_tokens:
                batches.append(current)
                current, widest = [], 0
            current.append(index)
            widest = max(widest, size)
        batches.append(current)
        super().__init__(batches, seed)

    def next(self) -> tuple[PairBatch, bool]:
        """The next batch, and whether it starts a new epoch."""
        indices, new_epoch = self.next_rows()
        batch = make_batch(
            [self.pairs.sources[i] for i in indices],
            [self.pairs.targets[i] for i in indices],
            self.pad_id,
            self.start_id,
        )
        return batch, new_epoch
