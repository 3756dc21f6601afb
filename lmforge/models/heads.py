"""Task heads: a sequence classifier on any lmforge language model's hidden states.

The trunk (GPT/Llama, RNN/LSTM/GRU, the nn.Transformer LM) turns a text into one state per token
(`trunk.hidden(input_ids)`); the head pools them into one vector per text and scores each label:

    logits = score(pool(trunk.hidden(ids), mask))      # (batch, num_labels)

`last` pooling reads the state of the last real token, the one that has seen the whole text in a
causal or recurrent model (transformers' `*ForSequenceClassification` does the same for decoders);
`mean` averages the real tokens' states. Batches are right-padded: a causal or left-to-right
trunk never lets the padding after a text change the states of its tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmforge.errors import ConfigError

POOLINGS = ("last", "mean")


def hidden_width(trunk: nn.Module) -> int:
    """The size of the states `trunk.hidden` returns."""
    config = trunk.config
    return getattr(config, "hidden_size", None) or config.d_model


def pool(states: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, seq, width) states -> (batch, width): the last real token's state, or the mean
    over real tokens (`mask` (batch, seq), True for real tokens; padding may sit on either side)."""
    if how == "mean":
        weights = mask.to(states.dtype)[..., None]
        return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * mask).argmax(dim=1)  # the rightmost True of each row
    return states[torch.arange(states.shape[0], device=states.device), last]


class SequenceClassifier(nn.Module):
    """A language model's trunk, a pooling of its states and a linear score per label."""

    encoder_decoder = False

    def __init__(self, trunk: nn.Module, labels: list[str], pooling: str = "last"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r}; expected one of {POOLINGS}")
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ConfigError(f"labels={labels}; a classifier needs at least two distinct labels")
        if not hasattr(trunk, "hidden"):
            raise ConfigError(f"a {type(trunk).__name__} has no hidden states to classify from")
        self.trunk = trunk
        self.labels = [str(label) for label in labels]
        self.pooling = pooling
        # no bias, as transformers' *ForSequenceClassification heads, so the bundle loads there
        self.score = nn.Linear(hidden_width(trunk), len(labels), bias=False)
        nn.init.normal_(self.score.weight, std=0.02)

    @property
    def config(self):
        return self.trunk.config

    @property
    def dtype(self) -> torch.dtype:
        return self.score.weight.dtype

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Label logits (batch, num_labels) for right-padded `input_ids` (batch, seq); `mask`
        marks real tokens (default: all)."""
        if mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        states = self.trunk.hidden(input_ids)
        return self.score(pool(states, mask, self.pooling).to(self.score.weight.dtype))

    def head_config(self) -> dict[str, Any]:
        """What the bundle records about the head."""
        return {"labels": self.labels, "pooling": self.pooling}

    def describe(self) -> dict[str, Any]:
        return {
            "task": "sequence classification",
            "labels": ", ".join(self.labels),
            "pooling": self.pooling,
            **{f"trunk {k}": v for k, v in self.trunk.describe().items()},
        }

    def num_parameters(self) -> int:
        return self.trunk.num_parameters() + self.score.weight.numel()
