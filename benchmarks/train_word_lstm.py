"""PyTorch word_language_model's default LSTM on word-level Shakespeare, trained by lmforge.

Model and optimisation as `python main.py --cuda --epochs 6` there: embedding 200, 2 x 200 LSTM,
tied weights, dropout 0.2, bptt 35, batch 20, plain SGD at lr 20 divided by 4 whenever an epoch
does not improve validation loss, gradient clip 0.25. The corpus
is the `shakespeare` package's complete works, lower-cased, split on whitespace, one <eos> per
line, a 10,000-word vocabulary (the rest <unk>, as in Penn Treebank). Prints validation
perplexity and seconds per epoch.

    python benchmarks/train_word_lstm.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from lmforge.data.batches import Streams
from lmforge.data.corpus import Corpus
from lmforge.data.tokens import split_tokens, tokenize_corpus
from lmforge.tokenizers.train import train_word_tokenizer
from lmforge.training import train
from lmforge.training.config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    settings = dict(
        data="shakespeare", tokenizer="word", lowercase=True, max_vocab=10_000,
        val_fraction=0.05, test_fraction=0.05, arch="lstm", n_embd=200, hidden_size=200,
        n_layer=2, dropout=0.2, tie_embeddings=True, block_size=35, batch_size=20,
        optimizer="sgd", lr=20.0, min_lr=0.0, schedule="plateau", warmup=0, grad_clip=0.25,
        weight_decay=0.0, log_interval=200,
    )  # fmt: skip
    tokenizer = train_word_tokenizer(
        Corpus("shakespeare").texts(), lowercase=True, max_vocab=10_000
    )
    tokens = tokenize_corpus(Corpus("shakespeare"), tokenizer)
    splits = split_tokens(tokens, 0.05, 0.05)
    per_epoch = Streams(splits.train, 35, 20).steps_per_epoch
    config = TrainConfig(**settings, steps=per_epoch * args.epochs, eval_interval=per_epoch)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = train(config, Path(out) / "run")
        from lmforge import load

        lm = load(Path(out) / "run")
        sample = lm.generate("the king", max_new_tokens=40, do_sample=True, temperature=0.8,
                             seed=1).text  # fmt: skip
    total = time.perf_counter() - started

    print(f"\nword_language_model LSTM (2 x 200, tied) on word-level Shakespeare: "
          f"{len(splits.train):,} training tokens, vocabulary {tokenizer.vocab_size:,}, "
          f"{per_epoch} steps per epoch, {args.threads} threads")  # fmt: skip
    print(f"{'epoch':>6}{'val loss':>10}{'val ppl':>10}{'train s/epoch':>15}")
    for epoch, record in enumerate(result.evaluations, 1):
        seconds = per_epoch * config.batch_size * config.block_size / record["tokens_per_s"]
        print(f"{epoch:>6}{record['val_loss']:>10.3f}{math.exp(record['val_loss']):>10.1f}"
              f"{seconds:>15.1f}")  # fmt: skip
    print(
        f"mean training time per epoch {result.train_seconds / args.epochs:.1f} s "
        f"({result.ms_per_step:.1f} ms/step); wall time with evaluation {total:.0f} s"
    )
    print(f"\nsample: {sample}")


if __name__ == "__main__":
    main()
