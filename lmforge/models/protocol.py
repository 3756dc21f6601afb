"""The protocol every lmforge language model speaks, written down so the engine, the trainer, the
evaluators and the server can rely on it without asking which model they hold.

    model(input_ids, cache=None, positions=None, mask=None, last_only=False) -> (logits, cache)
    model.new_cache(batch_size, max_len) -> a cache (KV slots, a hidden state, a token window)

What differs between models is declared, never guessed from their type: whether a model carries
state from one chunk of text to the next (`stateful`), what `trace` can show of its inner workings
(`trace_views`), and whether its cache has slots that fill up (`bounded`), can forget its newest
tokens (`rewindable`) and can drop rows that finished (`prunable`). `tests/test_protocol.py` runs every model type through all of it.

A task head reads a model's states instead of its logits: GPT, RNN and nn.Transformer LMs offer
`model.hidden(input_ids) -> (batch, seq, width)`, the states their output layer reads
(`lmforge.models.heads`).

An encoder-decoder adds one step in front: `model.decoder(model.encode(source, mask))` is a
language model of the target bound to those sources (`EncoderDecoder`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class GenerationCache(Protocol):
    """What a model keeps between decode steps."""

    bounded: bool  # a fixed number of slots (`max_len`), `length` of them filled
    rewindable: bool  # `truncate(length)` forgets every token from `length` on
    prunable: bool  # `reorder` may keep fewer rows (False: a step compiled for this many rows)

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep/duplicate batch rows (beam search picks which beams continue)."""


@dataclass
class Trace:
    """What a model shows of one forward pass over a sequence (batch 1): the logits, and where the
    model has them, each layer's attention weights (1, heads, queries, keys), the residual stream
    after each layer (1, seq, d) with `read_out` turning one into logits (the logit lens), and for
    recurrent models each layer's states and gates over the text (name -> per layer (seq, hidden))."""

    logits: torch.Tensor | None = None
    attentions: list[torch.Tensor] = field(default_factory=list)
    hidden_states: list[torch.Tensor] = field(default_factory=list)
    read_out: Callable[[torch.Tensor], torch.Tensor] | None = None
    states: dict[str, list[torch.Tensor]] = field(default_factory=dict)


@runtime_checkable
class LanguageModel(Protocol):
    """A next-token model lmforge can generate from, train, evaluate and serve."""

    config: Any  # a dataclass with `vocab_size`, `n_layer`, `d_model` and `to_dict()`
    max_seq_len: int  # the longest text the engine may feed (recurrent models: no limit)
    stateful: bool  # carries a state across chunks of one text (trained and scored in streams)
    trace_views: tuple[str, ...]  # what `trace` fills: "attention", "lens", "states"

    def __call__(
        self,
        input_ids: torch.Tensor,
        cache: Any = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, Any]: ...

    def new_cache(self, batch_size: int, max_len: int | None = None) -> GenerationCache: ...

    def trace(self, input_ids: torch.Tensor) -> Trace: ...

    def describe(self) -> dict[str, Any]:
        """The architecture in a few named fields (what `lmforge info` prints about it)."""

    def num_parameters(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...


@runtime_checkable
class EncoderDecoder(Protocol):
    """A translation model: it reads a source once, then its decoder, bound to that source, is a
    `LanguageModel` the engine drives (its cache carries the source's memory, so beam search
    reorders it with the rest). Trained on whole targets at once."""

    config: Any  # with `pad_id`, `start_id` (the decoder's first input), `eos_id`, `max_seq_len`
    encoder_decoder: bool  # True: what the API checks before translating or chatting

    def encode(self, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> Any: ...

    def decoder(self, memory: Any) -> LanguageModel: ...

    def __call__(
        self,
        source: torch.Tensor,
        source_mask: torch.Tensor,
        target_in: torch.Tensor,
        target_mask: torch.Tensor | None = None,
    ) -> torch.Tensor: ...
