"""nanoGPT's CPU configuration on tiny Shakespeare: lmforge's trainer against the same model and
loop written with transformers' GPT2LMHeadModel, measured in the same run.

Setting (nanoGPT README, "I only have a macbook"): characters, first 90% train / last 10%
validation, 4 layers, 4 heads, n_embd 128, block 64, batch 12, lr 1e-3 with 100 warmup steps and
cosine decay to 1e-4 over 2000 iterations, AdamW beta2 0.99, weight decay 0.1, dropout 0, gradient
clip 1.0. nanoGPT reports validation loss 1.88 after 2000 iterations.
Targets: our validation loss <= 1.88; our ms/iteration <= 0.8x the transformers loop.

Columns: nanoGPT trains this model without biases (its `bias=False` default), GPT2LMHeadModel
always has them. So lmforge trains the nanoGPT model (GPT-2 blocks, no biases) and the GPT-2
model (biases; the peer's very model, for the speed ratio), the latter once eager and once with
the trainer's `compile=True` (`lmforge train --compile`). Then the same configuration with
lmforge's Llama-family blocks (`--family llama`: RMSNorm, SwiGLU of width 8/3 d, rotary
positions instead of a learned table; 812,544 parameters against 810,112), eager and compiled,
beside the same model in transformers (LlamaForCausalLM). Each column's time ratio is to the
transformers loop of its own blocks, whose model is built from the config.json lmforge's bundle
export writes. The compiled columns start from an empty compiler cache, so their first
iteration shows a first run's compile; later runs find it cached.

    python benchmarks/train_nanogpt.py [--steps 2000] [--seeds 1337,1,2] [--threads 2] [--turn 25]
        [--columns nanogpt,gpt2,gpt2-compiled,transformers,llama,llama-compiled,transformers-llama]

Each column trains in a fresh process, so nothing process-wide (lmforge's allocator setting,
thread pools, memory a column left behind) carries over to another. The processes take turns of
`--turn` iterations, round-robin, the others waiting idle: a shared machine has slow stretches
of a minute or more (the same code then runs ~30% slower), and taking turns spreads them over
every column alike instead of over whichever column ran then. Mean and median iterations are
both printed. With several seeds a summary gives each column's validation loss and time ratio
over the seeds. The loss moves from seed to seed (9 seeds: 1.899-1.909 without biases,
1.883-1.911 with), and nanoGPT's 20-batch estimate of one model's loss (the "nanoGPT estimate"
row; its README's 1.88 is one) has a standard deviation of 0.014 from draw to draw. nanoGPT's own
code, run on this machine with seeds 1337 and 1-5, averages 1.906 on all of the validation split
(1.891-1.920); its estimate at its default seed 1337 is 1.8857.
With Llama blocks the same configuration ends far lower: 1.654-1.663 over seeds 1337, 1 and 2,
and 1.650-1.667 for transformers' LlamaForCausalLM in the same loop.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import os
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.data.batches import RandomWindows
from lmforge.data.corpus import Corpus
from lmforge.data.tokens import split_tokens, tokenize_corpus
from lmforge.evaluation.perplexity import score_chunks
from lmforge.tokenizers.train import train_char_tokenizer
from lmforge.training import train
from lmforge.training.build import parameter_groups
from lmforge.training.config import TrainConfig
from lmforge.training.schedule import learning_rate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"


def nanogpt_config(
    steps: int, bias: bool = False, seed: int = 1337, family: str = "gpt2"
) -> TrainConfig:
    return TrainConfig(
        data=str(DATA), tokenizer="char", byte_fallback=False, val_fraction=0.1,
        test_fraction=0.0, arch="gpt", family=family, n_layer=4, n_head=4, n_embd=128,
        block_size=64, batch_size=12, steps=steps, lr=1e-3, min_lr=1e-4, warmup=100,
        schedule="cosine", beta2=0.99, dropout=0.0, weight_decay=0.1, grad_clip=1.0,
        eval_interval=steps, log_interval=50, bias=bias, seed=seed,
    )  # fmt: skip


def transformers_config(config: TrainConfig, tokenizer):
    """The config of the transformers model (GPT2LMHeadModel or LlamaForCausalLM) that computes
    what lmforge's model of `config` does: the config.json lmforge's bundle export writes."""
    from transformers import AutoConfig

    from lmforge.checkpoints.hf import hf_config
    from lmforge.training.build import build_model

    ours = build_model(config, tokenizer).config
    return AutoConfig.for_model(**hf_config(ours, config.family, tokenizer))


def transformers_loop(
    config: TrainConfig, splits, tokenizer, on_step
) -> tuple[list, float, float, int]:
    """The same model, data, optimizer and schedule in transformers; (seconds of each
    iteration, val loss, nanoGPT-style estimate, parameters)."""
    from transformers import AutoModelForCausalLM

    architecture = transformers_config(config, tokenizer)
    torch.manual_seed(config.seed)
    model = AutoModelForCausalLM.from_config(architecture).train()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, config.beta2)
    )
    batches = RandomWindows(splits.train, config.block_size, config.batch_size, config.seed)
    seconds = []
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
        value = loss.item()
        seconds.append(time.perf_counter() - started)
        on_step(step + 1, value)

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
    return seconds, score.loss, estimate, params


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


def run_lmforge(config: TrainConfig, splits, on_step):
    """Train with lmforge's trainer; (result, parameters, nanoGPT-style estimate, a sample)."""
    from lmforge import load
    from lmforge.training.build import build_model

    with tempfile.TemporaryDirectory() as out:
        result = train(config, Path(out) / "run", on_step=on_step)
        lm = load(Path(out) / "run")
        sample = lm.generate("\n", max_new_tokens=200, do_sample=True, temperature=0.8, seed=1)
        estimate = nanogpt_estimate(lm.model, splits.val, config.block_size, config.batch_size, 0)
    parameters = build_model(config, lm.tokenizer).num_parameters()  # as trained (no zero biases)
    return result, parameters, estimate, sample.text


@dataclass(frozen=True)
class Column:
    key: str  # its name in --columns
    name: str
    family: str  # "gpt2" or "llama": which blocks, and which transformers loop is its peer
    bias: bool
    compile: bool = False
    peer: bool = False  # a transformers loop


COLUMNS = (
    Column("nanogpt", "lmforge nanoGPT", "gpt2", bias=False),
    Column("gpt2", "lmforge GPT-2", "gpt2", bias=True),
    Column("gpt2-compiled", "GPT-2 compiled", "gpt2", bias=True, compile=True),
    Column("transformers", "transformers GPT-2", "gpt2", bias=True, peer=True),
    Column("llama", "lmforge Llama", "llama", bias=False),
    Column("llama-compiled", "Llama compiled", "llama", bias=False, compile=True),
    Column("transformers-llama", "transformers Llama", "llama", bias=False, peer=True),
)


def peer_of(column: Column) -> Column:
    """The transformers loop that trains the same model as `column`."""
    return next(c for c in COLUMNS if c.peer and c.family == column.family)


def characters():
    """nanoGPT's data: the character tokenizer and the 90/10 split of tiny Shakespeare."""
    tokenizer = train_char_tokenizer([DATA.read_text()], byte_fallback=False)
    return tokenizer, split_tokens(tokenize_corpus(Corpus(str(DATA)), tokenizer), 0.1, 0.0)


def run_column(column: Column, seed: int, steps: int, threads: int, on_step) -> dict:
    """Train one column with one seed (in the process that calls it); `on_step(step, loss)`
    runs after each step, outside its timing."""
    torch.set_num_threads(threads)
    tokenizer, splits = characters()
    config = nanogpt_config(steps, column.bias, seed, column.family)
    config = dataclasses.replace(config, compile=column.compile)
    if column.peer:
        seconds, val, estimate, params = transformers_loop(config, splits, tokenizer, on_step)
        sample = None
    else:
        result, params, estimate, sample = run_lmforge(config, splits, on_step)
        seconds, val = result.step_seconds, result.evaluations[-1]["val_loss"]
    ms = [1000 * s for s in seconds[1:]]  # the first step holds a compile, if any
    return dict(
        ms=statistics.fmean(ms), median_ms=statistics.median(ms), first_s=seconds[0],
        total_s=sum(seconds), val=val, estimate=estimate, params=params, sample=sample,
    )  # fmt: skip


def column_worker(connection, column: Column, seed: int, steps: int, threads: int, turn: int):
    """A column's process: train only while it holds the turn, handing it back every `turn`
    steps; end by sending the result (or the error, as text)."""

    def take_turns(step: int, loss: float) -> None:
        if step % turn == 0 and step < steps:
            connection.send("turn")
            connection.recv()

    connection.recv()  # the first turn
    # A cold compiler cache, so the compiled column's first step shows a user's first compile.
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-inductor-") as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            connection.send(run_column(column, seed, steps, threads, take_turns))
        except Exception:  # noqa: BLE001 - reported by the parent, which stops the benchmark
            connection.send(traceback.format_exc())


def run_seed(seed: int, steps: int, threads: int, order: list[Column], turn: int) -> dict:
    """Train the columns with one seed, each in a fresh process, taking turns of `turn` steps
    round-robin: every column's steps are spread over the same minutes, so a slow stretch of the
    machine slows them all alike instead of landing on whichever column ran then."""
    spawn = multiprocessing.get_context("spawn")
    running = []
    for column in order:
        parent, child = spawn.Pipe()
        process = spawn.Process(
            target=column_worker, args=(child, column, seed, steps, threads, turn), daemon=True
        )
        process.start()
        running.append((column, parent, process))
    results = {}
    while running:
        for entry in list(running):
            column, connection, process = entry
            connection.send("go")
            message = connection.recv()
            if message == "turn":
                continue
            running.remove(entry)
            process.join()
            if isinstance(message, str):
                raise SystemExit(f"column {column.name!r} failed:\n{message}")
            results[column.name] = message
    return results


def print_seed(seed: int, results: dict[str, dict], columns: list[Column]) -> None:
    rows = [results[column.name] for column in columns]
    peers = [results[peer_of(column).name] for column in columns]
    width = 21
    cells = lambda values: "".join(f"{value:>{width}}" for value in values)  # noqa: E731
    pairs = list(zip(rows, peers, strict=True))
    ratios = lambda key: cells(f"{r[key] / p[key]:.3f}x" for r, p in pairs)  # noqa: E731
    print(f"\nseed {seed}")
    print(f"{'':28}" + cells(column.name for column in columns))
    print(f"{'blocks':28}" + cells(
        ("GPT-2" if c.family == "gpt2" else "Llama") + ("" if c.bias else ", no bias")
        for c in columns
    ))  # fmt: skip
    print(f"{'ms / iteration, mean':28}" + cells(f"{r['ms']:.2f}" for r in rows))
    print(f"{'  ratio to transformers':28}" + ratios("ms") + "   (same blocks; target <= 0.80x)")
    print(f"{'ms / iteration, median':28}" + cells(f"{r['median_ms']:.2f}" for r in rows))
    print(f"{'  ratio to transformers':28}" + ratios("median_ms"))
    print(f"{'first iteration (s)':28}" + cells(f"{r['first_s']:.2f}" for r in rows)
          + "   (holds the compile, cold cache)")  # fmt: skip
    print(f"{'all iterations (s)':28}" + cells(f"{r['total_s']:.1f}" for r in rows))
    print(f"{'validation loss (all 10%)':28}" + cells(f"{r['val']:.4f}" for r in rows)
          + "   (nanoGPT README: 1.88; target <= 1.88)")  # fmt: skip
    print(f"{'  nanoGPT estimate (20 b.)':28}" + cells(f"{r['estimate']:.4f}" for r in rows))
    print(f"{'bits per character':28}" + cells(f"{r['val'] / math.log(2):.4f}" for r in rows))
    print(f"{'parameters':28}" + cells(f"{r['params']:,}" for r in rows))


def print_summary(by_seed: dict[int, dict[str, dict]], columns: list[Column]) -> None:
    """Across seeds: each column's validation loss and its time ratio to its transformers peer."""
    width = 23
    print(f"\nover {len(by_seed)} seeds ({', '.join(map(str, by_seed))}): median (min-max)")
    print(f"{'':28}" + "".join(f"{column.name:>{width}}" for column in columns))
    for label, value in (
        ("validation loss", lambda r, p: r["val"]),
        ("ratio to transformers, mean", lambda r, p: r["ms"] / p["ms"]),
        ("  median", lambda r, p: r["median_ms"] / p["median_ms"]),
    ):
        cells = []
        for column in columns:
            peer = peer_of(column).name
            values = [value(results[column.name], results[peer]) for results in by_seed.values()]
            cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"{label:28}" + "".join(f"{cell:>{width}}" for cell in cells))


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected comma-separated integers") from None
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r}: each seed once")
    return seeds


def column_list(text: str) -> list[Column]:
    by_key = {column.key: column for column in COLUMNS}
    keys = text.split(",")
    unknown = [key for key in keys if key not in by_key]
    if unknown or len(set(keys)) != len(keys):
        raise SystemExit(f"--columns {text!r}: expected distinct names from {', '.join(by_key)}")
    chosen = [column for column in COLUMNS if column.key in keys]  # in the table's order
    missing = {peer_of(column).key for column in chosen} - set(keys)
    if missing:
        raise SystemExit(f"--columns {text!r}: the ratios need {', '.join(sorted(missing))} too")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument(
        "--seeds", type=seed_list, default=[1337],
        help="comma-separated; each trains every column (about 12 minutes a seed for all seven)",
    )  # fmt: skip
    parser.add_argument(
        "--columns", type=column_list, default=list(COLUMNS),
        help=f"comma-separated, from {','.join(c.key for c in COLUMNS)} (default: all)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--turn", type=int, default=25, help="iterations a column runs before the next one's turn"
    )
    args = parser.parse_args()
    if args.steps < 1 or args.threads < 1 or args.turn < 1:
        raise SystemExit("--steps, --threads and --turn must be at least 1")
    tokenizer, _ = characters()
    print(f"nanoGPT CPU config, tiny Shakespeare (chars, vocab {tokenizer.vocab_size}), "
          f"{args.steps} iterations, {args.threads} threads")  # fmt: skip
    by_seed = {}
    for index, seed in enumerate(args.seeds):
        shift = index % len(args.columns)  # who goes first in each round, rotated by seed
        order = args.columns[shift:] + args.columns[:shift]
        by_seed[seed] = run_seed(seed, args.steps, args.threads, order, args.turn)
        print_seed(seed, by_seed[seed], args.columns)
    if len(by_seed) > 1:
        print_summary(by_seed, args.columns)
    first = by_seed[args.seeds[0]][args.columns[0].name]["sample"]
    if first is not None:
        print(
            f"\nsample of {args.columns[0].name}, seed {args.seeds[0]} (temperature 0.8):\n{first}"
        )


if __name__ == "__main__":
    main()
