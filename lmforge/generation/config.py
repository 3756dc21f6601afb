"""Generation options, validated once with errors that name the option."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from lmforge.errors import ConfigError

MAX_SEED = 2**63 - 1  # torch generators take a signed 64-bit seed


@dataclass
class GenerationConfig:
    """Every decoding option. Sampling knobs (temperature, top_k/p, min_p, typical_p) imply sampling
    unless `do_sample=False`; `temperature=0` always means greedy."""

    max_new_tokens: int = 128
    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None  # transformers semantics (>1 discourages repeats)
    frequency_penalty: float = 0.0  # OpenAI semantics, over generated tokens
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False  # True, False or "never", as in transformers
    num_return_sequences: int = 1
    stop: list[str] = field(default_factory=list)
    eos_token_ids: list[int] | None = None  # None: the tokenizer's
    ignore_eos: bool = False
    seed: int | None = None
    top_logprobs: int = 0
    truncate: str | None = None  # None: error if the prompt is too long; "left": keep its end
    # Speculative greedy decoding: tokens drafted per step from the prompt's own n-grams, or
    # by a draft model (given to generate() as `draft_model`). Output equals plain greedy.
    prompt_lookup_num_tokens: int = 0
    num_draft_tokens: int = 5

    @classmethod
    def from_options(cls, base: GenerationConfig | None = None, **options) -> GenerationConfig:
        """Defaults, overridden by `base`, overridden by keyword options (unknown names rejected)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown generation option(s) {unknown}; known: {sorted(known)}")
        values = {f.name: getattr(base, f.name) for f in fields(cls)} if base else {}
        values.update({k: v for k, v in options.items() if v is not None})
        config = cls(**values)
        config.validate()
        return config

    @property
    def sampling(self) -> bool:
        if self.temperature == 0:
            return False
        if self.do_sample is not None:
            return self.do_sample
        return any(
            v is not None
            for v in (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p)
        )

    def validate(self) -> None:
        def check(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is invalid; expected {expected}", option=name
                )

        def number(name: str) -> bool:
            value = getattr(self, name)
            return (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            )

        check(
            "max_new_tokens",
            isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0,
            "an integer >= 0",
        )
        if self.temperature is not None:
            check("temperature", number("temperature") and self.temperature >= 0, "a number >= 0")
        if self.top_k is not None:
            check(
                "top_k",
                isinstance(self.top_k, int) and self.top_k >= 0,
                "an integer >= 0 (0 disables)",
            )
        if self.top_p is not None:
            check("top_p", number("top_p") and 0 < self.top_p <= 1, "a number in (0, 1]")
        if self.min_p is not None:
            check("min_p", number("min_p") and 0 <= self.min_p <= 1, "a number in [0, 1]")
        if self.typical_p is not None:
            check(
                "typical_p", number("typical_p") and 0 < self.typical_p <= 1, "a number in (0, 1]"
            )
        if self.repetition_penalty is not None:
            check(
                "repetition_penalty",
                number("repetition_penalty") and self.repetition_penalty > 0,
                "a number > 0",
            )
        for name in ("frequency_penalty", "presence_penalty"):
            check(
                name,
                number(name) and -2 <= getattr(self, name) <= 2,
                "a number in [-2, 2] (OpenAI's range)",
            )
        check(
            "no_repeat_ngram_size",
            isinstance(self.no_repeat_ngram_size, int) and self.no_repeat_ngram_size >= 0,
            "an integer >= 0",
        )
        check(
            "num_beams", isinstance(self.num_beams, int) and self.num_beams >= 1, "an integer >= 1"
        )
        check("length_penalty", number("length_penalty"), "a finite number")
        check(
            "early_stopping",
            self.early_stopping in (True, False, "never"),
            "True, False or 'never'",
        )
        check(
            "num_return_sequences",
            isinstance(self.num_return_sequences, int) and self.num_return_sequences >= 1,
            "an integer >= 1",
        )
        if self.num_beams > 1:
            check(
                "num_return_sequences",
                self.num_return_sequences <= self.num_beams,
                f"<= num_beams={self.num_beams}",
            )
        check(
            "stop",
            isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
            "a list of non-empty strings",
        )
        check(
            "top_logprobs",
            isinstance(self.top_logprobs, int) and 0 <= self.top_logprobs <= 20,
            "an integer in [0, 20]",
        )
        check("truncate", self.truncate in (None, "left"), "None or 'left'")
        for token, bias in self.logit_bias.items():
            if (
                not isinstance(token, int)
                or not isinstance(bias, (int, float))
                or not math.isfinite(bias)
            ):
                raise ConfigError(
                    f"logit_bias entry {token!r}: {bias!r} is invalid; expected token id (int) -> number"
                )
        if self.seed is not None:
            check(
                "seed",
                isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED,
                f"an integer in [0, {MAX_SEED}]",
            )
        for name in ("prompt_lookup_num_tokens", "num_draft_tokens"):
            value = getattr(self, name)
            check(name, isinstance(value, int) and 0 <= value <= 64, "an integer in [0, 64]")
        if self.prompt_lookup_num_tokens:
            self.check_speculative("prompt_lookup_num_tokens")

    def check_speculative(self, option: str) -> None:
        """Speculation here verifies drafts against the greedy choice, so it needs greedy search."""
        if self.sampling or self.num_beams > 1:
            raise ConfigError(
                f"{option} works with greedy decoding only; drop the sampling options "
                "(temperature, top_k, top_p, min_p, typical_p, do_sample) and num_beams"
            )
