"""Server load: 1, 4 and 8 concurrent streaming clients against one `lmforge serve` process.

Each client streams greedy completions of 128 tokens from the same prompt; the server runs in its
own process on 127.0.0.1. Prints aggregate tokens/s, time to first token p50/p95 and errors per
level, and the 8-client / 1-client throughput ratio (target: >= 3x, 0 errors).

    .venv/bin/python benchmarks/serve_load.py [--quantize int4] [--requests-per-client 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPT = (
    "In the beginning of the nineteenth century, the town was a small market place on the river"
)
MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_request(url: str, tokens: int) -> tuple[float, int, float]:
    """(time to first token, tokens received, total seconds) of one streaming completion."""
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first, count = None, 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if first is None:
                first = time.perf_counter() - start
            count += 1
    return first, count, time.perf_counter() - start


def level(url: str, clients: int, per_client: int, tokens: int) -> dict:
    ttfts, errors, total_tokens = [], 0, 0

    def client(_):
        results = []
        for _ in range(per_client):
            try:
                results.append(one_request(url, tokens))
            except Exception:  # noqa: BLE001 - counted, not raised
                results.append(None)
        return results

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for results in pool.map(client, range(clients)):
            for result in results:
                if result is None:
                    errors += 1
                    continue
                ttfts.append(result[0])
                total_tokens += result[1]
    elapsed = time.perf_counter() - start
    ttfts.sort()
    return {
        "clients": clients,
        "tokens/s": total_tokens / elapsed,
        "ttft p50, s": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft p95, s": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]
        if ttfts
        else float("nan"),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", default="int4")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lmforge", "serve", "-q", args.quantize, "--port", str(port)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/health", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit(
                        f"server did not start: {server.stderr.read() if server.poll() is not None else ''}"
                    )
                time.sleep(0.2)
        one_request(url, 8)  # warm-up
        rows = []
        for n in (1, 4, 8):
            before = httpx.get(url + "/health").json()
            rows.append(level(url, n, args.requests_per_client, args.tokens))
            after = httpx.get(url + "/health").json()
            steps = after["steps"] - before["steps"]
            rows[-1]["rows per step"] = (after["row_steps"] - before["row_steps"]) / max(1, steps)
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"\nlmforge serve -q {args.quantize}, greedy, {args.tokens} tokens per request, "
          f"{args.requests_per_client} requests per client\n")  # fmt: skip
    print(
        "| clients | aggregate tokens/s | TTFT p50, s | TTFT p95, s | errors | rows per step |\n"
        "|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(f"| {row['clients']} | {row['tokens/s']:.1f} | {row['ttft p50, s']:.3f} | "
              f"{row['ttft p95, s']:.3f} | {row['errors']} | {row['rows per step']:.1f} |")  # fmt: skip
    print(
        f"\n8 clients / 1 client: {rows[2]['tokens/s'] / rows[0]['tokens/s']:.2f}x (target >= 3x)"
    )


if __name__ == "__main__":
    main()
