"""`lmforge generate` (continue a prompt, streamed to a terminal) and `lmforge chat`."""

from __future__ import annotations

import argparse
import json
import sys

from lmforge.cli.options import (
    DEFAULT_PROMPT,
    add_generation_flags,
    add_model_flags,
    check_options,
    generation_options,
    load_model,
    read_prompt,
    with_draft,
)
from lmforge.errors import ConfigError


def cmd_generate(args: argparse.Namespace) -> int:
    prompt = read_prompt(args)
    options = generation_options(args)
    check_options(args, options)
    lm = load_model(args)
    config = lm.config(**options)
    options = with_draft(args, options)
    one_sequence = config.num_beams == 1 and config.num_return_sequences == 1
    shown = "" if lm.encoder_decoder else prompt  # a translation does not continue its source
    if one_sequence and not args.json and not args.no_stream:
        sys.stdout.write(shown)
        sys.stdout.flush()
        for event in lm.stream(prompt, **options):
            sys.stdout.write(event.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    results = lm.generate([prompt], **options)
    if args.json:
        payload = {
            "model": str(lm.source),
            "prompt": prompt,
            "completions": [r.to_dict() for r in results],
        }
        json.dump(payload, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
        return 0
    for i, r in enumerate(results):
        if len(results) > 1:
            print(f"--- {i + 1} ({r.finish_reason})")
        print(shown + r.text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    options = generation_options(args)
    check_options(args, options)
    lm = load_model(args)
    options = with_draft(args, options)
    if lm.encoder_decoder:
        raise ConfigError(
            f"{lm.source} is an encoder-decoder (translation) model and cannot chat; use "
            "`lmforge translate`"
        )
    if not lm.tokenizer.chat_template:
        raise ConfigError(f"{lm.source}: this model has no chat template; use `lmforge generate`")
    system = args.system
    history: list[dict] = []
    print(
        "lmforge chat: /reset clears the conversation, /system TEXT sets the system prompt, /exit quits."
    )
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history.clear()
            print("(conversation cleared)")
            continue
        if text.startswith("/system"):
            system = text[len("/system") :].strip() or None
            history.clear()
            print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        reply = ""
        sys.stdout.write("assistant> ")
        try:
            for event in lm.chat(messages, stream=True, **options):
                reply += event.text
                sys.stdout.write(event.text)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        print()
        history.append({"role": "assistant", "content": reply})


def add_parsers(verbs) -> None:
    gen = verbs.add_parser("generate", help="continue a prompt")
    gen.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help=f"the prompt (default {DEFAULT_PROMPT!r}); '' starts from BOS",
    )
    gen.add_argument("--prompt-file", help="read the prompt from a UTF-8 file")
    gen.add_argument(
        "--json", action="store_true", help="machine-readable output with token ids and logprobs"
    )
    gen.add_argument(
        "--no-stream", action="store_true", help="print the result at the end instead of streaming"
    )
    add_model_flags(gen)
    add_generation_flags(gen)
    gen.set_defaults(func=cmd_generate)

    chat = verbs.add_parser("chat", help="multi-turn chat with the model's chat template")
    chat.add_argument("--system", help="system prompt")
    add_model_flags(chat)
    add_generation_flags(chat)
    chat.set_defaults(func=cmd_chat)
