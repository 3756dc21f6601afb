"""LSTM vs nn.Transformer LM vs GPT of similar size on one corpus and one tokenizer.

Each model trains for the same number of steps on tiny Shakespeare (characters, nanoGPT's split,
batch 12 x 64 tokens, AdamW with warmup and cosine decay). The table gives parameters, training
tokens/s, validation loss, bits per character and a sample from each.

    python benchmarks/compare_architectures.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from lmforge.training import train
from lmforge.training.config import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
# about 0.8M parameters each
MODELS = {
    "lstm": dict(arch="lstm", n_embd=224, n_layer=2, dropout=0.0, lr=2e-3),
    "transformer": dict(arch="transformer", n_embd=128, n_head=4, n_layer=4, dropout=0.0),
    "gpt": dict(arch="gpt", n_embd=128, n_head=4, n_layer=4, dropout=0.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, samples = [], {}
    for name, options in MODELS.items():
        settings = dict(
            data=str(DATA), tokenizer="char", byte_fallback=False, val_fraction=0.1,
            test_fraction=0.0, block_size=64, batch_size=12, steps=args.steps, lr=1e-3,
            min_lr=1e-4, warmup=100, beta2=0.99, weight_decay=0.1, eval_interval=args.steps,
        )  # fmt: skip
        settings.update(options)
        with tempfile.TemporaryDirectory() as out:
            result = train(TrainConfig(**settings), Path(out) / name)
            from lmforge import load

            lm = load(Path(out) / name)
            samples[name] = lm.generate("ROMEO:\n", max_new_tokens=150, do_sample=True, truncate="left",
                                        temperature=0.8, seed=1).text  # fmt: skip
        last = result.evaluations[-1]
        tokens_per_s = args.steps * 12 * 64 / result.train_seconds
        rows.append(
            (name, lm.model.num_parameters(), tokens_per_s, last["val_loss"], last["val_bpc"])
        )

    print(
        f"\ntiny Shakespeare, characters, {args.steps} steps of 12 x 64 tokens, {args.threads} threads\n"
    )
    print("| model | parameters | train tokens/s | val loss | bits/char |")
    print("|---|---:|---:|---:|---:|")
    for name, params, speed, loss, bpc in rows:
        print(f"| {name} | {params:,} | {speed:,.0f} | {loss:.4f} | {bpc:.4f} |")
    for name, text in samples.items():
        print(f"\n**{name}** sample:\n```\nROMEO:\n{text}\n```")


if __name__ == "__main__":
    main()
