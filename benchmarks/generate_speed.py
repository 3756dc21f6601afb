"""Generation speed: lmforge vs transformers on the embedded SmolLM2-135M GGUF, measured in one run.

Both load the same GGUF file and get the same prompt token ids, greedy, same dtype and thread count.
Prints decode tokens/s at batch 1 and 8 (128 new tokens), prefill tokens/s for a 512-token prompt,
and process start to first token, with the ratio lmforge / transformers.

    .venv/bin/python benchmarks/generate_speed.py [--runs 3] [--threads 2] [--dtype bfloat16] [--skip-start]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch

NEW_TOKENS = 128
PREFILL_TOKENS = 512
TEXT = (
    "In the beginning of the nineteenth century, the town was a small market place on the river, "
    "where farmers from the valley brought grain, wool and cattle to sell. "
)


def median_time(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Lmforge:
    name = "lmforge"

    def __init__(self, path, dtype: str):
        import lmforge

        self.lm = lmforge.load(path, dtype=dtype)

    def generate(self, prompts: list[list[int]], new_tokens: int) -> None:
        self.lm.generate(prompts, max_new_tokens=new_tokens, ignore_eos=True)

    def prefill(self, ids: list[int]) -> None:
        with torch.inference_mode():
            self.lm.model(torch.tensor([ids]), last_only=True)

    start_code = (
        "import lmforge; lm = lmforge.load({path!r}); lm.generate({ids!r}, max_new_tokens=1)"
    )


class Transformers:
    name = "transformers"

    def __init__(self, path, dtype: str):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)
        ).eval()

    def generate(self, prompts: list[list[int]], new_tokens: int) -> None:
        batch = torch.tensor(prompts)  # the benchmark's prompts share one length: no padding needed
        with torch.inference_mode():
            self.model.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=2,
            )

    def prefill(self, ids: list[int]) -> None:
        with torch.inference_mode():
            self.model(torch.tensor([ids]), logits_to_keep=1)

    start_code = (
        "import torch; from pathlib import Path; from transformers import AutoModelForCausalLM; "
        "p = Path({path!r}); m = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32); "
        "m.generate(torch.tensor([{ids!r}]), max_new_tokens=1, do_sample=False)"
    )


def start_to_first_token(peer, path, ids, threads: int) -> float:
    code = f"import torch; torch.set_num_threads({threads}); " + peer.start_code.format(
        path=str(path), ids=ids
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def measure(peer, ids_short, ids_long, runs: int) -> dict[str, float]:
    results = {}
    for batch in (1, 8):
        prompts = [ids_short] * batch
        full = median_time(lambda p=prompts: peer.generate(p, NEW_TOKENS), runs)
        first = median_time(lambda p=prompts: peer.generate(p, 1), runs)
        results[f"decode tok/s, batch {batch}"] = batch * (NEW_TOKENS - 1) / (full - first)
    results[f"prefill tok/s, {PREFILL_TOKENS} tokens"] = PREFILL_TOKENS / median_time(
        lambda: peer.prefill(ids_long), runs
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--skip-start", action="store_true", help="skip the start-to-first-token measurement"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import lmforge
    from lmforge.checkpoints import DEFAULT_MODEL, resolve

    path = resolve(DEFAULT_MODEL)
    tokenizer = lmforge.load(path).tokenizer
    ids_short = tokenizer.encode(TEXT)[:32]
    ids_long = (tokenizer.encode(TEXT) * 40)[:PREFILL_TOKENS]

    table: dict[str, dict[str, float]] = {}
    for peer_class in (Lmforge, Transformers):
        print(f"measuring {peer_class.name} ...", file=sys.stderr, flush=True)
        peer = peer_class(path, args.dtype)
        table[peer_class.name] = measure(peer, ids_short, ids_long, args.runs)
        del peer
        if not args.skip_start:
            table[peer_class.name]["start to first token, s"] = start_to_first_token(
                peer_class, path, ids_short, args.threads
            )

    print(
        f"\nSmolLM2-135M ({path.name}), {args.dtype}, greedy, {args.threads} threads, median of {args.runs} runs, torch {torch.__version__}\n"
    )
    print("| metric | lmforge | transformers | lmforge / transformers |\n|---|---:|---:|---:|")
    for metric in table["lmforge"]:
        ours, theirs = table["lmforge"][metric], table["transformers"][metric]
        print(f"| {metric} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f}x |")
    print("\n(start to first token: lower is better; every other row: higher is better)")


if __name__ == "__main__":
    main()
