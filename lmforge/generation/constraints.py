"""Constrained decoding: only tokens that keep the text inside a JSON schema, regex or grammar.

llguidance compiles the constraint and, for the text generated so far, gives the set of tokens
that may come next as a bitmask over the vocabulary (tens of microseconds for 49k tokens). The
`GrammarMask` processor (in processors.py) sets every other token's score to -inf before any
sampling warper, so greedy, sampling, beam search, speculative decoding and the server's batch
all obey it. End tokens are allowed only where the grammar accepts the text. This module turns
the options into llguidance's grammar and tokenizer, with errors that say what is wrong.
"""

from __future__ import annotations

import json
import weakref
from typing import TYPE_CHECKING, Any

from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig, eos_ids

if TYPE_CHECKING:
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
    found = constraint_of(config)
    if found is None:
        return None
    import llguidance  # (only when there is a constraint: it is not a free import)

    option, value = found
    grammar = grammar_text(option, value)
    lltok = ll_tokenizer(tokenizer, vocab_size, sorted(eos_ids(tokenizer, config)))
    failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, lltok)
    if failed:
        raise ConfigError(f"{option} cannot be compiled: {messages[0].strip()}", option=option)
    return grammar, lltok
