"""Choosing the next token: the one function every decode path calls (the plain loop, speculative
decoding, the server's continuous batching), so a token means the same thing in each."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmforge.generation.config import GenerationConfig
from lmforge.generation.processors import History, apply_processors


@dataclass
class Choice:
    """The chosen token of each row, the model's log-probability of it (before any processor),
    and the `top_logprobs` most likely alternatives when asked for."""

    tokens: list[int]
    logprobs: list[float]
    top: list[dict[int, float]] | None


def choose_next(
    logits: torch.Tensor,
    config: GenerationConfig,
    processors: list,
    history: History | None,
    generator: torch.Generator | None,
) -> Choice:
    """Next tokens for logits (rows, vocab): the processors reshape the scores, then the highest
    score wins (greedy) or a token is drawn from their softmax (sampling). `history` (the tokens so
    far) is only read by processors that need it, so it may be None when there are none."""
    scores = logits.float()
    log_probs = torch.log_softmax(scores, dim=-1)
    if processors:
        scores = apply_processors(processors, history, scores)
    if config.sampling:
        tokens = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)
    else:
        tokens = scores.argmax(dim=-1)
    chosen = log_probs.gather(1, tokens[:, None]).squeeze(1)
    top = top_logprobs(log_probs, config.top_logprobs) if config.top_logprobs else None
    return Choice(tokens.tolist(), chosen.tolist(), top)


def top_logprobs(log_probs: torch.Tensor, k: int) -> list[dict[int, float]]:
    """The k most likely tokens of each row, id -> log-probability, best first."""
    values, ids = torch.topk(log_probs, k, dim=-1)
    return [
        dict(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(ids, values, strict=True)
    ]


def history_of(tokens: list[int], prompt_len: int, device: torch.device) -> History:
    """The history of one unpadded row, as processors read it."""
    ids = torch.tensor([tokens], device=device)
    return History(ids, torch.ones_like(ids, dtype=torch.bool), prompt_len)


def seeded_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """The random stream sampling draws from: seeded on the model's device, or torch's global one."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)
