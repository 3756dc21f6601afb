"""Training batches from a token array: random windows (nanoGPT) or parallel streams (truncated
back-propagation through time, as PyTorch's word_language_model does).

Both hand out the *global* batch and know where they are (`state_dict`), so a resumed run
continues with exactly the batches it would have seen, and each of N processes takes its own
rows of the same global batch.
"""

from __future__ import annotations

import numpy as np
import torch

from lmforge.errors import ConfigError


def _long(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.int64))


class RandomWindows:
    """`batch_size` windows of `block_size` + 1 tokens at uniformly random offsets: the inputs
    and, shifted by one, the targets."""

    stateful = False

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int):
        if len(tokens) < block_size + 1:
            raise ConfigError(
                f"the training split has {len(tokens)} tokens, fewer than one block of "
                f"block_size={block_size} + 1; use more text or a smaller block_size"
            )
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(inputs, targets, starts_new_epoch); windows never carry state, so always False."""
        offsets = torch.randint(
            len(self.tokens) - self.block_size, (self.batch_size,), generator=self.generator
        ).tolist()
        rows = np.stack([self.tokens[o : o + self.block_size + 1] for o in offsets])
        rows = _long(rows)
        return rows[:, :-1], rows[:, 1:], False

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class Streams:
    """The token array cut into `batch_size` parallel streams, read `block_size` tokens at a time;
    a model carries its hidden state from one chunk to the next within an epoch."""

    stateful = True

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int):
        self.length = len(tokens) // batch_size
        if self.length < 2:
            raise ConfigError(
                f"the training split has {len(tokens)} tokens: too few for batch_size={batch_size} "
                "streams of at least 2 tokens"
            )
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.position, self.epoch = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return -(-(self.length - 1) // self.block_size)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The next chunk of every stream; `starts_new_epoch` tells the model to reset its state."""
        new_epoch = self.position == 0
        size = min(self.block_size, self.length - 1 - self.position)
        rows = np.stack(
            [
                self.tokens[
                    r * self.length + self.position : r * self.length + self.position + size + 1
                ]
                for r in range(self.batch_size)
            ]
        )
        rows = _long(rows)
        self.position += size
        if self.position >= self.length - 1:
            self.position, self.epoch = 0, self.epoch + 1
        return rows[:, :-1], rows[:, 1:], new_epoch

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.position, self.epoch = state["position"], state["epoch"]


def eval_chunks(tokens: np.ndarray, block_size: int, batch_size: int):
    """Held-out tokens as `batch_size` streams read in chunks of `block_size`: every token is
    predicted exactly once; stateful models carry state across chunks, others start fresh."""
    length = len(tokens) // batch_size
    if length < 2:
        batch_size, length = 1, len(tokens)
    if length < 2:
        raise ConfigError(f"the evaluation split has {len(tokens)} tokens; it needs at least 2")
    data = _long(np.asarray(tokens[: batch_size * length])).view(batch_size, length)
    for start in range(0, length - 1, block_size):
        end = min(start + block_size, length - 1)
        yield data[:, start:end], data[:, start + 1 : end + 1], start == 0


class ShuffledBatches:
    """Batches fixed once (lists of row indexes), taken in a new random order every epoch. Knows
    where it is (`state_dict`), so a resumed run sees exactly the batches it would have seen."""

    stateful = False

    def __init__(self, batches: list[list[int]], seed: int):
        if not batches or not batches[0]:
            raise ConfigError("no rows to batch")
        self.batches = batches
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.position = 0, 0
        self.order = self._shuffle()

    def _shuffle(self) -> list[int]:
        return torch.randperm(len(self.batches), generator=self.generator).tolist()

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)

    def next_rows(self) -> tuple[list[int], bool]:
        """The next batch's rows, and whether it starts a new epoch."""
        new_epoch = self.position == 0
        rows = self.batches[self.order[self.position]]
        self.position += 1
        if self.position == len(self.order):
            self.epoch, self.position = self.epoch + 1, 0
            self.order = self._shuffle()
        return rows, new_epoch

    def state_dict(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "position": self.position,
            "order": list(self.order),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.position = state["epoch"], state["position"]
        self.order = list(state["order"])


class LengthBuckets(ShuffledBatches):
    """Rows that are whole texts of different lengths, sorted by length and cut into batches of
    `batch_size` (little padding), the batches shuffled every epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        super().__init__(
            [order[i : i + batch_size] for i in range(0, len(order), batch_size)], seed
        )


def pad_rows(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (rows, longest) of token lists of different lengths, and the mask of
    real tokens."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask
