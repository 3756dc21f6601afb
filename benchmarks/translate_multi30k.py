"""Multi30k German->English with lmforge's encoder-decoders: BLEU on test_2016 after each epoch,
against the wall time, beside bentrevett/pytorch-seq2seq's published numbers.

Published (bentrevett, lowercased spaCy word tokens, greedy): attention GRU 28.3, Transformer
(3 + 3 layers, d 256, 10 epochs) 36.5. Here the same model sizes train through `lmforge.train` on a
joint byte-level BPE vocabulary; each epoch's model translates test_2016 greedily and with beam
5, scored by sacreBLEU (cased, its signature printed) and lowercased (13a tokens, the closest
sacreBLEU comes to those tables). Time to BLEU counts training steps only; evaluation is timed
apart.

    python benchmarks/translate_multi30k.py --arch seq2seq --epochs 11 --seeds 1 2 3
    python benchmarks/translate_multi30k.py --arch seq2seq-gru --epochs 10
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from lmforge.api import LM
from lmforge.evaluation.metrics import translation_scores
from lmforge.training import TrainConfig, TranslationTrainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"
PUBLISHED = {"seq2seq": 36.5, "seq2seq-gru": 28.3}  # bentrevett, lowercased tokenised, greedy


def lines(name: str) -> list[str]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def recipe(arch: str, seed: int, epochs: int) -> TrainConfig:
    """The recipe for each architecture: a translation run's defaults (`lmforge train --arch
    seq2seq` with nothing else: model sizes as bentrevett's, AdamW lr 7e-4, 400 warmup steps then
    cosine, bf16 where fast), batches of ~4,000 tokens; the GRU at lr 1e-3 with 100 warmup steps."""
    gru = {"lr": 1e-3, "warmup": 100} if arch == "seq2seq-gru" else {}
    return TrainConfig(
        arch=arch,
        data=str(DATA / "train.de.gz"),
        target=str(DATA / "train.en.gz"),
        val_data=str(DATA / "val.de.gz"),
        val_target=str(DATA / "val.en.gz"),
        vocab_size=8000,
        batch_tokens=4000,
        epochs=epochs,
        eval_interval=10**9,  # evaluated below, once an epoch
        eval_bleu=0,
        log_interval=50,
        seed=seed,
        **gru,
    )


def evaluate(lm: LM, sources: list[str], references: list[str], beams: int) -> dict:
    started = time.perf_counter()
    results = lm.translate(sources, batch_size=64, num_beams=beams, max_new_tokens=80)
    seconds = time.perf_counter() - started
    scores = translation_scores([r.text.strip() for r in results], references)
    return {**scores.as_dict(), "seconds": seconds}


def run(arch: str, seed: int, epochs: int, out: Path) -> list[dict]:
    sources, references = lines("test_2016_flickr.de.gz"), lines("test_2016_flickr.en.gz")
    config = recipe(arch, seed, epochs)
    rows: list[dict] = []
    clock = {"train": 0.0, "mark": time.perf_counter()}

    def on_step(step: int, loss: float) -> None:
        if step % trainer.batches.steps_per_epoch:
            return
        clock["train"] += time.perf_counter() - clock["mark"]
        model = trainer.model.eval()
        lm = LM(model, trainer.tokenizer, f"{arch} epoch {step // trainer.batches.steps_per_epoch}")
        row = {
            "epoch": step // trainer.batches.steps_per_epoch,
            "step": step,
            "train_minutes": clock["train"] / 60,
            "loss": loss,
            "greedy": evaluate(lm, sources, references, 1),
            "beam5": evaluate(lm, sources, references, 5),
        }
        model.train()
        rows.append(row)
        g, b = row["greedy"], row["beam5"]
        print(
            f"{arch} seed {seed} epoch {row['epoch']} ({step} steps, {row['train_minutes']:.1f} "
            f"min of training): greedy BLEU {g['bleu']:.2f} / lowercased {g['bleu_lowercase']:.2f}"
            f" / chrF {g['chrf']:.1f}; beam 5 BLEU {b['bleu']:.2f} / lowercased "
            f"{b['bleu_lowercase']:.2f}  (decoding {g['seconds']:.0f} s greedy, "
            f"{b['seconds']:.0f} s beam)",
            flush=True,
        )
        clock["mark"] = time.perf_counter()

    trainer = TranslationTrainer(config, out, on_step=on_step)
    print(
        f"{arch}: {trainer.model.num_parameters() / 1e6:.2f}M parameters, "
        f"{len(trainer.train_pairs)} pairs, {trainer.batches.steps_per_epoch} steps an epoch, "
        f"vocabulary {trainer.tokenizer.vocab_size}",
        flush=True,
    )
    clock["mark"] = time.perf_counter()
    trainer.run()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(PUBLISHED), default="seq2seq")
    parser.add_argument("--epochs", type=int, default=11)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, help="write every epoch's figures here")
    parser.add_argument("--out", type=Path, help="keep the run directories here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"recipe: {json.dumps(recipe(args.arch, args.seeds[0], args.epochs).to_dict())}")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        for seed in args.seeds:
            results[seed] = run(args.arch, seed, args.epochs, root / f"{args.arch}-seed{seed}")
    print("\n| seed | epoch | train min | greedy BLEU (lc) | beam 5 BLEU (lc) | published (lc) |")
    print("|---|---|---|---|---|---|")
    for seed, rows in results.items():
        for r in rows:
            print(
                f"| {seed} | {r['epoch']} | {r['train_minutes']:.1f} | {r['greedy']['bleu']:.2f} "
                f"({r['greedy']['bleu_lowercase']:.2f}) | {r['beam5']['bleu']:.2f} "
                f"({r['beam5']['bleu_lowercase']:.2f}) | {PUBLISHED[args.arch]} |"
            )
    rows = next(iter(results.values()))
    if rows:
        print(f"\nsacreBLEU signature: {rows[-1]['greedy']['bleu_signature']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
