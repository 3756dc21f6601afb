"""What a run minimises. A language model predicts a distribution over the vocabulary at every
position, so its loss is the cross-entropy of the next token (a regression loss such as MSE on
token ids is not a language-model loss). A translation model's loss is the same cross-entropy
over its target tokens; classification objectives are to sit beside them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_lm_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of `targets` (batch, seq) under `logits` (batch, seq,
    vocab), computed in float32 whatever the logits' precision."""
    return F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), label_smoothing=label_smoothing
    )


def seq2seq_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    target_mask: torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy per real target token of a right-padded batch (padding is ignored).
    With `label_smoothing` e, the target is 1 - e on the reference token and e spread over the
    vocabulary (Szegedy et al.; the Transformer paper's 0.1)."""
    ignored = targets.masked_fill(~target_mask, -100)
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        ignored.flatten(),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )
