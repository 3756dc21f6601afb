"""The llama.cpp side of benchmarks/constrained.py, run in llama-cpp-python's own venv (no torch):
decode tokens/s of the same prompt ids, greedy, with and without the schema's grammar.

    .venv-llamacpp/bin/python benchmarks/constrained_llamacpp.py MODEL.gguf JOB.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import llama_cpp


def main() -> None:
    gguf, job_file = sys.argv[1:3]
    with open(job_file) as handle:
        job = json.load(handle)
    llm = llama_cpp.Llama(gguf, n_ctx=2048, n_threads=2, n_batch=512, verbose=False)
    start = time.perf_counter()
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(job["schema"]), verbose=False)
    compile_ms = (time.perf_counter() - start) * 1e3

    def rate(**options) -> float:
        rates = []
        for _ in range(job["runs"] + 1):  # the first run warms up
            llm.reset()
            start = time.perf_counter()
            llm.create_completion(job["ids"], max_tokens=1, temperature=0.0)
            prefill = time.perf_counter() - start
            llm.reset()
            start = time.perf_counter()
            out = llm.create_completion(job["ids"], temperature=0.0, **options)
            tokens = out["usage"]["completion_tokens"]
            rates.append((tokens - 1) / (time.perf_counter() - start - prefill))
        return statistics.median(rates[1:])

    constrained = rate(max_tokens=job["tokens"] + 8, grammar=grammar)
    free = rate(max_tokens=job["tokens"], logit_bias={llm.token_eos(): -1e9})
    print(json.dumps({"free": free, "constrained": constrained, "compile_ms": compile_ms}))


if __name__ == "__main__":
    main()
