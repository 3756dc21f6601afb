"""`lmforge compile MODEL`: compile a GPT's decode step for the usual input layouts ahead of
time, so later runs (compile "auto", the default) decode compiled from their first step."""

from __future__ import annotations

import argparse
import sys
import time

from lmforge.cli.options import add_quantize_flags
from lmforge.errors import ConfigError


def cmd_compile(args: argparse.Namespace) -> int:
    import lmforge
    from lmforge.checkpoints import DEFAULT_MODEL
    from lmforge.generation.compiled import CompiledDecoder
    from lmforge.models.gpt import GPT

    for name in ("batch_size", "max_len"):
        bad = [n for n in getattr(args, name) if n < 1]
        if bad:
            raise ConfigError(f"--{name.replace('_', '-')} {bad[0]}: expected at least 1")
    lm = lmforge.load(
        args.model or DEFAULT_MODEL,
        quantize=args.quantize,
        group_size=args.group_size,
        compile=False,
    )
    if not isinstance(lm.model, GPT):
        raise ConfigError(f"{lm.source}: only a GPT's decode step compiles; this is a "
                          f"{type(lm.model).__name__}")  # fmt: skip
    print(f"{lm.source} in {lm.precision}", file=sys.stderr)
    decoder = CompiledDecoder(lm.model)
    lengths = sorted({decoder.cache_length(n) for n in args.max_len})
    for batch in args.batch_size:
        for length in lengths:
            layout = decoder.layout(batch, length, args.padded)
            cached = decoder.library_path(layout).exists()
            start = time.perf_counter()
            path = decoder.compile(layout)
            how = "cached already" if cached else f"compiled in {time.perf_counter() - start:.0f} s"
            print(f"batch {batch}, cache {length}{' (padded)' * args.padded}: {how}: {path}")
    return 0


def add_parsers(verbs) -> None:
    compile_ = verbs.add_parser(
        "compile",
        help="compile a GPT's decode step ahead of time for the usual layouts (about a minute "
        "each), so later runs decode compiled from the start",
    )
    compile_.add_argument("model", nargs="?", default=None, metavar="MODEL",
                          help="default: smollm2-135m-instruct")  # fmt: skip
    add_quantize_flags(compile_)
    compile_.add_argument("--batch-size", type=int, nargs="+", default=[1],
                          help="rows decoded together (default: 1)")  # fmt: skip
    compile_.add_argument(
        "--max-len",
        type=int,
        nargs="+",
        default=[256, 512],
        help="prompt + new tokens to allow for; each rounds up to a power-of-two cache of at "
        "least 256 (default: 256 512)",
    )
    compile_.add_argument(
        "--padded",
        action="store_true",
        help="the layout of batches whose prompts differ in length (left padding)",
    )
    compile_.set_defaults(func=cmd_compile)
