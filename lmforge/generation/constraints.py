"""Constrained decoding: only tokens that keep the text inside a JSON schema, regex or grammar.

llguidance compiles the constraint and, for the text generated so far, gives the set of tokens
that may come next as a bitmask over the vocabulary (tens of microseconds for 49k tokens). The
`GrammarMask` processor sets every other token's score to -inf before any sampling warper, so
greedy, sampling, beam search, speculative decoding and the server's batch all obey it. End
tokens are allowed only where the grammar accepts the text.

The processor finds each row's grammar state from the row's own history (the tokens generated
so far): a row's state is its parent's (the same tokens but the last) advanced by one token. So
beam search forking and reordering rows, rows leaving a batch, or a speculative draft being
rejected need nothing from the engine: a state is looked up by the tokens that led to it.
"""

from __future__ import annotations

import json
import weakref
from typing import TYPE_CHECKING, Any

import torch

from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig, eos_ids

if TYPE_CHECKING:
    from lmforge.generation.processors import History
    from lmforge.tokenizers import Tokenizer

CONSTRAINT_OPTIONS = ("json_schema", "regex", "grammar", "choice", "json")
# JSON as `json.dumps` writes it: no free whitespace (a small model otherwise pads with newlines
# until it runs out of tokens). A schema's own "x-guidance" settings override these.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# llguidance's tokenizer view of one of ours, per (vocabulary size, end tokens); building one
# reads the whole vocabulary (a few hundred milliseconds for 49k tokens), so it is kept.
_LL_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def constraint_of(config: GenerationConfig) -> tuple[str, Any] | None:
    """The (option, value) constraining this config, or None; more than one is an error."""
    given = [
        name for name in CONSTRAINT_OPTIONS if getattr(config, name) not in (None, False, [], "")
    ]
    if len(given) > 1:
        raise ConfigError(
            f"{' and '.join(given)} each constrain the output; give one of them", option=given[1]
        )
    return (given[0], getattr(config, given[0])) if given else None


def grammar_text(option: str, value: Any) -> str:
    """llguidance's grammar for one constraint option (syntax is checked later, with the tokenizer)."""
    import llguidance

    if option == "json":
        return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, JSON_STYLE)
    if option == "json_schema":
        schema = value
        if isinstance(value, str):
            try:
                schema = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"json_schema is not valid JSON ({exc.msg} at line {exc.lineno}, "
                    f"column {exc.colno})",
                    option=option,
                ) from None
        if not isinstance(schema, dict):
            raise ConfigError(
                f"json_schema must be a JSON object (a schema), got {type(schema).__name__}",
                option=option,
            )
        return llguidance.LLMatcher.grammar_from_json_schema(schema, JSON_STYLE)
    if option == "regex":
        return llguidance.grammar_from("regex", value)
    if option == "choice":
        if not all(isinstance(c, str) and c for c in value):
            raise ConfigError("choice must be a list of non-empty strings", option=option)
        return llguidance.grammar_from("choice", value)
    try:  # grammar: Lark (llguidance's dialect) or llama.cpp's GBNF, told apart by their syntax
        return llguidance.grammar_from("grammar", value)
    except ValueError as exc:
        raise ConfigError(f"grammar: {exc}", option=option) from None


def ll_tokenizer(tokenizer: Tokenizer, vocab_size: int, end_ids: list[int]):
    """llguidance's view of `tokenizer` (its `tokenizers` JSON), with the model's vocabulary size
    and the tokens that end generation."""
    import llguidance

    if not end_ids:
        raise ConfigError(
            "constrained decoding needs an end-of-sequence token to finish on (the tokenizer has "
            "none, or ignore_eos is set)"
        )
    views = _LL_TOKENIZERS.setdefault(tokenizer, {})
    key = (vocab_size, tuple(sorted(end_ids)))
    if key not in views:
        try:
            views[key] = llguidance.LLTokenizer(
                tokenizer.backend.to_str(), n_vocab=vocab_size, eos_token=list(key[1])
            )
        except ValueError as exc:
            raise ConfigError(
                "this model's tokenizer cannot be constrained: llguidance needs to know each "
                "token's bytes (byte-level BPE, SentencePiece-style or byte-fallback tokenizers "
                f"can; word-level ones cannot): {exc}"
            ) from None
    return views[key]


def compile_constraint(
    config: GenerationConfig, tokenizer: Tokenizer, vocab_size: int
) -> tuple[str, Any] | None:
    """(grammar, llguidance tokenizer) of the config's constraint, checked; None without one.
    Errors name the option and say what is wrong (and where, for a grammar)."""
    import llguidance

    found = constraint_of(config)
    if found is None:
        return None
    option, value = found
    grammar = grammar_text(option, value)
    lltok = ll_tokenizer(tokenizer, vocab_size, sorted(eos_ids(tokenizer, config)))
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
    if failed:
        raise ConfigError(f"{option} cannot be compiled: {messages[0].strip()}", option=option)
    return grammar, lltok


class GrammarMask:
    """A processor allowing only the tokens the grammar accepts next, for every row."""

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
