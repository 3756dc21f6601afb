"""The key/value cache of attention models, and every operation the engine and server do on it.

Slots fill left to right, `length` of them so far, all rows together; `valid` marks which slots of
each row hold real tokens (left padding of a batch, the unused start of a server row does not).
Beam search reorders rows, speculative decoding rewinds, and the server places a request's keys
and values in a row and shifts the shared timeline: all through the methods below.
"""

from __future__ import annotations

import torch

from lmforge.errors import ConfigError


class KVCache:
    """Pre-allocated keys and values for every layer, (batch, kv_heads, max_len, head_dim) each."""

    bounded = True  # `max_len` slots, `length` of them filled
    rewindable = True  # `truncate` drops the newest tokens
    prunable = True  # (a compiled decode step's caches are not: its graph is made for their rows)

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device,
    ):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        # One tensor per layer rather than one stacked tensor: a compiled decode step then
        # writes each layer's slot in place (a view of a stacked input would be copied whole).
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.valid = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.length = 0
        self.has_padding = False

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def batch_size(self) -> int:
        return self.k[0].shape[0]

    # The engine -----------------------------------------------------------------------------

    def reserve(self, n_tokens: int, mask: torch.Tensor | None) -> int:
        """Claim the next `n_tokens` slots (marking padding from `mask`); return the first slot."""
        start = self.length
        if start + n_tokens > self.max_len:
            raise ConfigError(
                f"KV cache full: {start} + {n_tokens} tokens exceed max_len={self.max_len}"
            )
        if mask is not None:
            self.valid[:, start : start + n_tokens] = mask
            self.has_padding = self.has_padding or not bool(mask.all())
        self.length = start + n_tokens
        return start

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Write this step's keys/values for one layer; return all keys/values so far."""
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def truncate(self, length: int) -> None:
        """Forget every slot from `length` on (speculative decoding drops rejected tokens)."""
        if not 0 <= length <= self.length:
            raise ConfigError(f"cannot truncate a KV cache of {self.length} slots to {length}")
        self.length = length

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep/duplicate batch rows (beam search picks which beams continue)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]
        self.valid = self.valid[rows]

    # The server: rows that come and go on one shared timeline -------------------------------

    def empty_rows(self) -> None:
        """Mark every slot of every row unused (a server's cache before its first request)."""
        self.valid.zero_()
        self.has_padding = True

    def place_row(self, index: int, alone: KVCache) -> None:
        """Copy a one-row cache's filled slots into row `index` so they end at the current slot;
        the row's earlier slots are masked out. The timeline must be at least that long."""
        length, end = alone.length, self.length
        if length > end:
            raise ConfigError(f"a {length}-slot row does not fit a timeline of {end} slots")
        for mine, theirs in zip(self.k + self.v, alone.k + alone.v, strict=True):
            mine[index, :, end - length : end] = theirs[0, :, :length]
        self.valid[index] = False
        self.valid[index, end - length : end] = True
        self.has_padding = True

    def free_row(self, index: int) -> None:
        self.valid[index] = False

    def shift(self, offset: int) -> None:
        """Move the timeline `offset` slots right (> 0, making room at the start) or left (< 0,
        dropping the first slots), keeping every row."""
        length = self.length
        if offset > 0:
            if length + offset > self.max_len:
                raise ConfigError(f"cannot shift {length} slots right by {offset}: cache full")
            for t in self.k + self.v:
                t[:, :, offset : offset + length] = t[:, :, :length].clone()
            self.valid[:, offset : offset + length] = self.valid[:, :length].clone()
            self.valid[:, :offset] = False
        else:
            keep = length + offset
            for t in self.k + self.v:
                t[:, :, :keep] = t[:, :, -offset:length].clone()
            self.valid[:, :keep] = self.valid[:, -offset:length].clone()
        self.valid[:, length + offset :] = False
        self.length = length + offset

    def first_rows(self, n: int) -> KVCache:
        """A cache over rows [0, n) sharing this one's memory (writes land here too); a server
        runs only its busy rows through the model, then calls `catch_up` with the view."""
        view = object.__new__(KVCache)
        view.k, view.v = [t[:n] for t in self.k], [t[:n] for t in self.v]
        view.valid = self.valid[:n]
        view.length, view.has_padding = self.length, self.has_padding
        return view

    def catch_up(self, view: KVCache) -> None:
        """Take the slots a `first_rows` view filled as this cache's own."""
        self.length = view.length
