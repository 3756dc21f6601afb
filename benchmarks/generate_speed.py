"""Generation speed: lmforge vs transformers vs llama.cpp on a GGUF model (the embedded
SmolLM2-135M by default; `--model gemma3-270m` for Gemma 3 270M).

Every peer runs in its own processes (`benchmarks/peer.py`), with the same prompt token ids,
greedy, the same thread count, in one run of this script: decode tokens/s at batch 1 and 8
(128 new tokens), prefill tokens/s of a 512-token prompt, process start to first token and the
peak RSS of that process. Prints median (min-max) and the ratios of the first peer to the others.

The speed runs come in rounds: each round measures every peer in turn (`--runs` timings each),
so a machine whose speed drifts during the run (a shared host does) slows every peer alike,
and the batch-1 ratio is also printed round by round. Start-up and RSS are measured in the
first round.

llama.cpp is llama-cpp-python in its own venv (`make bench` builds it once; the build is
cached): pass its interpreter with --llamacpp-python, or leave it out with --peers.

    .venv/bin/python benchmarks/generate_speed.py [--rounds 3] [--runs 2] [--threads 2]
        [--peers lmforge:default,lmforge:int4+compile,lmforge:int4,lmforge:none,transformers,llamacpp]

`lmforge:default` is `lmforge.load(path)` with no options, as `make run` and every verb load it:
quantize "auto" and compile "auto" (compiled where `lmforge compile` has been run, eager
otherwise). Run it on a machine with and without compiled layouts cached to see both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from lmforge.bench import Stats, bench_prompts, start_and_peak_rss

HERE = Path(__file__).resolve().parent
LABELS = {
    "lmforge:default": "lmforge default",
    "lmforge:none": "lmforge fp32",
    "lmforge:bf16": "lmforge bf16",
    "lmforge:int8": "lmforge int8",
    "lmforge:int4": "lmforge int4",
    "lmforge:int4+compile": "lmforge int4 compiled",
    "transformers": "transformers fp32",
    "llamacpp": "llama.cpp (GGUF as is)",
}
LOWER_IS_BETTER = ("start to first token, s", "peak RSS, MiB")
BATCH_1 = "decode tok/s, batch 1"


def run_peer(
    python: str, peer: str, model: str, ids_file: str, args, start_runs: int
) -> dict[str, list[float]]:
    """One round of one peer: every metric's measurements."""
    import subprocess

    common = ["--model", model, "--ids", ids_file, "--threads", str(args.threads)]
    measured = subprocess.run(
        [python, str(HERE / "peer.py"), peer, "measure", "--runs", str(args.runs), *common],
        check=True,
        capture_output=True,
        text=True,
    )
    results = json.loads(measured.stdout.splitlines()[-1])
    if start_runs:  # the measure run above already filled lmforge's cache
        runs = [
            start_and_peak_rss([python, str(HERE / "peer.py"), peer, "start", *common])
            for _ in range(start_runs)
        ]
        results["start to first token, s"] = [seconds for seconds, _ in runs]
        results["peak RSS, MiB"] = [mib for _, mib in runs]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2, help="timings per peer per round")
    parser.add_argument("--start-runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--peers",
        default="lmforge:default,lmforge:int4+compile,lmforge:int4,lmforge:none,transformers,"
        "llamacpp",
    )
    parser.add_argument("--llamacpp-python", default=".venv-llamacpp/bin/python")
    parser.add_argument("--model", default=None, help="a model name or GGUF file (default: "
                        "smollm2-135m-instruct)")  # fmt: skip
    args = parser.parse_args()
    for name in ("rounds", "runs", "start_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected at least 1")

    import lmforge
    from lmforge.checkpoints import DEFAULT_MODEL, resolve

    model = str(resolve(args.model or DEFAULT_MODEL))
    short, long = bench_prompts(lmforge.load(model, compile=False).tokenizer)
    ids_file = Path(tempfile.mkdtemp()) / "ids.json"
    ids_file.write_text(json.dumps({"short": short, "long": long}))

    peers = args.peers.split(",")
    pythons = {p: args.llamacpp_python if p == "llamacpp" else sys.executable for p in peers}
    for peer, python in pythons.items():
        if not Path(python).exists():
            sys.exit(
                f"{python} not found: run `make bench` (builds llama-cpp-python) or drop {peer}"
            )
    samples: dict[str, dict[str, list[float]]] = {peer: {} for peer in peers}
    rounds: list[dict[str, float]] = []  # each round's median batch-1 decode speed per peer
    for round_index in range(args.rounds):
        rounds.append({})
        for peer in peers:
            print(
                f"round {round_index + 1}/{args.rounds}: {LABELS.get(peer, peer)} ...",
                file=sys.stderr,
                flush=True,
            )
            start_runs = args.start_runs if round_index == 0 else 0
            measured = run_peer(pythons[peer], peer, model, str(ids_file), args, start_runs)
            for metric, values in measured.items():
                samples[peer].setdefault(metric, []).extend(values)
            rounds[-1][peer] = Stats.of(measured[BATCH_1]).median
    table = {p: {m: Stats.of(v) for m, v in samples[p].items()} for p in peers}

    first, others = peers[0], peers[1:]
    import torch

    from lmforge.bench import streaming_bandwidth

    print(
        f"\n{Path(model).name}, greedy, {args.threads} threads, "
        f"median (min-max) of {args.rounds} rounds x {args.runs} runs "
        f"({args.start_runs} for start-up and RSS); machine: "
        f"{torch.backends.cpu.get_cpu_capability()} CPU kernels, "
        f"{streaming_bandwidth():.1f} GB/s streaming\n"
    )
    header = [LABELS.get(p, p) for p in peers] + [
        f"{LABELS.get(first, first)} / {LABELS.get(p, p)}" for p in others
    ]
    print("| metric | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for metric in table[first]:
        cells = [str(table[p][metric]) for p in peers]
        ratios = [f"{table[first][metric].median / table[p][metric].median:.2f}x" for p in others]
        print(f"| {metric} | " + " | ".join(cells + ratios) + " |")
    print(f"\n(lower is better for: {', '.join(LOWER_IS_BETTER)}; higher for every other row)")
    for other in others:
        per_round = ", ".join(f"{r[first] / r[other]:.2f}x" for r in rounds)
        print(f"{BATCH_1} ratio {LABELS.get(first, first)} / {LABELS.get(other, other)}, "
              f"round by round: {per_round}")  # fmt: skip


if __name__ == "__main__":
    main()
