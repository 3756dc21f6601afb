"""Constrained decoding: what a JSON schema costs per token, against the same decoding unconstrained
and against llama.cpp's JSON-schema grammar on the same GGUF, in one run.

On the embedded SmolLM2-135M-Instruct: eight requests for a person as JSON (the first schema of
tests/schemas.py), greedy. lmforge decodes them constrained and unconstrained (as many tokens,
`ignore_eos`) at batch 1 and 8, int4 and (with --compile) int4 compiled; the decode tokens/s
exclude the prefill. The mask's own time per token (llguidance's bitmask and applying it) is
timed inside the processor. Compile time: every schema of the set, from JSON to a matcher.
llama.cpp (llama-cpp-python in its own venv: `make bench` builds it) decodes the same prompt
token ids with and without `LlamaGrammar.from_json_schema`, batch 1, in a process of its own.

    .venv/bin/python benchmarks/constrained.py [--compile] [--runs 3]
        [--llamacpp-python .venv-llamacpp/bin/python]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the schema set lives beside the tests

import lmforge  # noqa: E402
from lmforge.checkpoints import locate_known  # noqa: E402
from lmforge.generation import constraints  # noqa: E402
from lmforge.generation.config import GenerationConfig  # noqa: E402
from lmforge.generation.processors import GrammarMask  # noqa: E402
from tests.schemas import SCHEMAS  # noqa: E402

REQUESTS = [
    f"Invent a {kind} person. Give their name and age as JSON."
    for kind in ("French", "young", "old", "famous", "Kenyan", "fictional", "Chilean", "happy")
]


class MaskTimer:
    """Wraps GrammarMask.__call__ to add up the time spent masking."""

    def __init__(self):
        self.seconds, self.calls, self.original = 0.0, 0, GrammarMask.__call__
        timer = self

        def timed(mask, history, scores):
            start = time.perf_counter()
            result = timer.original(mask, history, scores)
            timer.seconds += time.perf_counter() - start
            timer.calls += 1
            return result

        GrammarMask.__call__ = timed


def decode_rate(lm, prompts, runs: int, **options) -> tuple[float, int]:
    """Median decode tokens/s per sequence (prefill timed apart and subtracted), and the tokens."""
    rates, tokens = [], 0
    for _ in range(runs + 1):  # the first run warms up
        start = time.perf_counter()
        lm.generate(prompts, max_new_tokens=1)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        results = lm.generate(prompts, **options)
        elapsed = time.perf_counter() - start - prefill
        tokens = max(len(r.token_ids) for r in results)
        rates.append((tokens - 1) / elapsed)
    return statistics.median(rates[1:]), tokens


def compile_times(lm) -> list[float]:
    """Seconds from a schema to a matcher ready for its first mask, for every schema of the set."""
    import llguidance

    times = []
    for _, schema in SCHEMAS:
        start = time.perf_counter()
        config = GenerationConfig.from_options(json_schema=schema)
        grammar, lltok = constraints.compile_constraint(
            config, lm.tokenizer, lm.model.config.vocab_size
        )
        llguidance.LLMatcher(lltok, grammar)
        times.append(time.perf_counter() - start)
    return times


def llamacpp(python: str, gguf: str, ids: list[int], schema: dict, tokens: int, runs: int) -> dict:
    """llama.cpp's rates with and without the schema's grammar, from its own process."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({"ids": ids, "schema": schema, "tokens": tokens, "runs": runs}, handle)
    done = subprocess.run(
        [python, str(HERE / "constrained_llamacpp.py"), gguf, handle.name],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also int4 compiled")
    parser.add_argument("--llamacpp-python", help="llama-cpp-python's interpreter (the peer)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    gguf = locate_known("smollm2-135m-instruct")
    schema = SCHEMAS[0][1]
    timer = MaskTimer()
    rows = []
    variants = [("int4", False)] + ([("int4 compiled", True)] if args.compile else [])
    for label, compiled in variants:
        lm = lmforge.load(gguf, quantize="int4", compile="now" if compiled else False)
        prompts = [lm.chat_prompt([{"role": "user", "content": r}]) for r in REQUESTS]
        for batch in (1, 8):
            chosen = prompts[:batch]
            timer.seconds, timer.calls = 0.0, 0
            constrained, tokens = decode_rate(lm, chosen, args.runs, json_schema=schema)
            mask_us = timer.seconds / max(timer.calls, 1) * 1e6
            free, _ = decode_rate(lm, chosen, args.runs, max_new_tokens=tokens, ignore_eos=True)
            rows.append((label, batch, free, constrained, mask_us, tokens))
    times = compile_times(lm)
    print(
        "\n| lmforge | batch | unconstrained tok/s a sequence | with the schema | cost "
        "| mask us/step |"
    )
    print("|---|---|---|---|---|---|")
    for label, batch, free, constrained, mask_us, _ in rows:
        cost = 1 - constrained / free
        print(
            f"| {label} | {batch} | {free:.1f} | {constrained:.1f} | {cost:+.1%} | {mask_us:.0f} |"
        )
    print(
        f"\nschema compile ({len(times)} schemas): median {statistics.median(times) * 1e3:.2f} ms,"
        f" max {max(times) * 1e3:.2f} ms"
    )
    if args.llamacpp_python:
        ids = prompts[0]
        peer = llamacpp(args.llamacpp_python, str(gguf), ids, schema, rows[0][5], args.runs)
        ours = rows[0][3]
        print(
            f"\nllama.cpp batch 1: unconstrained {peer['free']:.1f} tok/s, with the schema "
            f"{peer['constrained']:.1f} tok/s (grammar from the schema in "
            f"{peer['compile_ms']:.2f} ms); lmforge int4 with the schema / llama.cpp with the "
            f"schema: {ours / peer['constrained']:.2f}x"
        )


if __name__ == "__main__":
    main()
