"""One peer of the speed benchmark, run in its own process (and, for llama.cpp, its own venv).

    python benchmarks/peer.py PEER --model FILE.gguf --ids IDS.json --threads 2 --runs 5 measure
    python benchmarks/peer.py PEER --model FILE.gguf --ids IDS.json --threads 2 start

PEER is `lmforge[:QUANTIZE[+compile]]` or `lmforge:default` (`lmforge.load(path)`, no options), `transformers` (fp32, as `from_pretrained(gguf_file=...)` loads it)
or `llamacpp` (llama-cpp-python on the GGUF as it is). `measure` prints JSON: every timing run of
decode at batch 1 and 8 (128 greedy tokens, prefill subtracted) and of a 512-token prefill.
`start` streams 128 tokens from a cold process and prints a mark when the first one is out.
Every peer gets the same prompt token ids. Imports only what its peer needs: the llama.cpp venv
has no torch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

NEW_TOKENS = 128
FIRST_TOKEN_MARK = "LMFORGE-FIRST-TOKEN"  # the marks lmforge.bench.start_and_peak_rss reads
PEAK_RSS_MARK = "LMFORGE-PEAK-RSS-KB"


def print_peak_rss() -> None:
    """VmHWM of this process (getrusage would include the forking parent's size)."""
    with open("/proc/self/status") as status:
        kb = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    print(PEAK_RSS_MARK, kb, flush=True)


def timed(fn, runs: int) -> list[float]:
    """A copy of `lmforge.bench.timed`: this file also runs in the llama.cpp venv, which has
    neither torch nor lmforge to import it from."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class LmforgePeer:
    def __init__(self, path: str, quantize: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        import lmforge

        self.torch = torch
        if quantize == "default":  # no arguments at all: what a user gets
            self.lm = lmforge.load(path)
        else:
            quantize, _, option = quantize.partition("+")  # e.g. "int4+compile"
            compile = "now" if option == "compile" else False  # compiled before it is timed
            self.lm = lmforge.load(path, quantize=quantize, compile=compile)

    def generate(self, prompts: list[list[int]], new_tokens: int, on_first=None) -> None:
        events = self.lm.stream(prompts, max_new_tokens=new_tokens, ignore_eos=True)
        next(events)
        if on_first:
            on_first()
        for _ in events:
            pass

    def prefill(self, ids: list[int]) -> None:
        with self.torch.inference_mode():
            self.lm.model(self.torch.tensor([ids]), last_only=True)


class TransformersPeer:
    def __init__(self, path: str, quantize: str, threads: int):
        from pathlib import Path

        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        file = Path(path)
        self.model = AutoModelForCausalLM.from_pretrained(
            file.parent, gguf_file=file.name, dtype=torch.float32
        ).eval()

    def generate(self, prompts: list[list[int]], new_tokens: int, on_first=None) -> None:
        torch = self.torch
        batch = torch.tensor(prompts)  # the prompts share one length: no padding needed
        with torch.inference_mode():
            if on_first:  # the first token alone, then the rest: what a streaming user sees
                self.model.generate(batch, do_sample=False, max_new_tokens=1, pad_token_id=2)
                on_first()
            self.model.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                do_sample=False,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=2,
            )

    def prefill(self, ids: list[int]) -> None:
        with self.torch.inference_mode():
            self.model(self.torch.tensor([ids]), logits_to_keep=1)


class LlamaCppPeer:
    """llama.cpp through llama-cpp-python's C API: one batch holds every sequence's token."""

    def __init__(self, path: str, quantize: str, threads: int):
        import llama_cpp as L
        import numpy as np

        self.L, self.np = L, np
        L.llama_backend_init()
        self._quiet = L.llama_log_callback(lambda *args: None)  # kept alive: C holds the pointer
        L.llama_log_set(self._quiet, None)
        self.model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
        params = L.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 2048, 512, 512, 8
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, params)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(512, 0, 8)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> list[int]:
        """entries: (token, position, sequence, wants logits) -> argmax for those that want them."""
        batch = self.batch
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        if self.L.llama_decode(self.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        out = []
        for i, entry in enumerate(entries):
            if entry[3]:
                logits = self.L.llama_get_logits_ith(self.ctx, i)
                out.append(int(self.np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax()))
        return out

    def generate(self, prompts: list[list[int]], new_tokens: int, on_first=None) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        entries = [
            (t, pos, seq, pos == len(ids) - 1)
            for seq, ids in enumerate(prompts)
            for pos, t in enumerate(ids)
        ]
        tokens = self._decode(entries)
        if on_first:
            on_first()
        for step in range(new_tokens - 1):
            pos = len(prompts[0]) + step
            tokens = self._decode([(t, pos, seq, True) for seq, t in enumerate(tokens)])

    def prefill(self, ids: list[int]) -> None:
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        self._decode([(t, pos, 0, pos == len(ids) - 1) for pos, t in enumerate(ids)])


PEERS = {"lmforge": LmforgePeer, "transformers": TransformersPeer, "llamacpp": LlamaCppPeer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", help="lmforge[:QUANTIZE], transformers or llamacpp")
    parser.add_argument("action", choices=["measure", "start"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--ids", required=True, help='JSON file: {"short": [...], "long": [...]}')
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    name, _, quantize = args.peer.partition(":")
    with open(args.ids) as f:
        ids = json.load(f)
    peer = PEERS[name](args.model, quantize or "none", args.threads)
    if args.action == "start":
        peer.generate([ids["short"]], NEW_TOKENS, lambda: print(FIRST_TOKEN_MARK, flush=True))
        print_peak_rss()
        return
    results = {}
    for batch in (1, 8):
        prompts = [ids["short"]] * batch
        first = statistics.median(timed(lambda p=prompts: peer.generate(p, 1), args.runs))
        full = timed(lambda p=prompts: peer.generate(p, NEW_TOKENS), args.runs)
        results[f"decode tok/s, batch {batch}"] = [
            batch * (NEW_TOKENS - 1) / (t - first) for t in full
        ]
    results["prefill tok/s, 512 tokens"] = [
        len(ids["long"]) / t for t in timed(lambda: peer.prefill(ids["long"]), args.runs)
    ]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
