"""`lmforge bench`: this machine's decode and prefill speed, start-up, memory and bandwidth."""

from __future__ import annotations

import argparse
import sys

from lmforge.cli.options import add_compile_flag, add_quantize_flags
from lmforge.errors import ConfigError


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from lmforge.bench import format_results, run_bench, to_json
    from lmforge.checkpoints import DEFAULT_MODEL, resolve

    if args.runs < 1:
        raise ConfigError(f"--runs {args.runs}: expected at least 1")
    model = str(resolve(args.model or DEFAULT_MODEL))  # fail fast on a bad name
    threads = args.threads or torch.get_num_threads()
    if threads < 1:
        raise ConfigError(f"--threads {threads}: expected at least 1")
    compile = "now" if args.compile is True else args.compile  # compiled before it is timed
    compiled = {"now": ", compiled", "auto": ", compile auto", False: ""}[compile]
    print(
        f"benchmarking {model} (quantize={args.quantize}{compiled}, {threads} threads) ...",
        file=sys.stderr,
    )
    results = run_bench(model, args.quantize, args.runs, threads, compile=compile)
    print(to_json(results) if args.json else format_results(results))
    return 0


def add_parsers(verbs) -> None:
    bench = verbs.add_parser(
        "bench", help="decode/prefill speed, start-up time, peak memory and bandwidth achieved"
    )
    bench.add_argument("--model", "-m", default=None, help="default: smollm2-135m-instruct")
    add_quantize_flags(bench)
    add_compile_flag(bench)
    bench.add_argument("--runs", type=int, default=3, help="repetitions per measurement")
    bench.add_argument("--threads", type=int, default=None, help="default: torch's default")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=cmd_bench)
