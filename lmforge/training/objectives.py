"""What a run minimises. A language model predicts a distribution over the vocabulary at every
position, so its loss is the cross-entropy of the next token (a regression loss such as MSE on
token ids is not a language-model loss). Sequence-to-sequence and classification objectives are
to sit beside it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of `targets` (batch, seq) under `logits` (batch, seq,
    vocab), computed in float32 whatever the logits' precision."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
