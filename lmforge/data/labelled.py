"""Labelled text for classification: a CSV or TSV file with a header row, or JSONL, with a text
column and a label column; and training batches of texts of about the same length.

Labels are names. Given the names (`labels`), a value is one of them or an index into them
(SST-2's 0/1 with names neg,pos); not given, the names are the values found, sorted (numerically
when all are integers). A missing column, a label outside the names, an empty text or a single
class is an error that names the file and the row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.data.batches import LengthBuckets, pad_rows
from lmforge.data.files import jsonl_objects, open_text
from lmforge.errors import ConfigError


@dataclass
class LabelledText:
    """Texts, each one's label as an index into `names`."""

    texts: list[str]
    labels: list[int]
    names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def _rows(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(row number as a person counts it, the row)])."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind in (".jsonl", ".json"):
        rows = list(jsonl_objects(path))
        return sorted({k for _, row in rows for k in row}), rows
    if kind not in (".csv", ".tsv"):
        raise ConfigError(f"{path}: expected a .csv or .tsv file with a header row, or .jsonl")
    try:
        with open_text(path) as handle:
            reader = csv.DictReader(handle, delimiter="\t" if kind == ".tsv" else ",")
            columns = list(reader.fieldnames or [])
            # the header is line 1, so the first record is line 2
            return columns, [(number, row) for number, row in enumerate(reader, 2)]
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not readable UTF-8 text ({exc})") from None


def _label_names(values: list[str]) -> list[str]:
    unique = set(values)
    if all(v.lstrip("-").isdigit() for v in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def read_labelled(
    path: str | Path,
    text_column: str | None = None,
    label_column: str = "label",
    labels: list[str] | None = None,
    require_labels: bool = True,
) -> LabelledText:
    """Texts and labels from `path`. `text_column` None: the one column that is not the label's.
    `require_labels=False` reads the texts alone (prediction), whether or not there are labels."""
    path = Path(path)
    columns, rows = _rows(path)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    if text_column is None:
        others = [c for c in columns if c != label_column]
        if len(others) != 1:
            raise ConfigError(
                f"{path}: which column holds the text? columns are {columns}; pass text_column "
                "(--text-column)"
            )
        text_column = others[0]
    has_labels = require_labels and label_column in columns
    for name, present, needed in (
        (text_column, text_column in columns, True),
        (label_column, has_labels, require_labels),
    ):
        if needed and not present:
            raise ConfigError(f"{path}: no column {name!r}; the columns are {columns}")
    texts, values = [], []
    for number, row in rows:
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{path}, row {number}: the {text_column!r} text is empty")
        texts.append(text)
        if has_labels:
            value = row.get(label_column)
            if value is None or str(value).strip() == "":
                raise ConfigError(f"{path}, row {number}: no {label_column!r} label")
            values.append(str(value).strip())
    if not has_labels:
        return LabelledText(texts, [], list(labels or []))
    names = list(labels) if labels else _label_names(values)
    index = {name: i for i, name in enumerate(names)}
    encoded = []
    for (number, _), value in zip(rows, values, strict=True):
        if value in index:
            encoded.append(index[value])
        elif labels and value.isdigit() and int(value) < len(names):
            encoded.append(int(value))
        else:
            raise ConfigError(
                f"{path}, row {number}: label {value!r} is not one of the labels {names}"
            )
    return LabelledText(texts, encoded, names)


def check_classes(data: LabelledText, where: str) -> None:
    """Training needs at least two classes present."""
    present = sorted(set(data.labels))
    if len(present) < 2:
        only = data.names[present[0]] if present else "none"
        raise ConfigError(
            f"{where}: every row has the label {only!r}; a classifier needs two classes or more"
        )


@dataclass
class LabelBatch:
    ids: torch.Tensor  # (rows, longest) right-padded token ids
    mask: torch.Tensor  # (rows, longest) True for real tokens
    labels: torch.Tensor  # (rows,)


class LabelBatches(LengthBuckets):
    """Training batches of `batch_size` texts of about the same length, with their labels."""

    def __init__(
        self, ids: list[list[int]], labels: list[int], batch_size: int, pad_id: int, seed: int
    ):
        super().__init__([len(row) for row in ids], batch_size, seed)
        self.ids, self.labels, self.pad_id = ids, labels, pad_id

    def next(self) -> tuple[LabelBatch, bool]:
        """The next batch, and whether it starts a new epoch."""
        rows, new_epoch = self.next_rows()
        ids, mask = pad_rows([self.ids[i] for i in rows], self.pad_id)
        return LabelBatch(ids, mask, torch.tensor([self.labels[i] for i in rows])), new_epoch
