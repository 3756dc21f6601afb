"""`lmforge bench`: how fast this machine generates, and how close that is to its memory bandwidth.

A decode step reads every weight once, so tokens/s x weight bytes per token is the bandwidth the
step achieves; next to a plain streaming sum on the same machine it shows how much is left.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

NEW_TOKENS = 128
PREFILL_TOKENS = 512
BENCH_TEXT = (
    "In the beginning of the nineteenth century, the town was a small market place on the river, "
    "where farmers from the valley brought grain, wool and cattle to sell. "
)
FIRST_TOKEN_MARK = "LMFORGE-FIRST-TOKEN"
PEAK_RSS_MARK = "LMFORGE-PEAK-RSS-KB"
STAGE_MARK = "LMFORGE-STAGE"  # a start-up stage done: "LMFORGE-STAGE <name>"


def peak_rss_line() -> str:
    """This process's peak resident memory as a line for `start_and_peak_rss` to read.

    VmHWM, not getrusage: Linux carries the high-water mark of the forking parent into a
    child's ru_maxrss, so a child of a big benchmark process would report the parent's size."""
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    return f"{PEAK_RSS_MARK} {kb}"


@dataclass
class Stats:
    """Median, min and max of repeated measurements (one unit, e.g. tokens/s)."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values))

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.min:.2f}-{self.max:.2f})"


def bench_prompts(tokenizer) -> tuple[list[int], list[int]]:
    """The benchmark's prompts: 32 tokens for decode, 512 for prefill (same text for every peer)."""
    ids = tokenizer.encode(BENCH_TEXT)
    return ids[:32], (ids * (PREFILL_TOKENS // len(ids) + 1))[:PREFILL_TOKENS]


def timed(fn, runs: int) -> list[float]:
    """Wall-clock seconds of `runs` calls of fn, after one warm-up call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure_lm(lm, runs: int) -> dict[str, Stats]:
    """Decode tokens/s at batch 1 and 8 (128 greedy tokens, prefill time subtracted) and prefill
    tokens/s of a 512-token prompt."""
    short, long = bench_prompts(lm.tokenizer)
    results = {}
    for batch in (1, 8):
        prompts = [short] * batch

        def run(n, prompts=prompts):
            lm.generate(prompts, max_new_tokens=n, ignore_eos=True)

        full, first = timed(lambda: run(NEW_TOKENS), runs), timed(lambda: run(1), runs)
        prefill = statistics.median(first)
        results[f"decode tok/s, batch {batch}"] = Stats.of(
            [batch * (NEW_TOKENS - 1) / (t - prefill) for t in full]
        )
    with torch.inference_mode():
        ids = torch.tensor([long])
        times = timed(lambda: lm.model(ids, last_only=True), runs)
    results[f"prefill tok/s, {PREFILL_TOKENS} tokens"] = Stats.of(
        [PREFILL_TOKENS / t for t in times]
    )
    return results


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every tensor once, except the embedding table
    (a lookup reads one row) unless the output head shares it."""
    embedding = {id(t) for t in model.embed.state_dict(keep_vars=True).values()}
    head = {id(t) for t in model.lm_head.state_dict(keep_vars=True).values()}
    seen, total = set(), 0
    for tensor in model.state_dict(keep_vars=True).values():  # weights, not RoPE tables
        key = id(tensor)
        if key in seen or (key in embedding and key not in head):
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


def streaming_bandwidth(runs: int = 5, megabytes: int = 512) -> float:
    """GB/s of a plain float32 sum over a buffer much larger than the caches."""
    data = torch.ones(megabytes * 2**20 // 4)
    times = timed(lambda: data.sum(), runs)
    return data.numel() * 4 / statistics.median(times) / 1e9


def start_and_peak_rss(
    argv: list[str], env: dict | None = None, stages: dict[str, float] | None = None
) -> tuple[float, float]:
    """Run a child process that prints FIRST_TOKEN_MARK when its first token is out, finishes
    its generation and prints `peak_rss_line()`: (seconds from spawn to the mark, peak MiB).
    `stages` gets the seconds from spawn to each STAGE_MARK line the child prints."""
    start = time.perf_counter()
    child = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    first, peak_kb = None, None
    for line in child.stdout:
        if line.startswith(STAGE_MARK) and stages is not None:
            stages[line.split(maxsplit=1)[1].strip()] = time.perf_counter() - start
        if first is None and FIRST_TOKEN_MARK in line:
            first = time.perf_counter() - start
        if line.startswith(PEAK_RSS_MARK):
            peak_kb = int(line.split()[1])
    stderr = child.stderr.read()
    child.wait()
    if child.returncode != 0 or first is None or peak_kb is None:
        raise RuntimeError(f"{argv[:3]} failed (exit {child.returncode}): {stderr[-2000:]}")
    return first, peak_kb / 1024


def lmforge_start_argv(
    model: str, quantize: str, threads: int, compile: bool | str = False
) -> list[str]:
    """A fresh Python process that loads `model`, streams 128 tokens and marks the first (and
    each start-up stage: torch imported, lmforge imported, model loaded)."""

    def stage(name: str) -> str:
        return f"print({STAGE_MARK + ' ' + name!r}, flush=True); "

    code = (
        "import sys, torch; "
        f"torch.set_num_threads({threads}); "
        + stage("import torch")
        + "import lmforge; "
        + stage("import lmforge")
        + f"lm = lmforge.load({model!r}, quantize={quantize!r}, compile={compile!r}); "
        + stage("load the model")
        + f"events = lm.stream({BENCH_TEXT!r}, max_new_tokens={NEW_TOKENS}, ignore_eos=True); "
        "next(events); "
        f"print({FIRST_TOKEN_MARK!r}, flush=True); "
        "[e for e in events]; "
        "from lmforge.bench import peak_rss_line; print(peak_rss_line())"
    )
    return [sys.executable, "-c", code]


def run_bench(
    model: str, quantize: str, runs: int, threads: int, compile: bool | str = False
) -> dict:
    """Everything `lmforge bench` prints, as a dict (also what --json gives). With compile
    "now", each batch size compiles (or loads from the disk cache) in its untimed warm-up call;
    the first token comes from the eager prefill, before the compile, so start-up does not show
    it."""
    import lmforge

    torch.set_num_threads(threads)
    stages: dict[str, float] = {}
    argv = lmforge_start_argv(model, quantize, threads, compile)
    start, rss = start_and_peak_rss(argv, stages=stages)
    lm = lmforge.load(model, quantize=quantize, compile=compile)
    results: dict = {"precision": lm.precision}
    results.update(measure_lm(lm, runs))
    weight_bytes = decode_weight_bytes(lm.model)
    decode = results["decode tok/s, batch 1"]
    previous = 0.0
    for name, at in stages.items():  # the start-up timeline, each stage's own seconds
        results[f"start-up: {name}, s"] = at - previous
        previous = at
    results["start-up: first token, s"] = start - previous
    results["start to first token, s"] = start
    results["peak RSS, MiB"] = rss
    results["weight bytes per token, MB"] = weight_bytes / 1e6
    results["bandwidth achieved, GB/s"] = weight_bytes * decode.median / 1e9
    results["streaming bandwidth (fp32 sum), GB/s"] = streaming_bandwidth()
    return results


def format_results(results: dict) -> str:
    width = max(len(k) for k in results)
    lines = []
    for key, value in results.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def to_json(results: dict) -> str:
    return json.dumps(
        {k: (v.__dict__ if isinstance(v, Stats) else v) for k, v in results.items()}, indent=1
    )
