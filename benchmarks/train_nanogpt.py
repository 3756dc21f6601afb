"""nanoGPT's CPU configuration on tiny Shakespeare: lmforge's trainer against the same model and
loop written with transformers' GPT2LMHeadModel, measured in the same run.

Setting (nanoGPT README, "I only have a macbook"): characters, first 90% train / last 10%
validation, 4 layers, 4 heads, n_embd 128, block 64, batch 12, lr 1e-3 with 100 warmup steps and
cosine decay to 1e-4 over 2000 iterations, AdamW beta2 0.99, weight decay 0.1, dropout 0, gradient
clip 1.0. nanoGPT reports validation loss 1.88 after 2000 iterations.
Targets: our validation loss <= 1.88; our ms/iteration <= 0.8x the transformers loop.

nanoGPT trains this model without biases (its `bias=False` default); GPT2LMHeadModel always has
them. So lmforge runs twice: the nanoGPT model (no biases; the loss target) and the GPT-2 model
(biases; the same model as the peer, for the speed ratio).

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
from lmforge.evaluation.perplexity import score_chunks
from lmforge.tokenizers.train import train_char_tokenizer
from lmforge.training.config import TrainConfig
from lmforge.training.schedule import learning_rate
from lmforge.training.trainer import parameter_groups, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def nanogpt_config(steps: int, bias: bool = False, seed: int = 1337) -> TrainConfig:
    return TrainConfig(
        data=str(DATA), tokenizer="char", byte_fallback=False, val_fraction=0.1,
        test_fraction=0.0, arch="gpt", family="gpt2", n_layer=4, n_head=4, n_embd=128,
        block_size=64, batch_size=12, steps=steps, lr=1e-3, min_lr=1e-4, warmup=100,
        schedule="cosine", beta2=0.99, dropout=0.0, weight_decay=0.1, grad_clip=1.0,
        eval_interval=steps, log_interval=50, bias=bias, seed=seed,
    )  # fmt: skip


def transformers_loop(config: TrainConfig, splits, tokenizer) -> tuple[float, float, float, int]:
    """The same model, data, optimizer and schedule with GPT2LMHeadModel; (ms/iter, val loss,
    nanoGPT-style estimate, parameters)."""
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

    model.eval()
    score = score_chunks(Wrapped(model), splits.val, tokenizer, config.block_size)
    estimate = nanogpt_estimate(Wrapped(model), splits.val, config.block_size, config.batch_size, 0)
    params = sum(p.numel() for p in model.parameters())
    return 1000 * seconds / config.steps, score.loss, estimate, params


def nanogpt_estimate(model, val, block_size: int, batch_size: int, seed: int) -> float:
    """nanoGPT's `estimate_loss`: the mean loss of 20 random validation batches (the protocol
    behind its README's 1.88; noisier than scoring all of the validation text)."""
    batches = RandomWindows(val, block_size, batch_size, seed)
    losses = []
    with torch.inference_mode():
        for _ in range(20):
            x, y, _ = batches.next()
            logits, _ = model(x)
            losses.append(float(F.cross_entropy(logits.flatten(0, 1), y.flatten())))
    return sum(losses) / len(losses)


def run_lmforge(config: TrainConfig, splits):
    """Train with lmforge's trainer; (result, parameters, nanoGPT-style estimate, a sample)."""
    from lmforge import load
    from lmforge.training.trainer import build_model

    with tempfile.TemporaryDirectory() as out:
        result = train(config, Path(out) / "run")
        lm = load(Path(out) / "run")
        sample = lm.generate("\n", max_new_tokens=200, do_sample=True, temperature=0.8, seed=1)
        estimate = nanogpt_estimate(lm.model, splits.val, config.block_size, config.batch_size, 0)
    parameters = build_model(config, lm.tokenizer).num_parameters()  # as trained (no zero biases)
    return result, parameters, estimate, sample.text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = train_char_tokenizer([DATA.read_text()], byte_fallback=False)
    splits = split_tokens(tokenize_corpus(Corpus(str(DATA)), tokenizer), 0.1, 0.0)
    nano, nano_params, nano_est, sample = run_lmforge(
        nanogpt_config(args.steps, False, args.seed), splits
    )
    gpt2, gpt2_params, gpt2_est, _ = run_lmforge(
        nanogpt_config(args.steps, True, args.seed), splits
    )
    peer_ms, peer_val, peer_est, peer_params = transformers_loop(
        nanogpt_config(args.steps, True, args.seed), splits, tokenizer
    )

    columns = [
        ("lmforge nanoGPT", nano.ms_per_step, nano.evaluations[-1]["val_loss"], nano_params),
        ("lmforge GPT-2", gpt2.ms_per_step, gpt2.evaluations[-1]["val_loss"], gpt2_params),
        ("transformers", peer_ms, peer_val, peer_params),
    ]
    print(f"\nnanoGPT CPU config, tiny Shakespeare (chars, vocab {tokenizer.vocab_size}), "
          f"{args.steps} iterations, seed {args.seed}, {args.threads} threads")  # fmt: skip
    print(f"{'':28}" + "".join(f"{name:>17}" for name, *_ in columns))
    print(f"{'biases':28}{'no':>17}{'yes':>17}{'yes':>17}")
    print(f"{'ms / iteration':28}" + "".join(f"{ms:>17.2f}" for _, ms, _, _ in columns))
    print(f"{'  ratio to transformers':28}" + "".join(f"{ms / peer_ms:>16.2f}x" for _, ms, _, _ in columns)
          + "   (target <= 0.80x)")  # fmt: skip
    print(f"{'validation loss (all 10%)':28}" + "".join(f"{v:>17.4f}" for _, _, v, _ in columns)
          + "   (nanoGPT README: 1.88; target <= 1.88)")  # fmt: skip
    estimates = (nano_est, gpt2_est, peer_est)
    print(f"{'  nanoGPT estimate (20 b.)':28}" + "".join(f"{v:>17.4f}" for v in estimates))
    print(
        f"{'bits per character':28}"
        + "".join(f"{v / math.log(2):>17.4f}" for _, _, v, _ in columns)
    )
    print(f"{'parameters':28}" + "".join(f"{p:>17,}" for *_, p in columns))
    print(f"\nsample of the nanoGPT model (temperature 0.8):\n{sample}")


if __name__ == "__main__":
    main()
