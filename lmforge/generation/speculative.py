"""Speculative greedy decoding: guess several tokens cheaply, check them all in one forward pass.

A decode step of a small model on a CPU costs about the same for 1 token as for 6 (it is bound by
reading the weights), so when a drafter guesses the next k tokens, one forward pass over them
tells which the model itself would have chosen greedily: the longest agreeing prefix is kept,
plus the model's own token after it. The output is the greedy output; only the speed changes.

Drafters: `PromptLookupDrafter` copies what followed the latest n-gram's earlier occurrence
(no extra model; it shines when the output repeats the input: summaries, code edits, quotes),
and `DraftModelDrafter` runs a smaller model with the same vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lmforge.device import model_device
from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig, eos_ids
from lmforge.generation.processors import build_processors
from lmforge.generation.sampling import choose_next, history_of
from lmforge.generation.stream import StreamEvent, TextAssembler, token_event
from lmforge.tokenizers import Tokenizer


class PromptLookupDrafter:
    """Find the most recent earlier occurrence of the last n tokens (n from `max_ngram` down to
    1) and propose the tokens that followed it."""

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = max_ngram

    def propose(self, tokens: list[int], k: int) -> list[int]:
        for n in range(min(self.max_ngram, len(tokens) - 1), 0, -1):
            tail = tokens[-n:]
            for start in range(len(tokens) - n - 1, -1, -1):
                if tokens[start : start + n] == tail:
                    return tokens[start + n : start + n + k]
        return []


class DraftModelDrafter:
    """Greedy guesses from a smaller model; its KV cache follows the accepted tokens."""

    def __init__(self, model, max_len: int):
        self.model = model
        self.cache = model.new_cache(1, min(max_len, model.max_seq_len))
        self.device = model_device(model)
        self.cached: list[int] = []  # the tokens whose keys/values are in the cache

    def propose(self, tokens: list[int], k: int) -> list[int]:
        common = 0
        for mine, theirs in zip(self.cached, tokens, strict=False):
            if mine != theirs:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # feed at least the last token to get its logits
        k = min(k, self.cache.max_len - len(tokens))
        if k <= 0:
            return []
        self.cache.truncate(common)
        feed = tokens[common:]
        draft = []
        for _ in range(k):
            logits, _ = self.model(
                torch.tensor([feed], device=self.device), self.cache, last_only=True
            )
            feed = [int(logits[0, -1].argmax())]
            draft.append(feed[0])
        self.cached = tokens + draft[:-1]
        return draft


@torch.inference_mode()
def speculative_stream(
    model,
    tokenizer: Tokenizer,
    prompts: list[list[int]],
    config: GenerationConfig,
    draft_model=None,
) -> Iterator[StreamEvent]:
    """Greedy generation with drafted tokens verified by `model`; prompts run one after another
    (already checked by `prepare_prompts`). Yields the same events as the plain decode loop."""
    option = "draft_model" if draft_model is not None else "prompt_lookup_num_tokens"
    config.check_speculative(option)
    for role, m in (("model", model), ("draft_model", draft_model)):
        if m is not None and not m.new_cache(1, 1).rewindable:
            raise ConfigError(
                f"{option} needs a {role} with a key/value cache (a GPT); "
                f"{type(m).__name__} cannot rewind its state to drop rejected tokens"
            )
    if draft_model is not None and draft_model.config.vocab_size != model.config.vocab_size:
        raise ConfigError(
            f"draft_model has a vocabulary of {draft_model.config.vocab_size} tokens, the model "
            f"{model.config.vocab_size}; a draft model must share the model's tokenizer"
        )
    k = config.num_draft_tokens if draft_model is not None else config.prompt_lookup_num_tokens
    for row, prompt in enumerate(prompts):
        max_new = min(config.max_new_tokens, model.max_seq_len - len(prompt))
        if max_new <= 0:
            yield StreamEvent(row, None, None, "", None, "length")
            continue
        drafter = (
            DraftModelDrafter(draft_model, len(prompt) + max_new + k)
            if draft_model is not None
            else PromptLookupDrafter()
        )
        yield from _one_sequence(model, tokenizer, row, prompt, max_new, k, config, drafter)


def _one_sequence(model, tokenizer, row, prompt, max_new, k, config, drafter):
    eos = eos_ids(tokenizer, config)
    processors = build_processors(config, model.config.vocab_size, tokenizer)
    assembler = TextAssembler(tokenizer, config.stop)
    cache = model.new_cache(1, min(len(prompt) + max_new + k, model.max_seq_len))
    tokens = list(prompt)
    device = model_device(model)
    if len(prompt) > 1:  # prefill all but the last prompt token, which each round feeds first
        _, cache = model(torch.tensor([prompt[:-1]], device=device), cache)
    generated = 0
    while True:
        # 1) draft up to k tokens; 2) one forward pass scores the last token and the draft
        room = min(k, max_new - generated - 1, cache.max_len - len(tokens))
        draft = drafter.propose(tokens, room) if room > 0 else []
        start = cache.length
        logits, cache = model(torch.tensor([tokens[-1:] + draft], device=device), cache)
        # 3) keep the draft while it agrees with the model's own choice, plus that choice
        accepted = 0
        for i in range(len(draft) + 1):
            history = history_of(tokens, len(prompt), device) if processors else None
            choice = choose_next(logits[0, i : i + 1], config, processors, history, None)
            token = choice.tokens[0]
            tokens.append(token)
            generated += 1
            top = choice.top[0] if choice.top else None
            event = token_event(
                row, token, choice.logprobs[0], top, assembler, eos, generated == max_new
            )
            yield event
            if event.finish_reason is not None:
                return
            if i == len(draft) or draft[i] != token:
                break
            accepted += 1
        cache.truncate(start + 1 + accepted)  # keep the verified tokens; the new one is fed next
