"""Where the batcher keeps each row's model state, one class per kind of generation cache.

- `KVRows` (GPT): one KV cache whose rows share a slot timeline (see the batcher's docstring).
- `StateRows` (RNN/LSTM/GRU): one hidden state per row; a step advances every busy row.
- `WindowRows` (nn.Transformer LM and other cache-free models): each step re-runs every row's
  token window, left-padded into one batch.

Each offers: `capacity` (tokens one row can hold), `prefill(index, prompt)` -> the next-token
logits, `free(index)`, and `step(histories)` -> next-token logits of every busy row (histories:
row index -> all of that row's tokens, the newest last).
"""

from __future__ import annotations

import torch

from lmforge.device import model_device


class KVRows:
    """Rows of one KV cache sharing a timeline: a new prompt is prefilled alone and copied so it
    ends at the current slot; the timeline shifts right for a longer prompt, and left when it
    reaches the cache's end or when the slots no running row needs are over half of it."""

    def __init__(self, model, max_batch: int, cache_len: int):
        self.model, self.device = model, model_device(model)
        self.cache = model.new_cache(max_batch, min(cache_len, model.max_seq_len))
        self.cache.empty_rows()
        self.starts: dict[int, int] = {}  # row -> slot of its first prompt token
        self.shifts = 0  # timeline moves (a long prompt joined, or the cache end was reached)

    @property
    def capacity(self) -> int:
        return self.cache.max_len

    def prefill(self, index: int, prompt: list[int]) -> torch.Tensor:
        alone = self.model.new_cache(1, len(prompt))
        logits, alone = self.model(
            torch.tensor([prompt], device=self.device), alone, last_only=True
        )
        if len(prompt) > self.cache.length:
            self._shift(len(prompt) - self.cache.length)
        self.cache.place_row(index, alone)
        self.starts[index] = self.cache.length - len(prompt)
        return logits[0, -1]

    def free(self, index: int) -> None:
        self.cache.free_row(index)
        self.starts.pop(index, None)
        # Every step attends over the whole timeline, so drop the slots no running row needs
        # once they are over half of it: each move copies less than half the timeline, and
        # the span stays under twice the oldest running row's.
        first = min(self.starts.values(), default=self.cache.length)
        if first * 2 > self.cache.length:
            self._shift(-first)

    def _shift(self, offset: int) -> None:
        """Move the timeline `offset` slots right (> 0) or left (< 0), keeping every row."""
        self.shifts += 1
        self.cache.shift(offset)
        self.starts = {row: start + offset for row, start in self.starts.items()}

    def step(self, histories: dict[int, list[int]], pad_id: int) -> dict[int, torch.Tensor]:
        cache = self.cache
        if cache.length == cache.max_len:  # shift left past slots no running row needs
            self._shift(-min(self.starts[i] for i in histories))
        busy = max(histories) + 1  # rows are taken lowest first: [0, busy) holds every one
        tokens, positions, mask = [pad_id] * busy, [0] * busy, [False] * busy
        for i, history in histories.items():
            tokens[i], positions[i], mask[i] = history[-1], len(history) - 1, True
        view = cache.first_rows(busy)
        logits, _ = self.model(
            torch.tensor(tokens, device=self.device)[:, None],
            view,
            torch.tensor(positions, device=self.device)[:, None],
            torch.tensor(mask, device=self.device)[:, None],
            last_only=True,
        )
        cache.catch_up(view)
        return {i: logits[i, -1] for i in histories}


class StateRows:
    """One recurrent state per row: a step feeds every busy row its newest token."""

    def __init__(self, model, max_batch: int, cache_len: int):
        self.model, self.device = model, model_device(model)
        self.state = model.new_cache(max_batch)
        self.capacity = cache_len
        self.shifts = 0

    def prefill(self, index: int, prompt: list[int]) -> torch.Tensor:
        logits, alone = self.model(torch.tensor([prompt], device=self.device), None, last_only=True)
        self.state.place_row(index, alone)
        return logits[0, -1]

    def free(self, index: int) -> None:
        pass  # the next prefill of this row overwrites its state

    def step(self, histories: dict[int, list[int]], pad_id: int) -> dict[int, torch.Tensor]:
        busy = max(histories) + 1
        ids = [pad_id] * busy
        for i, history in histories.items():
            ids[i] = history[-1]
        tokens = torch.tensor(ids, device=self.device)[:, None]
        logits, view = self.model(tokens, self.state.first_rows(busy), last_only=True)
        self.state.catch_up(view)  # free rows get junk; their next prefill overwrites it
        return {i: logits[i, -1] for i in histories}


class WindowRows:
    """Cache-free models: every step runs each busy row's recent tokens, left-padded together."""

    def __init__(self, model, max_batch: int, cache_len: int):
        self.model, self.device = model, model_device(model)
        self.capacity = cache_len
        self.window = model.config.max_seq_len
        self.shifts = 0

    def prefill(self, index: int, prompt: list[int]) -> torch.Tensor:
        window = torch.tensor([prompt[-self.window :]], device=self.device)
        logits, _ = self.model(window, None, last_only=True)
        return logits[0, -1]

    def free(self, index: int) -> None:
        pass

    def step(self, histories: dict[int, list[int]], pad_id: int) -> dict[int, torch.Tensor]:
        order = list(histories)
        windows = [histories[i][-self.window :] for i in order]
        width = max(map(len, windows))
        tokens = [[pad_id] * (width - len(ids)) + ids for ids in windows]
        mask = [[False] * (width - len(ids)) + [True] * len(ids) for ids in windows]
        logits, _ = self.model(
            torch.tensor(tokens, device=self.device),
            None,
            mask=torch.tensor(mask, device=self.device),
            last_only=True,
        )
        return {i: logits[row, -1] for row, i in enumerate(order)}


def row_store(model, max_batch: int, cache_len: int):
    """The store that fits `model`'s generation cache, by what the cache declares it can do."""
    if model.new_cache(1, 1).bounded:
        return KVRows(model, max_batch, cache_len)
    if model.stateful:
        return StateRows(model, max_batch, cache_len)
    return WindowRows(model, max_batch, cache_len)
