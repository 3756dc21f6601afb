"""Generation options, validated once with errors that name the option."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from lmforge.errors import ConfigError

MAX_SEED = 2**63 - 1  # torch generators take a signed 64-bit seed


def option(default: Any = None, help: str = "", **details: Any) -> Any:
    """A generation option: its default, a line of help, and how the interfaces show it.

    details: `flag` (the CLI flag when it is not `--name-with-dashes`; None: no flag), `dest`
    (its argparse name, when the option's own is taken by a verb's flag), `cli`
    ("value", "append", "true" for a store_true switch, "false" for a switch setting False),
    `choices`, `metavar`, `parse` (CLI text -> value); `group` ("decoding" or "speculative");
    `hf` (read from a checkpoint's generation_config.json); `openai` (the OpenAI request field that
    sets it); `server` (a request field of lmforge's own, beside OpenAI's). The CLI, the server's
    extra fields and the README table are generated from these."""
    metadata = {"help": help, **details}
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def _read_file(option: str):
    """A CLI parser reading the file an option names (UTF-8), with a clear error."""

    def read(path: str) -> str:
        try:
            return open(path, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--{option} {path}: cannot be read ({exc})", option=option) from None

    return read


def _token_bias(text: str) -> tuple[int, float]:
    token, _, value = text.partition("=")
    try:
        return int(token), float(value)
    except ValueError:
        raise ConfigError(
            f"--logit-bias {text!r}: expected TOKEN_ID=BIAS, e.g. 50256=-100", option="logit_bias"
        ) from None


@dataclass
class GenerationConfig:
    """Every decoding option. Sampling knobs (temperature, top_k/p, min_p, typical_p) imply sampling
    unless `do_sample=False`; `temperature=0` always means greedy."""

    max_new_tokens: int = option(128, "tokens to generate (default 128)", openai="max_tokens")
    do_sample: bool | None = option(
        None,
        "False forces greedy decoding even with sampling options",
        flag="--greedy",
        cli="false",
        hf=True,
    )
    temperature: float | None = option(
        None,
        "sampling temperature; any sampling option turns sampling on; 0 means greedy",
        hf=True,
        openai="temperature",
    )
    top_k: int | None = option(None, "sample from the k most likely tokens", hf=True, server=True)
    top_p: float | None = option(
        None, "sample from the smallest set with this much mass", hf=True, openai="top_p"
    )
    min_p: float | None = option(
        None, "drop tokens under min_p x the top probability", hf=True, server=True
    )
    typical_p: float | None = option(None, "locally typical sampling mass", hf=True)
    repetition_penalty: float | None = option(
        None,
        "transformers semantics: seen tokens (prompt included) are discouraged when > 1",
        hf=True,
        server=True,
    )
    frequency_penalty: float = option(
        0.0, "OpenAI semantics, over generated tokens, in [-2, 2]", openai="frequency_penalty"
    )
    presence_penalty: float = option(
        0.0, "OpenAI semantics, over generated tokens, in [-2, 2]", openai="presence_penalty"
    )
    no_repeat_ngram_size: int = option(0, "ban repeating any n-gram of this size", hf=True)
    logit_bias: dict[int, float] = option(
        dict,
        "add a bias to token ids",
        cli="append",
        metavar="TOKEN_ID=BIAS",
        parse=_token_bias,
        openai="logit_bias",
    )
    num_beams: int = option(1, "beam search width (transformers' semantics)", hf=True)
    length_penalty: float = option(1.0, "beam search: score / length ** length_penalty", hf=True)
    early_stopping: bool | str = option(
        False,
        "beam search: True, False or 'never', as in transformers",
        choices=["true", "false", "never"],
        parse=lambda t: {"true": True, "false": False}.get(t, t),
    )
    num_return_sequences: int = option(
        1, "sequences per prompt", flag=("--num-return-sequences", "-n"), openai="n"
    )
    stop: list[str] = option(
        list,
        "stop strings, found even when split across tokens; never streamed",
        cli="append",
        openai="stop",
    )
    suppress_tokens: list[int] = option(
        list,
        "token ids never generated (transformers' suppress_tokens), e.g. an encoder-decoder's pad",
        flag=None,
        hf=True,
    )
    eos_token_ids: list[int] | None = option(
        None, "end tokens (default: the tokenizer's)", flag=None
    )
    ignore_eos: bool = option(False, "keep generating past end-of-sequence", cli="true")
    seed: int | None = option(None, "makes sampling reproducible", openai="seed")
    top_logprobs: int = option(
        0, "report the k most likely alternatives at each step", openai="logprobs"
    )
    truncate: str | None = option(
        None,
        "'left' keeps the end of a prompt longer than the context (default: an error)",
        choices=["left"],
    )
    json_schema: dict[str, Any] | str | None = option(
        None,
        "constrain the output to JSON matching this schema (a dict or JSON text)",
        flag="--json-schema",
        metavar="FILE",
        parse=_read_file("json-schema"),
        group="structured",
        openai="response_format",
    )
    json: bool = option(
        False,
        "constrain the output to a JSON object",
        flag="--json-object",
        dest="json_object",
        cli="true",
        group="structured",
        openai="response_format",
    )
    regex: str | None = option(
        None,
        "constrain the output to match this regular expression",
        group="structured",
        server=True,
    )
    grammar: str | None = option(
        None,
        "constrain the output to a grammar: Lark (llguidance's) or llama.cpp's GBNF",
        metavar="FILE",
        parse=_read_file("grammar"),
        group="structured",
        server=True,
    )
    choice: list[str] = option(
        list,
        "constrain the output to one of these strings",
        cli="append",
        group="structured",
        server=True,
    )
    prompt_lookup_num_tokens: int = option(
        0,
        "speculative greedy decoding: draft N tokens from the text's own n-grams",
        flag="--prompt-lookup",
        metavar="N",
        group="speculative",
    )
    num_draft_tokens: int = option(
        5,
        "tokens a draft model proposes per step (with draft_model)",
        flag="--draft-tokens",
        metavar="N",
        group="speculative",
    )

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
        def number(name: str) -> bool:
            value = getattr(self, name)
            return (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            )

        self._check(
            "max_new_tokens",
            isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 0,
            "an integer >= 0",
        )
        if self.temperature is not None:
            self._check(
                "temperature", number("temperature") and self.temperature >= 0, "a number >= 0"
            )
        if self.top_k is not None:
            self._check(
                "top_k",
                isinstance(self.top_k, int) and self.top_k >= 0,
                "an integer >= 0 (0 disables)",
            )
        if self.top_p is not None:
            self._check("top_p", number("top_p") and 0 < self.top_p <= 1, "a number in (0, 1]")
        if self.min_p is not None:
            self._check("min_p", number("min_p") and 0 <= self.min_p <= 1, "a number in [0, 1]")
        if self.typical_p is not None:
            self._check(
                "typical_p", number("typical_p") and 0 < self.typical_p <= 1, "a number in (0, 1]"
            )
        if self.repetition_penalty is not None:
            self._check(
                "repetition_penalty",
                number("repetition_penalty") and self.repetition_penalty > 0,
                "a number > 0",
            )
        for name in ("frequency_penalty", "presence_penalty"):
            self._check(
                name,
                number(name) and -2 <= getattr(self, name) <= 2,
                "a number in [-2, 2] (OpenAI's range)",
            )
        self._check(
            "no_repeat_ngram_size",
            isinstance(self.no_repeat_ngram_size, int) and self.no_repeat_ngram_size >= 0,
            "an integer >= 0",
        )
        self._check(
            "num_beams", isinstance(self.num_beams, int) and self.num_beams >= 1, "an integer >= 1"
        )
        self._check("length_penalty", number("length_penalty"), "a finite number")
        self._check(
            "early_stopping",
            self.early_stopping in (True, False, "never"),
            "True, False or 'never'",
        )
        self._check(
            "num_return_sequences",
            isinstance(self.num_return_sequences, int) and self.num_return_sequences >= 1,
            "an integer >= 1",
        )
        if self.num_beams > 1:
            self._check(
                "num_return_sequences",
                self.num_return_sequences <= self.num_beams,
                f"<= num_beams={self.num_beams}",
            )
        self._check(
            "stop",
            isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
            "a list of non-empty strings",
        )
        self._check(
            "top_logprobs",
            isinstance(self.top_logprobs, int) and 0 <= self.top_logprobs <= 20,
            "an integer in [0, 20]",
        )
        self._check("truncate", self.truncate in (None, "left"), "None or 'left'")
        self._check(
            "suppress_tokens",
            isinstance(self.suppress_tokens, list)
            and all(isinstance(t, int) and t >= 0 for t in self.suppress_tokens),
            "a list of token ids",
        )
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
            self._check(
                "seed",
                isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED,
                f"an integer in [0, {MAX_SEED}]",
            )
        for name in ("prompt_lookup_num_tokens", "num_draft_tokens"):
            value = getattr(self, name)
            self._check(name, isinstance(value, int) and 0 <= value <= 64, "an integer in [0, 64]")
        if self.prompt_lookup_num_tokens:
            self.check_speculative("prompt_lookup_num_tokens")
        self._validate_constraints()

    def _check(self, name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise ConfigError(
                f"{name}={getattr(self, name)!r} is invalid; expected {expected}", option=name
            )

    def _validate_constraints(self) -> None:
        """The structured-output options' types (compiling them needs the tokenizer: see
        generation/constraints.py)."""
        self._check(
            "json_schema",
            self.json_schema is None or isinstance(self.json_schema, (dict, str)),
            "a JSON schema (a dict or its JSON text)",
        )
        self._check("json", isinstance(self.json, bool), "True or False")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            ok = value is None or (isinstance(value, str) and value)
            self._check(name, ok, "a non-empty string")
        ok = isinstance(self.choice, list) and all(isinstance(c, str) and c for c in self.choice)
        self._check("choice", ok, "a list of non-empty strings")

    def check_speculative(self, option: str) -> None:
        """Speculation here verifies drafts against the greedy choice, so it needs greedy search."""
        if self.sampling or self.num_beams > 1:
            raise ConfigError(
                f"{option} works with greedy decoding only; drop the sampling options "
                "(temperature, top_k, top_p, min_p, typical_p, do_sample) and num_beams"
            )


def eos_ids(tokenizer, config: GenerationConfig) -> set[int]:
    """The tokens that end a sequence (none with `ignore_eos`)."""
    if config.ignore_eos:
        return set()
    return set(config.eos_token_ids if config.eos_token_ids is not None else tokenizer.eos_ids)


def hf_generation_keys() -> list[str]:
    """The options read from a checkpoint's generation_config.json (same names as transformers)."""
    return [f.name for f in fields(GenerationConfig) if f.metadata.get("hf")]


def cli_flags(f) -> tuple[str, ...]:
    """The command-line flags of an option (none for options the CLI does not offer)."""
    flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
    return () if flag is None else ((flag,) if isinstance(flag, str) else tuple(flag))


def options_table() -> str:
    """The README's table of generation options, from the fields' own metadata."""
    rows = ["| option | CLI | server | meaning |", "|---|---|---|---|"]
    for f in fields(GenerationConfig):
        meta = f.metadata
        flags = ", ".join(f"`{flag}`" for flag in cli_flags(f))
        server = meta.get("openai") or (f.name if meta.get("server") else "")
        server = f"`{server}`" if server else ""
        rows.append(f"| `{f.name}` | {flags} | {server} | {meta['help']} |")
    return "\n".join(rows)
