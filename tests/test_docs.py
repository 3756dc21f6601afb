"""What the README and the CLI say about generation options comes from `GenerationConfig` itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmforge.cli import build_parser
from lmforge.generation.config import GenerationConfig, cli_flags, options_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_lists_every_generation_option_as_the_config_describes_it():
    assert options_table() in README.read_text(), (
        "README's decoding-options table is stale; paste lmforge.generation.config.options_table()"
    )


def test_generate_and_chat_offer_every_option_flag():
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    for verb in ("generate", "chat"):
        offered = {flag for action in verbs[verb]._actions for flag in action.option_strings}
        for f in dataclasses.fields(GenerationConfig):
            assert set(cli_flags(f)) <= offered, f"{verb} lacks {cli_flags(f)} for {f.name}"


def test_flags_reach_the_generation_options():
    from lmforge.cli.options import generation_options

    args = build_parser().parse_args(
        [
            "generate",
            "--top-k",
            "5",
            "--greedy",
            "--logit-bias",
            "7=-2.5",
            "--stop",
            "\n\n",
            "--early-stopping",
            "never",
            "-n",
            "2",
            "--prompt-lookup",
            "3",
            "--ignore-eos",
        ]
    )
    assert generation_options(args) == {
        "top_k": 5,
        "do_sample": False,
        "logit_bias": {7: -2.5},
        "stop": ["\n\n"],
        "early_stopping": "never",
        "num_return_sequences": 2,
        "prompt_lookup_num_tokens": 3,
        "ignore_eos": True,
    }
