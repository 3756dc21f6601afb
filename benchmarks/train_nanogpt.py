"""nanoGPT's CPU configuration on tiny Shakespeare: lmforge's trainer against the same model and
loop written with transformers' GPT2LMHeadModel, measured in the same run.

Setting (nanoGPT README, "I only have a macbook"): characters, first 90% train / last 10%
validation, 4 layers, 4 heads, n_embd 128, block 64, batch 12, lr 1e-3 with 100 warmup steps and
cosine decay to 1e-4 over 2000 iterations, AdamW beta2 0.99, weight decay 0.1, dropout 0, gradient
clip 1.0. nanoGPT reports validation loss 1.88 after 2000 iterations.
Targets: our validation loss <= 1.88; our ms/iteration <= 0.8x the transformers loop.

    python benchmarks/train_nanogpt.py [--steps 2000] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.data.batches import RandomWindows
from lmforge.data.corpus import Corpus
from lmforge.data.tokens import split_tokens, tokenize_corpus
from lmforge.tokenizers.train import train_char_tokenizer
from lmforge.training.config import TrainConfig
from lmforge.training.schedule import learning_rate
from lmforge.training.trainer import evaluate, parameter_groups, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def nanogpt_config(steps: int) -> TrainConfig:
    return TrainConfig(
        data=str(DATA), tokenizer="char", byte_fallback=False, val_fraction=0.1,
        test_fraction=0.0, arch="gpt", family="gpt2", n_layer=4, n_head=4, n_embd=128,
        block_size=64, batch_size=12, steps=steps, lr=1e-3, min_lr=1e-4, warmup=100,
        schedule="cosine", beta2=0.99, dropout=0.0, weight_decay=0.1, grad_clip=1.0,
        eval_interval=steps, log_interval=50,
    )  # fmt: skip


def transformers_loop(config: TrainConfig, splits, tokenizer) -> tuple[float, float, float]:
    """The same model, data, optimizer and schedule with GPT2LMHeadModel; (ms/iter, val loss, params)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=tokenizer.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
            n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, activation_function="gelu", bos_token_id=0, eos_token_id=0,
        )
    ).train()  # fmt: skip
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, config.beta2)
    )
    batches = RandomWindows(splits.train, config.block_size, config.batch_size, config.seed)
    seconds = 0.0
    for step in range(config.steps):
        started = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        x, y, _ = batches.next()
        logits = model(x).logits
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        seconds += time.perf_counter() - started

    class Wrapped(torch.nn.Module):  # our evaluator speaks the (logits, cache) protocol
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids, cache=None):
            return self.inner(ids).logits, None

    score = evaluate(Wrapped(model), splits.val, tokenizer, config.block_size)
    params = sum(p.numel() for p in model.parameters())
    return 1000 * seconds / config.steps, score.loss, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = nanogpt_config(args.steps)

    with tempfile.TemporaryDirectory() as out:
        ours = train(config, Path(out) / "run")
        from lmforge import load

        lm = load(Path(out) / "run")
        sample = lm.generate("\n", max_new_tokens=200, do_sample=True, temperature=0.8, seed=1).text
    tokenizer = train_char_tokenizer([DATA.read_text()], byte_fallback=False)
    splits = split_tokens(tokenize_corpus(Corpus(str(DATA)), tokenizer), 0.1, 0.0)
    peer_ms, peer_val, peer_params = transformers_loop(config, splits, tokenizer)

    val = ours.evaluations[-1]["val_loss"]
    print(f"\nnanoGPT CPU config, tiny Shakespeare (chars, vocab {tokenizer.vocab_size}), "
          f"{args.steps} iterations, {args.threads} threads")  # fmt: skip
    print(f"{'':28}{'lmforge':>12}{'transformers':>14}{'ratio':>8}")
    print(f"{'ms / iteration':28}{ours.ms_per_step:>12.2f}{peer_ms:>14.2f}"
          f"{ours.ms_per_step / peer_ms:>8.2f}x   (target <= 0.80x)")  # fmt: skip
    print(f"{'validation loss (all 10%)':28}{val:>12.4f}{peer_val:>14.4f}"
          f"{'':>8}   (nanoGPT README: 1.88; target <= 1.88)")  # fmt: skip
    print(f"{'bits per character':28}{val / math.log(2):>12.4f}{peer_val / math.log(2):>14.4f}")
    print(f"{'parameters':28}{lm.model.num_parameters():>12,}{peer_params:>14,}")
    print(f"\nsample (temperature 0.8):\n{sample}")


if __name__ == "__main__":
    main()
