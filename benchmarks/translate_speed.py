"""Translation speed of one trained model, measured in one run: lmforge, transformers' `generate` on
the exported Marian checkpoint, and CTranslate2 (float32 and int8) converted from that export.

Multi30k test_2016 German sources in batches of 32, greedy and beam 5, every peer given the same
token ids and the same length limit. Peers take turns, `--rounds` times; the figure is the median
round's sentences per second, with BLEU (sacreBLEU) of each peer's output, so speed is compared at
equal quality.

    pip install -e ".[bench]"   # CTranslate2
    python benchmarks/translate_speed.py --model runs/de-en [--rounds 3] [--limit 1000]
"""

from __future__ import annotations

import argparse
import gzip
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import lmforge
from lmforge.evaluation.metrics import translation_scores

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"


def lines(name: str) -> list[str]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def gemm_gflops(threads: int) -> float:
    """The machine's float32 matrix-multiply throughput, for scale."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    started, runs = time.perf_counter(), 20
    for _ in range(runs):
        a @ b
    return 2 * 1024**3 * runs / (time.perf_counter() - started) / 1e9


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
    import ctranslate2
    import transformers

    sources = lines("test_2016_flickr.de.gz")[: args.limit]
    references = lines("test_2016_flickr.en.gz")[: args.limit]
    print(
        f"machine: {platform.machine()}, {args.threads} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, float32 GEMM {gemm_gflops(args.threads):.0f} "
        f"GFLOP/s; torch {torch.__version__}, transformers {transformers.__version__}, "
        f"ctranslate2 {ctranslate2.__version__}"
    )
    lm = lmforge.load(args.model)
    hf = transformers.MarianMTModel.from_pretrained(args.model).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    work = Path(tempfile.mkdtemp())
    subprocess.run(
        [
            Path(sys.executable).parent / "ct2-transformers-converter",
            "--model",
            str(args.model),
            "--output_dir",
            str(work / "ct2"),
        ],
        check=True,
        capture_output=True,
    )
    translators = {
        kind: ctranslate2.Translator(
            str(work / "ct2"), device="cpu", compute_type=kind, intra_threads=args.threads
        )
        for kind in ("float32", "int8")
    }
    print(f"model: {args.model}, {lm.model.num_parameters() / 1e6:.2f}M parameters")
    eos = lm.tokenizer.eos_ids[0]
    pieces = [tokenizer.convert_ids_to_tokens(tokenizer(s).input_ids) for s in sources]
    batches = [
        range(i, min(i + args.batch_size, len(sources)))
        for i in range(0, len(sources), args.batch_size)
    ]

    def run_lmforge(beams: int) -> list[str]:
        out = []
        for rows in batches:
            results = lm.translate(
                [sources[i] for i in rows],
                batch_size=args.batch_size,
                num_beams=beams,
                max_new_tokens=args.max_new_tokens,
            )
            out += [r.text for r in results]
        return out

    @torch.inference_mode()
    def run_transformers(beams: int) -> list[str]:
        out = []
        for rows in batches:
            encoded = tokenizer([sources[i] for i in rows], return_tensors="pt", padding=True)
            generated = hf.generate(
                **encoded, num_beams=beams, do_sample=False, max_new_tokens=args.max_new_tokens
            )
            out += tokenizer.batch_decode(generated, skip_special_tokens=True)
        return out

    def run_ct2(kind: str, beams: int) -> list[str]:
        out = []
        for rows in batches:
            results = translators[kind].translate_batch(
                [pieces[i] for i in rows], beam_size=beams, max_decoding_length=args.max_new_tokens
            )
            for r in results:
                ids = tokenizer.convert_tokens_to_ids(r.hypotheses[0])
                out.append(tokenizer.decode([t for t in ids if t != eos]))
        return out

    peers = {
        "lmforge": run_lmforge,
        "transformers": run_transformers,
        "ctranslate2 float32": lambda beams: run_ct2("float32", beams),
        "ctranslate2 int8": lambda beams: run_ct2("int8", beams),
    }
    for beams in (1, 5):
        seconds = {name: [] for name in peers}
        bleu = {}
        for _ in range(args.rounds):
            for name, run in peers.items():
                started = time.perf_counter()
                hypotheses = run(beams)
                seconds[name].append(time.perf_counter() - started)
                bleu[name] = translation_scores([h.strip() for h in hypotheses], references).bleu
        speed = {name: len(sources) / statistics.median(s) for name, s in seconds.items()}
        label = "greedy" if beams == 1 else f"beam {beams}"
        print(f"\n{label}, batch {args.batch_size}, {len(sources)} sentences, {args.rounds} rounds")
        print("| peer | sentences/s (median; min-max) | BLEU | lmforge / peer |")
        print("|---|---|---|---|")
        for name, values in seconds.items():
            rates = sorted(len(sources) / v for v in values)
            print(
                f"| {name} | {speed[name]:.1f} ({rates[0]:.1f}-{rates[-1]:.1f}) | "
                f"{bleu[name]:.2f} | {speed['lmforge'] / speed[name]:.2f}x |"
            )


if __name__ == "__main__":
    main()
