"""Constrained decoding: every decode path keeps the output inside the schema, regex or grammar."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig
from lmforge.generation.constraints import compile_constraint
from lmforge.tokenizers.train import train_word_tokenizer
from tests.schemas import SCHEMAS


def ask(lm, request: str, **options):
    return lm.chat([{"role": "user", "content": request}], **{"max_new_tokens": 96, **options})


def valid(text: str, schema: dict) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


@pytest.mark.parametrize("index", [0, 4, 7, 14])
def test_greedy_output_matches_the_schema(smollm, index):
    request, schema = SCHEMAS[index]
    result = ask(smollm, request, json_schema=schema)
    assert result.finish_reason == "eos", result.text
    assert valid(result.text, schema), result.text


@pytest.mark.slow
def test_every_schema_greedy_and_sampled_validates(smollm):
    """20 schemas x (greedy + 3 seeds) all validate; the same prompts unconstrained mostly do not."""
    constrained = unconstrained = 0
    for request, schema in SCHEMAS:
        runs = [{}] + [{"temperature": 0.8, "seed": seed} for seed in (1, 2, 3)]
        for options in runs:
            result = ask(smollm, request, json_schema=schema, **options)
            assert result.finish_reason == "eos" and valid(result.text, schema), (request, result)
            constrained += 1
            unconstrained += valid(ask(smollm, request, **options).text, schema)
    print(f"valid: constrained {constrained}/80, unconstrained {unconstrained}/80")
    assert unconstrained < constrained // 2


def test_a_grammar_allowing_everything_changes_nothing(smollm):
    prompt = "The three primary colours are"
    plain = smollm.generate(prompt, max_new_tokens=24)
    free = smollm.generate(prompt, max_new_tokens=24, regex=r"(?s:.*)")
    assert free.token_ids == plain.token_ids


def test_speculative_beam_warpers_and_batches_obey_the_schema(smollm):
    request, schema = SCHEMAS[8]
    greedy = ask(smollm, request, json_schema=schema)
    assert valid(greedy.text, schema), greedy.text
    # speculative greedy verifies drafts against the masked choice: the same tokens
    speculative = ask(smollm, request, json_schema=schema, prompt_lookup_num_tokens=3)
    assert speculative.token_ids == greedy.token_ids
    # the mask comes before the warpers: top_k=1 keeps the best allowed token, never nothing
    top1 = ask(smollm, request, json_schema=schema, top_k=1, seed=0)
    assert top1.token_ids == greedy.token_ids
    beam = ask(smollm, request, json_schema=schema, num_beams=3)
    assert beam.finish_reason == "eos" and valid(beam.text, schema), beam.text
    # one matcher per row: a batch gives each row what it gives alone
    other_request, other_schema = SCHEMAS[8][0].replace("product", "tool"), schema
    prompts = [
        smollm.chat_prompt([{"role": "user", "content": r}]) for r in (request, other_request)
    ]
    batch = smollm.generate(prompts, max_new_tokens=96, json_schema=other_schema)
    alone = smollm.generate(prompts[1], max_new_tokens=96, json_schema=other_schema)
    assert batch[0].token_ids == greedy.token_ids
    assert batch[1].token_ids == alone.token_ids


def test_regex_choice_and_grammar(smollm):
    phone = ask(smollm, "Give me a phone number.", regex=r"[0-9]{3}-[0-9]{4}")
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", phone.text) and phone.finish_reason == "eos"
    answer = ask(smollm, "Is water wet?", choice=["yes", "no", "maybe"])
    assert answer.text in {"yes", "no", "maybe"}
    gbnf = 'root ::= "The answer is " [0-9]+ "."'
    number = ask(smollm, "What is 2 + 2?", grammar=gbnf)
    assert re.fullmatch(r"The answer is [0-9]+\.", number.text), number.text
    lark = 'start: "colour: " COLOUR\nCOLOUR: "red" | "green" | "blue"'
    colour = ask(smollm, "Name a colour.", grammar=lark)
    assert colour.text in {"colour: red", "colour: green", "colour: blue"}


def test_output_cut_before_the_grammar_accepts_says_length(smollm):
    request, schema = SCHEMAS[6]
    cut = smollm.chat([{"role": "user", "content": request}], max_new_tokens=6, json_schema=schema)
    assert cut.finish_reason == "length" and not valid(cut.text, schema)


def test_any_json_object_is_compact(smollm):
    result = ask(smollm, "Describe a cat in JSON.", json=True, max_new_tokens=60)
    if result.finish_reason == "eos":
        assert isinstance(json.loads(result.text), dict)
    assert "\n" not in result.text and "  " not in result.text  # whitespace is bounded


@pytest.mark.parametrize(
    "options, message",
    [
        ({"json_schema": {"type": "strin"}}, "json_schema cannot be compiled: Invalid type"),
        ({"json_schema": {"type": "object", "not": {}}}, 'Unimplemented keys: ["not"]'),
        ({"json_schema": "{not json"}, "json_schema is not valid JSON"),
        ({"json_schema": ["a"]}, "json_schema"),
        ({"regex": "a(b"}, "regex cannot be compiled"),
        ({"grammar": "start: foo\nfoo: 'a' |"}, "grammar cannot be compiled: 2(6)"),
        ({"choice": ["a", ""]}, "choice"),
        ({"json": True, "regex": "a"}, "give one of them"),
        ({"json": True, "ignore_eos": True}, "needs an end-of-sequence token"),
    ],
)
def test_bad_constraints_are_clear_errors(smollm, options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        smollm.config(**options)


def test_a_word_level_tokenizer_cannot_be_constrained():
    words = train_word_tokenizer(["the cat sat on the mat"] * 4)
    config = GenerationConfig.from_options(regex="cat", eos_token_ids=[0])
    with pytest.raises(ConfigError, match="tokenizer cannot be constrained"):
        compile_constraint(config, words, words.vocab_size)


def test_the_generate_command_takes_constraints(tmp_path, capsys, tiny_gpt2_dir):
    from lmforge.cli import main

    schema = tmp_path / "colour.json"
    schema.write_text(json.dumps({"enum": ["red", "blue"]}))
    model = str(tiny_gpt2_dir[0])
    runs = {
        "json-schema": ["--json-schema", str(schema)],
        "choice": ["--choice", "yes", "--choice", "no"],
        "regex": ["--regex", "[0-9]{3}"],
    }
    for name, flags in runs.items():
        code = main(["generate", "Hi", "--model", model, "--json", "--max-new-tokens", "8", *flags])
        out, err = capsys.readouterr()
        assert code == 0, err
        text = json.loads(out)["completions"][0]["text"]
        expected = {"json-schema": {'"red"', '"blue"'}, "choice": {"yes", "no"}}.get(name)
        assert text in expected if expected else re.fullmatch("[0-9]{3}", text), (name, text)
    code = main(["generate", "Hi", "--model", model, "--json-schema", str(tmp_path / "none")])
    assert code != 0 and "--json-schema" in capsys.readouterr().err
