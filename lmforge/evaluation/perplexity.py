"""Perplexity that can be compared across models and tokenizers.

Attention models score a long text with a sliding window (the protocol of transformers'
perplexity guide): windows of `context` tokens advance by `stride`; each window scores only the
tokens not scored before, with up to `context - 1` tokens of history. Recurrent models read the
text once and carry their state, so every token sees everything before it.

Per-token perplexity depends on the tokenizer; bits per byte and per-word perplexity divide the
same total log-loss by units every model shares (UTF-8 bytes, whitespace-separated words), so a
character LSTM, a word-level model and a BPE GPT can be ranked on the same text.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.data.batches import eval_chunks
from lmforge.data.corpus import Corpus
from lmforge.data.tokens import split_tokens, tokenize_corpus
from lmforge.device import model_device
from lmforge.errors import ConfigError


@dataclass
class Perplexity:
    """Scores of one model on one text; `nll` is the total in nats over `tokens` predictions."""

    nll: float
    tokens: int
    words: int
    bytes: int
    characters: int
    context: int | None
    stride: int | None

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token (nats)."""
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))  # an untrained model must not overflow

    @property
    def word_perplexity(self) -> float:
        return math.exp(min(self.nll / max(1, self.words), 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / max(1, self.bytes)

    @property
    def bits_per_character(self) -> float:
        return self.nll / math.log(2) / max(1, self.characters)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "loss": self.loss,
            "perplexity": self.perplexity,
            "word_perplexity": self.word_perplexity,
            "bits_per_byte": self.bits_per_byte,
            "bits_per_character": self.bits_per_character,
        }


def model_context(model: nn.Module) -> int:
    """The longest window an attention model was built for (its learned positions or training block)."""
    return model.config.max_seq_len


@torch.inference_mode()
def token_nll(
    model: nn.Module, ids: list[int], context: int | None = None, stride: int | None = None
) -> torch.Tensor:
    """-log p(token i | tokens before it) for i = 1 .. len(ids) - 1 (the first token has no
    history, as in the reference protocol), from a sliding window or a carried state."""
    if len(ids) < 2:
        raise ConfigError(
            f"the text is {len(ids)} token(s) long; perplexity needs at least 2 tokens"
        )
    model.eval()
    if model.stateful:  # one pass, state carried across chunks
        chunk, state, losses = context or 1024, None, []
        tokens = torch.tensor([ids], device=model_device(model))
        for start in range(0, len(ids) - 1, chunk):
            x = tokens[:, start : start + chunk]
            y = tokens[:, start + 1 : start + chunk + 1]
            logits, state = model(x, state)
            losses.append(F.cross_entropy(logits[0, : y.shape[1]].float(), y[0], reduction="none"))
        return torch.cat(losses)
    context = context or model_context(model)
    stride = stride or context
    if context < 2 or context > model_context(model):
        raise ConfigError(
            f"context={context}; expected between 2 and the model's context {model_context(model)}"
        )
    if not 1 <= stride <= context:
        raise ConfigError(f"stride={stride} must be between 1 and context={context}")
    tokens = torch.tensor([ids], device=model_device(model))
    losses, scored_until = [], 1  # position 0 is never a target
    for begin in range(0, len(ids), stride):
        end = min(begin + context, len(ids))
        logits, _ = model(tokens[:, begin:end])
        first = max(scored_until, begin + 1)  # targets not scored by an earlier window
        targets = tokens[0, first:end]
        predictions = logits[0, first - 1 - begin : end - 1 - begin].float()
        losses.append(F.cross_entropy(predictions, targets, reduction="none"))
        scored_until = end
        if end == len(ids):
            break
    return torch.cat(losses)


def score_ids(
    model: nn.Module,
    ids: list[int],
    text: str,
    context: int | None = None,
    stride: int | None = None,
) -> Perplexity:
    """Score token ids; `text` (what they spell) gives the word, byte and character counts."""
    losses = token_nll(model, ids, context, stride)
    windowed = not model.stateful
    context = (context or model_context(model)) if windowed else None
    return Perplexity(
        nll=float(losses.double().sum()),
        tokens=len(losses),
        words=len(text.split()),
        bytes=len(text.encode("utf-8")),
        characters=len(text),
        context=context,
        stride=(stride or context) if windowed else None,
    )


def perplexity(
    model: nn.Module,
    tokenizer,
    text: str,
    context: int | None = None,
    stride: int | None = None,
) -> Perplexity:
    """Score `text` (tokenized by the model's own tokenizer); see the module docstring."""
    if not text.strip():
        raise ConfigError("the text to evaluate is empty")
    return score_ids(model, tokenizer.encode(text), text, context, stride)


def score_corpus(
    model: nn.Module,
    tokenizer,
    data: str,
    field: str = "text",
    split: str = "all",
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    max_tokens: int | None = None,
    context: int | None = None,
    stride: int | None = None,
) -> Perplexity:
    """Score a corpus (any source `Corpus` reads), or one of the splits training makes of it
    (`split`: "train", "val" or "test", cut at the same token positions), or its first
    `max_tokens` tokens."""
    tokens = tokenize_corpus(Corpus(data, field), tokenizer)
    if split != "all":
        tokens = split_tokens(tokens, val_fraction, test_fraction)[split]
    if max_tokens is not None:
        if max_tokens < 2:
            raise ConfigError(f"max_tokens={max_tokens}: expected at least 2")
        tokens = tokens[:max_tokens]
    ids = [int(t) for t in tokens]
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return score_ids(model, ids, text, context, stride)


@torch.inference_mode()
def score_chunks(
    model: nn.Module,
    tokens,
    tokenizer,
    block_size: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> Perplexity:
    """The fast held-out score used while training: `tokens` cut into `batch_size` streams read
    `block_size` at a time, each token predicted once. Recurrent models carry their state
    across chunks; attention models see each chunk alone (the sliding-window protocol with
    stride = context, batched)."""

    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    stateful = model.stateful
    device = model_device(model)
    for x, y, first in eval_chunks(tokens, block_size, batch_size):
        x, y = x.to(device), y.to(device)
        if first or not stateful:
            state = None
        logits, state = model(x, state) if stateful else model(x)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    model.train(was_training)
    text = tokenizer.decode([int(t) for t in tokens[: count + 1]], skip_special_tokens=False)
    return Perplexity(
        nll=total,
        tokens=count,
        words=len(text.split()),
        bytes=len(text.encode("utf-8")),
        characters=len(text),
        context=None if stateful else block_size,
        stride=None if stateful else block_size,
    )
