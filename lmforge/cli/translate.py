"""`lmforge translate`: one sentence from the command line, or a file (or stdin) line by line."""

from __future__ import annotations

import argparse
import sys

from lmforge.cli.options import add_generation_flags, add_model_flags, generation_options
from lmforge.errors import ConfigError
from lmforge.paths import read_lines


def _read_lines(path: str | None) -> list[str]:
    return sys.stdin.read().splitlines() if path is None else read_lines(path, "--input")


def cmd_translate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lmforge.cli.options import load_model

    options = generation_options(args)
    if "truncate" in options:
        raise ConfigError("--truncate left is for prompts; cut long sources with --truncate-source")
    if args.draft_model is not None:
        raise ConfigError("--draft-model is for decoder-only models; translate has no drafter")
    if args.text is not None and args.input is not None:
        raise ConfigError("give a sentence or --input FILE, not both")
    lm = load_model(args)
    if args.text is not None:
        print(lm.translate(args.text, truncate=args.truncate_source, **options).text.strip())
        return 0
    lines = _read_lines(args.input)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        bar = tqdm(total=len(lines), unit="line", disable=args.input is None, file=sys.stderr)
        for start in range(0, len(lines), args.batch_size):
            chunk = lines[start : start + args.batch_size]
            results = lm.translate(chunk, args.batch_size, args.truncate_source, **options)
            for result in results:
                best = result[0] if isinstance(result, list) else result
                out.write(" ".join(best.text.split()) + "\n")  # one line out per line in
            out.flush()
            bar.update(len(chunk))
        bar.close()
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def add_parsers(verbs) -> None:
    tr = verbs.add_parser(
        "translate", help="translate a sentence, or a file / stdin line by line (seq2seq models)"
    )
    tr.add_argument("text", nargs="?", default=None, help="one sentence (default: read lines)")
    tr.add_argument("--input", "-i", help="a UTF-8 file, one sentence a line (default: stdin)")
    tr.add_argument("--output", "-o", help="write the translations here (default: stdout)")
    tr.add_argument("--batch-size", type=int, default=64, help="sentences translated at once")
    tr.add_argument(
        "--truncate-source",
        dest="truncate_source",
        action="store_true",
        help="cut sources longer than the model reads (default: an error naming the line)",
    )
    add_model_flags(tr)
    add_generation_flags(tr)
    tr.set_defaults(func=cmd_translate)
