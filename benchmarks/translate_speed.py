"""Translation speed of one trained model, measured in one run: lmforge (float32, and bfloat16 where
the CPU multiplies it fast), transformers' `generate` on the exported Marian checkpoint, and
CTranslate2 (float32 and int8) converted from that export.

Multi30k test_2016 German sources in batches of 32, greedy and beam 5, every peer given the same
sources and the same length limit. Each peer runs in a process of its own (CTranslate2 brings its
own OpenMP runtime: imported beside PyTorch, the two thread pools fight over the cores and slow
PyTorch several-fold), translates everything once untimed (first calls build kernels), then the
peers take turns, `--rounds` times; the figure is the median round's sentences per second, with
BLEU (sacreBLEU) of each peer's output, so speed is compared at equal quality.

    pip install -e ".[bench]"   # CTranslate2
    python benchmarks/translate_speed.py --model runs/de-en [--rounds 3] [--limit 1000]
"""

from __future__ import annotations

import argparse
import gzip
import multiprocessing
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge.device import bf16_matmul_is_fast
from lmforge.evaluation.metrics import translation_scores

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def lines(name: str) -> list[str]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def gemm_gflops() -> float:
    """The machine's float32 matrix-multiply throughput, for scale."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    started, runs = time.perf_counter(), 20
    for _ in range(runs):
        a @ b
    return 2 * 1024**3 * runs / (time.perf_counter() - started) / 1e9


def translator(peer: str, args: argparse.Namespace, ct2_dir: Path) -> Callable[[int], list[str]]:
    """A function beams -> one translation per source, for `peer` (imports only what it needs)."""
    sources = lines("test_2016_flickr.de.gz")[: args.limit]
    batches = [sources[i : i + args.batch_size] for i in range(0, len(sources), args.batch_size)]
    if peer.startswith("lmforge"):
        import lmforge

        lm = lmforge.load(args.model, dtype=peer.split()[1])
        return lambda beams: [
            r.text
            for batch in batches
            for r in lm.translate(
                batch, batch_size=len(batch), num_beams=beams, max_new_tokens=args.max_new_tokens
            )
        ]
    import transformers

    transformers.logging.set_verbosity_error()  # (its note on max_length beside max_new_tokens)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    if peer == "transformers":
        hf = transformers.MarianMTModel.from_pretrained(args.model).eval()

        @torch.inference_mode()
        def run_transformers(beams: int) -> list[str]:
            out = []
            for batch in batches:
                encoded = tokenizer(batch, return_tensors="pt", padding=True)
                generated = hf.generate(
                    **encoded, num_beams=beams, do_sample=False, max_new_tokens=args.max_new_tokens
                )
                out += tokenizer.batch_decode(generated, skip_special_tokens=True)
            return out

        return run_transformers
    import ctranslate2

    ct2 = ctranslate2.Translator(
        str(ct2_dir), device="cpu", compute_type=peer.split()[1], intra_threads=args.threads
    )
    pieces = [tokenizer.convert_ids_to_tokens(tokenizer(s).input_ids) for s in sources]
    eos = tokenizer.eos_token_id

    def run_ct2(beams: int) -> list[str]:
        out = []
        for start in range(0, len(pieces), args.batch_size):
            results = ct2.translate_batch(
                pieces[start : start + args.batch_size],
                beam_size=beams,
                max_decoding_length=args.max_new_tokens,
            )
            for r in results:
                ids = tokenizer.convert_tokens_to_ids(r.hypotheses[0])
                out.append(tokenizer.decode([t for t in ids if t != eos]))
        return out

    return run_ct2


def serve_peer(connection, peer: str, args: argparse.Namespace, ct2_dir: Path) -> None:
    """A peer's process: translate with `beams` for each request, answer (seconds, texts)."""
    torch.set_num_threads(args.threads)
    translate = translator(peer, args, ct2_dir)
    connection.send("ready")
    while (beams := connection.recv()) is not None:
        started = time.perf_counter()
        texts = translate(beams)
        connection.send((time.perf_counter() - started, texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="a seq2seq run directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=1000, help="test sentences used")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--max-new-tokens", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gflops = gemm_gflops()
    references = lines("test_2016_flickr.en.gz")[: args.limit]
    script = "import ctranslate2 as c, transformers as t; print(t.__version__, c.__version__)"
    versions = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout.split()
    print(
        f"machine: {platform.machine()}, {args.threads} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, float32 GEMM {gflops:.0f} GFLOP/s; torch "
        f"{torch.__version__}, transformers {versions[0]}, ctranslate2 {versions[1]}; "
        f"model {args.model}"
    )
    ct2_dir = Path(tempfile.mkdtemp()) / "ct2"
    converter = Path(sys.executable).parent / "ct2-transformers-converter"
    subprocess.run(
        [converter, "--model", str(args.model), "--output_dir", str(ct2_dir)],
        check=True,
        capture_output=True,
    )
    names = ["lmforge float32"] + (["lmforge bfloat16"] if bf16_matmul_is_fast() else [])
    names += ["transformers", "ctranslate2 float32", "ctranslate2 int8"]
    spawn = multiprocessing.get_context("spawn")
    peers = {}
    for name in names:
        ours, theirs = spawn.Pipe()
        spawn.Process(target=serve_peer, args=(theirs, name, args, ct2_dir), daemon=True).start()
        assert ours.recv() == "ready"
        peers[name] = ours
    try:
        for beams in (1, 5):
            report(peers, beams, args, references)
    finally:
        for connection in peers.values():
            connection.send(None)


def report(peers: dict, beams: int, args: argparse.Namespace, references: list[str]) -> None:
    """Time every peer `args.rounds` times, taking turns, after one untimed pass each."""
    seconds: dict[str, list[float]] = {name: [] for name in peers}
    bleu = {}
    for round_ in range(args.rounds + 1):
        for name, connection in peers.items():
            time.sleep(0.5)  # the previous peer's threads stop spinning
            connection.send(beams)
            spent, texts = connection.recv()
            if round_:
                seconds[name].append(spent)
            bleu[name] = translation_scores([t.strip() for t in texts], references).bleu
    count = len(references)
    speed = {name: count / statistics.median(s) for name, s in seconds.items()}
    best = max((name for name in peers if name.startswith("lmforge")), key=speed.get)
    label = "greedy" if beams == 1 else f"beam {beams}"
    print(f"\n{label}, batch {args.batch_size}, {count} sentences, {args.rounds} rounds")
    print(f"| peer | sentences/s (median; min-max) | BLEU | {best} / peer |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        rates = sorted(count / v for v in values)
        print(
            f"| {name} | {speed[name]:.1f} ({rates[0]:.1f}-{rates[-1]:.1f}) | "
            f"{bleu[name]:.2f} | {speed[best] / speed[name]:.2f}x |"
        )


if __name__ == "__main__":
    main()
