"""A Transformer language model built on `torch.nn.TransformerEncoder` with a causal mask.

This is the model of PyTorch's "language modeling with nn.Transformer" tutorial: token embedding
scaled by sqrt(d_model), sinusoidal positions, a stack of encoder layers that may only look
backwards, and a linear head. It trains with cross-entropy over the vocabulary (a regression loss
such as MSE on token ids is not a language-model loss).

It keeps no key/value cache. Its generation cache is the token window itself, and each step re-runs
the window, as nanoGPT's `generate` does: when the text outgrows `max_seq_len`, the window slides
and positions are renumbered from 0, so the model always sees positions it was trained on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.protocol import Trace


@dataclass
class TransformerConfig:
    vocab_size: int
    d_model: int = 256
    n_head: int = 4
    n_layer: int = 4
    d_ff: int | None = None  # None means 4 * d_model
    dropout: float = 0.1
    max_seq_len: int = 256  # the attention window (training block size)
    norm_first: bool = True  # pre-norm trains more stably than the tutorial's post-norm
    tie_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for name in ("vocab_size", "d_model", "n_head", "n_layer", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}; expected a positive integer")
        if self.d_model % self.n_head:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout}; expected a value in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        return cls(**data)


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """ "Attention is all you need" encodings: sin on even features, cos on odd, for any position."""
    rates = torch.exp(torch.arange(0, dim, 2, device=positions.device) * (-math.log(10000.0) / dim))
    angles = positions[..., None].float() * rates
    encoding = torch.zeros(*positions.shape, dim, device=positions.device)
    encoding[..., 0::2] = torch.sin(angles)
    encoding[..., 1::2] = torch.cos(angles)
    return encoding


class TokenWindow:
    """The generation cache of a cache-free model: the tokens seen so far and which are real."""

    bounded = False  # it grows; the model reads only the newest window of it
    rewindable = False  # speculative decoding needs a KV cache: nothing here to gain from it
    prunable = True

    def __init__(self, batch_size: int, device):
        self.tokens = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)

    def append(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> None:
        mask = mask if mask is not None else torch.ones_like(tokens, dtype=torch.bool)
        self.tokens = torch.cat((self.tokens, tokens), dim=1)
        self.valid = torch.cat((self.valid, mask), dim=1)

    def reorder(self, rows: torch.Tensor) -> None:
        self.tokens, self.valid = self.tokens[rows], self.valid[rows]

    def truncate(self, length: int) -> None:
        """Forget every token from `length` on (speculative decoding drops rejected tokens)."""
        self.tokens, self.valid = self.tokens[:, :length], self.valid[:, :length]


class TransformerLM(nn.Module):
    """Token embedding + sinusoidal positions -> causal `nn.TransformerEncoder` -> linear head."""

    max_seq_len = 1 << 30  # generation slides the window; `config.max_seq_len` is the window
    stateful = False
    trace_views = ("attention", "lens")

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.n_head,
            config.d_ff,
            config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=config.norm_first,
        )
        final_norm = nn.LayerNorm(config.d_model) if config.norm_first else None
        self.encoder = nn.TransformerEncoder(
            layer, config.n_layer, norm=final_norm, enable_nested_tensor=False
        )
        self.lm_head = nn.Linear(config.d_model, config.vocab_size)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=config.d_model**-0.5)
        nn.init.zeros_(self.lm_head.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def new_cache(self, batch_size: int, max_len: int | None = None) -> TokenWindow:
        return TokenWindow(batch_size, self.embed.weight.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: TokenWindow | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, TokenWindow | None]:
        """Logits for `input_ids` (batch, seq); with a `cache`, the new tokens join the window and
        the window is re-run. mask: (batch, seq) bool, False marks left padding."""
        new = input_ids.shape[1]
        if cache is not None:
            cache.append(input_ids, mask)
            tokens, valid = cache.tokens, cache.valid
        else:
            tokens = input_ids
            valid = mask if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        window = self.config.max_seq_len
        tokens, valid = tokens[:, -window:], valid[:, -window:]
        logits = self._run(tokens, valid)
        if cache is not None:
            logits = logits[:, -min(new, logits.shape[1]) :]
        return (logits[:, -1:] if last_only else logits), cache

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The last layer's states (batch, seq, d_model) of whole sequences (after the final norm
        where there is one): what the output head reads, and what a task head reads instead.
        Causal attention keeps right padding from changing the real tokens' states."""
        return self._states(input_ids, torch.ones_like(input_ids, dtype=torch.bool))

    def _run(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self._states(tokens, valid))

    def _states(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        batch, seq = tokens.shape
        positions = (valid.long().cumsum(dim=1) - 1).clamp(min=0)
        x = self.embed(tokens) * math.sqrt(self.config.d_model)
        x = self.drop(x + sinusoidal_positions(positions, self.config.d_model).to(x.dtype))
        causal = nn.Transformer.generate_square_subsequent_mask(seq, device=tokens.device)
        if bool(valid.all()):
            out = self.encoder(x, mask=causal, is_causal=True)
        else:
            # A padding key is hidden from every query; a padding query still sees itself.
            blocked = (causal != 0)[None] | ~valid[:, None, :]
            blocked = blocked & ~torch.eye(seq, dtype=torch.bool, device=tokens.device)[None]
            heads = blocked.repeat_interleave(self.config.n_head, dim=0)
            out = self.encoder(x, mask=heads)
        return out

    @torch.inference_mode()
    def trace(self, input_ids: torch.Tensor) -> Trace:
        """Run one sequence layer by layer, keeping each layer's attention weights (1, heads,
        seq, seq) and output."""
        seq = input_ids.shape[1]
        if seq > self.config.max_seq_len:
            raise ConfigError(f"inspect takes at most {self.config.max_seq_len} tokens, got {seq}")
        positions = torch.arange(seq, device=input_ids.device)[None]
        x = self.embed(input_ids) * math.sqrt(self.config.d_model)
        x = x + sinusoidal_positions(positions, self.config.d_model).to(x.dtype)
        causal = nn.Transformer.generate_square_subsequent_mask(seq, device=input_ids.device)
        attentions, hidden = [], []
        for layer in self.encoder.layers:
            feed_forward = lambda h, layer=layer: layer.linear2(layer.activation(layer.linear1(h)))  # noqa: E731
            source = layer.norm1(x) if layer.norm_first else x
            attended, weights = layer.self_attn(
                source,
                source,
                source,
                attn_mask=causal,
                need_weights=True,
                average_attn_weights=False,
            )
            if layer.norm_first:
                x = x + attended
                x = x + feed_forward(layer.norm2(x))
            else:
                x = layer.norm1(x + attended)
                x = layer.norm2(x + feed_forward(x))
            attentions.append(weights)
            hidden.append(x)
        record = Trace(attentions=attentions, hidden_states=hidden, read_out=self._read_out)
        record.logits = self._read_out(x)
        return record

    def _read_out(self, hidden: torch.Tensor) -> torch.Tensor:
        norm = self.encoder.norm
        return self.lm_head(norm(hidden) if norm is not None else hidden)

    def describe(self) -> dict[str, Any]:
        details = {k: v for k, v in self.config.to_dict().items() if k != "extra"}
        return {"parameters": self.num_parameters(), **details}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
