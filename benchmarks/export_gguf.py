"""GGUF export: how long `lmforge export` takes for SmolLM2-135M at each type, and whether
llama.cpp decodes our exports as fast as the original file.

Each export is timed in this process from a model loaded as `lmforge export` loads it (the
default precision: int4 for the Q4_1 file), median of `--runs`. Then llama.cpp
(llama-cpp-python in its own venv, `make bench` builds it) decodes from the original Q4_1 file,
our Q4_1 export and our Q8_0 export with `benchmarks/peer.py`, in rounds (every file once a
round), and prints tokens/s at batch 1 and 8 and each export's ratio to the original.

    .venv/bin/python benchmarks/export_gguf.py [--runs 3] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TYPES = ("f16", "q8_0", "q4_1")
METRICS = ("decode tok/s, batch 1", "decode tok/s, batch 8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="exports timed per type")
    parser.add_argument("--rounds", type=int, default=3, help="llama.cpp rounds over the files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llamacpp-python", default=".venv-llamacpp/bin/python")
    args = parser.parse_args()

    import torch

    import lmforge
    from lmforge.bench import Stats, bench_prompts, streaming_bandwidth
    from lmforge.checkpoints import DEFAULT_MODEL, resolve

    torch.set_num_threads(args.threads)
    source = resolve(DEFAULT_MODEL)
    started = time.perf_counter()
    lm = lmforge.load(source, compile=False)
    print(f"{source.name}: loaded in {time.perf_counter() - started:.2f} s as {lm.precision}")
    out = Path(tempfile.mkdtemp())
    print("\n| type | export time, s | file MB | what it did |")
    print("|---|---:|---:|---|")
    for kind in TYPES:
        times, report = [], None
        for _ in range(args.runs):
            started = time.perf_counter()
            report = lmforge.export_gguf(lm, out / f"{kind}.gguf", type=kind, force=True)
            times.append(time.perf_counter() - started)
        size = (out / f"{kind}.gguf").stat().st_size / 1e6
        print(f"| {kind} | {Stats.of(times)} | {size:.1f} | {'; '.join(report.notes)} |")

    if not Path(args.llamacpp_python).exists():
        sys.exit(f"{args.llamacpp_python} not found: `make bench` builds llama-cpp-python")
    short, long = bench_prompts(lm.tokenizer)
    ids = out / "ids.json"
    ids.write_text(json.dumps({"short": short, "long": long}))
    files = {"original Q4_1": source, "our Q4_1": out / "q4_1.gguf", "our Q8_0": out / "q8_0.gguf"}
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in files}
    for round_index in range(args.rounds):
        for name, path in files.items():
            print(f"round {round_index + 1}/{args.rounds}: llama.cpp on {name} ...",
                  file=sys.stderr, flush=True)  # fmt: skip
            done = subprocess.run(
                [args.llamacpp_python, str(HERE / "peer.py"), "llamacpp", "measure", "--model",
                 str(path), "--ids", str(ids), "--threads", str(args.threads), "--runs", "2"],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            for metric, values in json.loads(done.stdout.splitlines()[-1]).items():
                samples[name].setdefault(metric, []).extend(values)
    print(
        f"\nllama.cpp decode, {args.threads} threads, median (min-max) of {args.rounds} rounds "
        f"x 2 runs; machine: {torch.backends.cpu.get_cpu_capability()} CPU kernels, "
        f"{streaming_bandwidth():.1f} GB/s streaming\n"
    )
    print("| file | " + " | ".join(METRICS) + " | batch-1 ratio to the original |")
    print("|---" * (len(METRICS) + 2) + "|")
    original = statistics.median(samples["original Q4_1"][METRICS[0]])
    for name in files:
        cells = [str(Stats.of(samples[name][m])) for m in METRICS]
        ratio = statistics.median(samples[name][METRICS[0]]) / original
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
