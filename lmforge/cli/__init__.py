"""`lmforge <verb>`: one thin module per verb (parse -> call -> print), the logic in its subsystem.

Imports of torch and the model code happen inside the verbs, so `lmforge --help` and
`lmforge models` answer at once.
"""

from __future__ import annotations

import argparse
import sys

from lmforge.cli import (
    bench,
    classify,
    compile,
    embed,
    evaluate,
    export,
    generate,
    models,
    serve,
    summarize,
    train,
    translate,
)
from lmforge.errors import LMForgeError

VERBS = (
    generate,
    translate,
    summarize,
    models,
    serve,
    embed,
    train,
    classify,
    evaluate,
    bench,
    compile,
    export,
)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge", description="Language models and text generation in plain PyTorch."
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    for module in VERBS:
        module.add_parsers(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LMForgeError as exc:
        print(f"lmforge {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lmforge ... | head`
        sys.stderr.close()
        return 0
