"""Logits processors: small composable steps that reshape next-token scores.

Each follows the semantics users know (transformers' processors; OpenAI's frequency/presence
penalties), so the same options give the same distribution here as there. A processor gets the
token history of each row and the (rows, vocab) scores, and returns new scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig
from lmforge.generation.constraints import compile_constraint


@dataclass
class History:
    """Tokens so far per row: `tokens` (rows, length) with `valid` marking real (non-pad) tokens;
    the first `prompt_len` columns are the (left-padded) prompt."""

    tokens: torch.Tensor
    valid: torch.Tensor
    prompt_len: int


class LogitBias:
    """Add a fixed bias to chosen token ids (OpenAI's `logit_bias`)."""

    def __init__(self, bias: dict[int, float], vocab_size: int):
        self.ids = torch.tensor(list(bias), dtype=torch.long, device="cpu")
        self.values = torch.tensor(list(bias.values()), dtype=torch.float32, device="cpu")
        if len(self.ids) and (self.ids.min() < 0 or self.ids.max() >= vocab_size):
            raise ConfigError(f"logit_bias has a token id outside [0, {vocab_size})")

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        ids = self.ids.to(scores.device)
        scores[:, ids] += self.values.to(scores.device, scores.dtype)
        return scores


class SuppressTokens:
    """Tokens that are never generated: their scores become -inf (transformers' suppress_tokens)."""

    def __init__(self, tokens: list[int], vocab_size: int):
        if any(not 0 <= t < vocab_size for t in tokens):
            raise ConfigError(f"suppress_tokens has a token id outside [0, {vocab_size})")
        self.ids = torch.tensor(tokens, dtype=torch.long, device="cpu")

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        return scores.index_fill(-1, self.ids.to(scores.device), -float("inf"))


class RepetitionPenalty:
    """transformers' repetition penalty: for every token already present (prompt included),
    divide a positive score by `penalty`, multiply a negative one."""

    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        tokens = history.tokens.masked_fill(~history.valid, 0)
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, tokens, history.valid)
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)


class FrequencyPresencePenalty:
    """OpenAI's penalties over generated tokens: score -= count * frequency + (count > 0) * presence."""

    def __init__(self, frequency: float, presence: float):
        self.frequency, self.presence = frequency, presence

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        generated = history.tokens[:, history.prompt_len :]
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


class NoRepeatNGram:
    """transformers' no_repeat_ngram_size: ban any token that would complete an n-gram already seen."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        for row in range(scores.shape[0]):
            seq = history.tokens[row][history.valid[row]].tolist()
            if len(seq) + 1 < self.n:
                continue
            prefix = tuple(seq[len(seq) - self.n + 1 :])
            banned = [
                seq[i + self.n - 1]
                for i in range(len(seq) - self.n + 1)
                if tuple(seq[i : i + self.n - 1]) == prefix
            ]
            if banned:
                scores[row, banned] = -float("inf")
        return scores


class GrammarMask:
    """Allow only the tokens the constraint's grammar accepts next, in every row.

    Each row's grammar state comes from the row's own history (the tokens generated so far): the
    state after t1..tn is the previous call's state for t1..tn-1, copied and advanced by tn. So
    beam search forking and reordering rows, rows leaving a batch, or a speculative draft being
    rejected need nothing from the engine: a state is looked up by the tokens that led to it."""

    def __init__(self, grammar: str, lltok, vocab_size: int):
        """`grammar` and `lltok` as `compile_constraint` gives them."""
        import llguidance

        self.new_matcher = lambda: llguidance.LLMatcher(lltok, grammar)
        self.vocab_size = vocab_size
        self.words = (vocab_size + 31) // 32
        self.states: dict[tuple[int, ...], Any] = {}  # the states of the previous call's rows
        self.bits = torch.arange(32, dtype=torch.int32)

    def state(self, generated: tuple[int, ...]):
        """The matcher after `generated`: the previous call's state advanced by one token, or
        (the first step, or a history the previous call did not see) replayed from the start."""
        parent = self.states.get(generated[:-1]) if generated else None
        if parent is not None:
            matcher = parent.deep_copy()
            matcher.consume_token(generated[-1])
        else:
            matcher = self.new_matcher()
            matcher.consume_tokens(list(generated))
        return matcher

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        rows = history.tokens[:, history.prompt_len :].tolist()
        current: dict[tuple[int, ...], Any] = {}
        masks = torch.full((len(rows), self.words), -1, dtype=torch.int32)
        for row, tokens in enumerate(rows):
            generated = tuple(tokens)
            matcher = current.get(generated)
            if matcher is None:
                matcher = current[generated] = self.state(generated)
            if matcher.is_error():  # a row that ended (its tokens are ignored) went past the end
                continue
            line = masks[row]
            matcher.unsafe_compute_mask_ptr(line.data_ptr(), line.numel() * line.element_size())
        self.states = current
        allowed = ((masks[:, :, None] >> self.bits) & 1).view(len(rows), -1)[:, : self.vocab_size]
        return scores.masked_fill(allowed.to(scores.device) == 0, -float("inf"))


class Temperature:
    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopK:
    """Keep the k highest scores."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.k, scores.shape[-1])
        threshold = torch.topk(scores, k).values[..., -1:]
        return scores.masked_fill(scores < threshold, -float("inf"))


class TopP:
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches p."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - self.p)
        remove[..., -1:] = False  # always keep the best token
        return scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))


class MinP:
    """Keep tokens whose probability is at least min_p times the best token's."""

    def __init__(self, min_p: float):
        self.min_p = min_p

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)
        remove = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        best = scores.argmax(dim=-1, keepdim=True)
        remove.scatter_(1, best, False)
        return scores.masked_fill(remove, -float("inf"))


class TypicalP:
    """Locally typical sampling (Meister et al.): keep the tokens whose surprisal is closest to the
    entropy, up to probability mass `mass`."""

    def __init__(self, mass: float):
        self.mass = mass

    def __call__(self, history: History, scores: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(scores, dim=-1)
        entropy = -(log_probs.exp() * log_probs).nansum(dim=-1, keepdim=True)
        shifted, order = torch.sort((-log_probs - entropy).abs(), descending=False)
        cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        last = (cumulative < self.mass).sum(dim=1).clamp_(max=scores.shape[-1] - 1)
        remove = shifted > shifted.gather(1, last.view(-1, 1))
        remove[..., :1] = False
        return scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))


def build_processors(config: GenerationConfig, vocab_size: int, tokenizer=None) -> list:
    """The processors a config asks for: a constraint's mask first (so no warper can leave a row
    with nothing allowed), then transformers' order (penalties, then warpers)."""
    steps: list = []
    constraint = compile_constraint(config, tokenizer, vocab_size) if tokenizer else None
    if constraint is not None:
        steps.append(GrammarMask(*constraint, vocab_size))
    if config.logit_bias:
        steps.append(LogitBias(config.logit_bias, vocab_size))
    if config.suppress_tokens:
        steps.append(SuppressTokens(config.suppress_tokens, vocab_size))
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        steps.append(RepetitionPenalty(config.repetition_penalty))
    if config.frequency_penalty or config.presence_penalty:
        steps.append(FrequencyPresencePenalty(config.frequency_penalty, config.presence_penalty))
    if config.no_repeat_ngram_size:
        steps.append(NoRepeatNGram(config.no_repeat_ngram_size))
    if config.sampling:
        if config.temperature is not None and config.temperature != 1.0:
            steps.append(Temperature(config.temperature))
        if config.top_k:
            steps.append(TopK(config.top_k))
        if config.top_p is not None and config.top_p < 1.0:
            steps.append(TopP(config.top_p))
        if config.min_p:
            steps.append(MinP(config.min_p))
        if config.typical_p is not None and config.typical_p < 1.0:
            steps.append(TypicalP(config.typical_p))
    return steps


def apply_processors(steps: list, history: History, scores: torch.Tensor) -> torch.Tensor:
    for step in steps:
        scores = step(history, scores)
    return scores
