"""Language models put to work, each task against its baselines, measured in one run.

sst2: SST-2 (GLUE sentiment, dev split): the majority class, SmolLM2-135M-Instruct zero-shot and
8-shot (label likelihood through its chat template), SmolLM2 with a classification head trained
with LoRA for at most `--minutes`, and an LSTM trained from scratch on word2vec vectors that
lmforge trains on the SST-2 training sentences. Dev accuracy, macro-F1 and training time.
Published (dev accuracy unless said): DistilBERT full fine-tune 91.3; Kim's CNN 88.1 (test).

dialogsum: DialogSum, SmolLM2 zero-shot against SmolLM2 fine-tuned (SFT, LoRA, at most
`--minutes`) on the dev split's 500 dialogues; ROUGE-1/2/L/Lsum (stemmed) on the test split's
dialogues against their three references.

xsum: 1,000 XSum articles (`--limit` of them): LEAD-1 (each article's first sentence) and
SmolLM2 zero-shot in int4, eager and compiled; ROUGE (stemmed) and summaries per second, batch 8.

    python benchmarks/tasks.py sst2 [--parts majority zero-shot few-shot lora scratch]
    python benchmarks/tasks.py dialogsum [--limit 500] [--minutes 28]
    python benchmarks/tasks.py xsum [--limit 200] [--parts lead int4 int4-compiled]
"""

from __future__ import annotations

import argparse
import csv
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

import lmforge
from lmforge.checkpoints import locate_known
from lmforge.device import bf16_matmul_is_fast
from lmforge.evaluation.classification import classification_scores
from lmforge.training import train
from lmforge.training.config import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SST2 = DATA / "sst2"
NAMES = ["negative", "positive"]  # SST-2's 0 and 1
SST2_PARTS = ["majority", "zero-shot", "few-shot", "lora", "scratch"]
XSUM_PARTS = ["lead", "int4", "int4-compiled"]


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[1] for r in rows[1:]], [int(r[0]) for r in rows[1:]]


def report(
    name: str, predicted: list[int], gold: list[int], seconds: float, note: str = ""
) -> dict:
    scores = classification_scores(predicted, gold, NAMES)
    print(
        f"| {name} | {100 * scores.accuracy:.1f} | {100 * scores.macro_f1:.1f} | "
        f"{seconds / 60:.1f} | {note} |",
        flush=True,
    )
    return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1, "minutes": seconds / 60}


def majority(train_labels, dev_texts, dev_labels) -> None:
    most = max(set(train_labels), key=train_labels.count)
    report("majority class (train)", [most] * len(dev_texts), dev_labels, 0.0)


def by_likelihood(shots: int, train_texts, train_labels, dev_texts, dev_labels) -> None:
    lm = lmforge.load("smollm2-135m-instruct", quantize="none", compile=False)  # as published
    rng = random.Random(0)
    examples = []
    for label in range(len(NAMES)):  # k/2 of each class, short ones, shuffled
        pool = [t for t, y in zip(train_texts, train_labels, strict=True) if y == label]
        pool = [t for t in pool if 8 <= len(t.split()) <= 25]
        examples += [(t, NAMES[label]) for t in rng.sample(pool, shots // 2)]
    rng.shuffle(examples)
    started = time.perf_counter()
    results = lm.classify(dev_texts, labels=NAMES, examples=examples, batch_size=16)
    seconds = time.perf_counter() - started
    predicted = [NAMES.index(r.label) for r in results]
    report(f"SmolLM2-135M-Instruct {shots}-shot", predicted, dev_labels, seconds, "inference time")


def write_split(path: Path, texts: list[str], labels: list[int]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["sentence", "label"])
        writer.writerows([t, NAMES[y]] for t, y in zip(texts, labels, strict=True))
    return path


def train_and_score(name: str, config: TrainConfig, out: Path, dev_texts, dev_labels) -> None:
    print(f"# {name}: {config.to_dict()}", flush=True)
    result = train(config, out)
    lm = lmforge.load(out)
    predicted = [NAMES.index(r.label) for r in lm.classify(dev_texts, batch_size=64)]
    best = max(e.get("val_accuracy", 0) for e in result.evaluations)
    note = f"{result.step} steps; held-out train accuracy {100 * best:.1f} (picks the model)"
    report(name, predicted, dev_labels, result.train_seconds, note)


def smollm_lora(**settings) -> dict:
    """SmolLM2 with rank-16 LoRA on every projection, bf16 autocast where the CPU is fast at it."""
    model = str(locate_known("smollm2-135m-instruct"))
    return dict(
        init_from=model,
        tokenizer=model,
        lora_rank=16,
        lora_alpha=32.0,
        lora_targets=["qkv", "out", "gate_up", "down"],
        weight_decay=0.0,
        precision="bf16" if bf16_matmul_is_fast() else "fp32",
        **settings,
    )


def within(minutes: float, settings: dict, scratch: Path, evaluations: int) -> TrainConfig:
    """A run of at most `minutes` of training (`max_minutes` stops it there, evaluating first),
    its schedule spanning the steps that a timed probe of a dozen steps says fit."""
    shutil.rmtree(scratch / "probe", ignore_errors=True)  # (a probe of an earlier run)
    probe = train(TrainConfig(**settings, steps=12, eval_interval=10**6), scratch / "probe")
    seconds = probe.ms_per_step / 1000
    steps = int(minutes * 60 * 0.9 / seconds)  # (probe batches are a sample of the lengths)
    print(f"# {seconds:.2f} s a step, so {steps} steps in {minutes} minutes", flush=True)
    interval = max(steps // evaluations, 1)
    return TrainConfig(**settings, steps=steps, eval_interval=interval, max_minutes=minutes)


def lora(args, scratch: Path, train_file: Path, dev_texts, dev_labels) -> None:
    settings = smollm_lora(
        task="classification",
        data=str(train_file),
        val_fraction=0.02,
        batch_size=32,
        lr=1e-3,
        min_lr=1e-4,
        warmup=50,
        block_size=64,
        log_interval=50,
    )
    config = within(args.minutes, settings, scratch, evaluations=4)
    train_and_score("SmolLM2-135M + head, LoRA", config, scratch / "lora", dev_texts, dev_labels)


def from_scratch(args, scratch: Path, train_file: Path, train_texts, dev_texts, dev_labels) -> None:
    from lmforge.embeddings.train import train_word2vec

    started = time.perf_counter()
    vectors, _ = train_word2vec(
        [t.lower().split() for t in train_texts], vector_size=100, min_count=2, epochs=5
    )
    vectors.save(scratch / "sst2-w2v.txt")
    print(f"# word2vec: {len(vectors)} words in {time.perf_counter() - started:.0f} s")
    config = TrainConfig(
        task="classification",
        data=str(train_file),
        val_fraction=0.02,
        arch="lstm",
        tokenizer="word",
        lowercase=True,
        min_frequency=2,
        n_embd=100,
        hidden_size=256,
        n_layer=1,
        dropout=0.3,
        tie_embeddings=False,
        embeddings=str(scratch / "sst2-w2v.txt"),
        batch_size=64,
        steps=args.scratch_steps,
        eval_interval=args.scratch_steps // 4,
        lr=2e-3,
        min_lr=1e-4,
        warmup=100,
        weight_decay=0.01,
        log_interval=100,
    )
    train_and_score(
        "LSTM from scratch, word2vec inputs", config, scratch / "lstm", dev_texts, dev_labels
    )


def rouge_row(name: str, lm, documents, references, seconds_trained: float = 0.0) -> None:
    from lmforge.evaluation.metrics import summary_scores

    started = time.perf_counter()
    results = lm.summarize(documents, batch_size=8)
    seconds = time.perf_counter() - started
    s = summary_scores([r.text for r in results], references)
    print(
        f"| {name} | {s.rouge1:.2f} | {s.rouge2:.2f} | {s.rougeL:.2f} | {s.rougeLsum:.2f} | "
        f"{s.mean_words:.1f} ({s.mean_reference_words:.1f}) | {seconds_trained / 60:.1f} | "
        f"{len(documents) / seconds:.2f} |",
        flush=True,
    )


def dialogsum(args) -> None:
    import json

    from lmforge.api import SUMMARY_INSTRUCTION

    def rows(name):
        path = DATA / "dialogsum" / f"dialogsum.{name}.jsonl"
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    dev, test = rows("dev"), rows("test")[: args.limit]
    documents = [r["dialogue"] for r in test]
    references = [[r[f"summary{k}"] for k in (1, 2, 3)] for r in test]
    print(f"DialogSum: {len(dev)} dev dialogues to fine-tune on, {len(test)} test dialogues\n")
    print(
        "| model | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | words (references) | train min "
        "| summaries/s |\n|---|---|---|---|---|---|---|---|"
    )
    name = "smollm2-135m-instruct"
    rouge_row(
        "SmolLM2-135M-Instruct zero-shot",
        lmforge.load(name, quantize="none", compile=False),
        documents,
        references,
    )
    with tempfile.TemporaryDirectory() as temporary:
        scratch = args.out or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        chats = scratch / "dialogsum-dev.jsonl"
        chats.write_text(
            "".join(
                json.dumps(
                    {
                        "messages": [
                            {
                                "role": "user",
                                "content": f"{SUMMARY_INSTRUCTION}\n\n{r['dialogue']}",
                            },
                            {"role": "assistant", "content": r["summary"]},
                        ]
                    }
                )
                + "\n"
                for r in dev
            )
        )
        settings = smollm_lora(
            task="sft",
            data=str(chats),
            batch_size=8,
            lr=1e-3,
            min_lr=1e-4,
            warmup=10,
            block_size=512,
            val_fraction=0.04,
            merge_lora=True,
            log_interval=10,
        )
        config = within(args.minutes, settings, scratch, evaluations=3)
        result = train(config, scratch / "sft")
        rouge_row(
            "SmolLM2 + SFT (LoRA) on dev",
            lmforge.load(scratch / "sft"),
            documents,
            references,
            result.train_seconds,
        )


def xsum(args) -> None:
    import json

    from lmforge.evaluation.metrics import summary_scores

    path = DATA / "xsum-sample" / "xsum_test_1000.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows = rows[: args.limit]
    empty = sum(not r["document"].strip() for r in rows)  # nothing to summarise: left out
    rows = [r for r in rows if r["document"].strip()]
    documents, references = [r["document"] for r in rows], [r["summary"] for r in rows]
    print(f"XSum: {len(rows)} articles ({empty} empty left out)\n")
    print(
        "| model | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-Lsum | words (references) | train min "
        "| summaries/s |\n|---|---|---|---|---|---|---|---|"
    )
    parts = args.parts or XSUM_PARTS
    if "lead" in parts:
        lead = [d.strip().split("\n")[0] for d in documents]
        s = summary_scores(lead, references)
        print(
            f"| LEAD-1 | {s.rouge1:.2f} | {s.rouge2:.2f} | {s.rougeL:.2f} | {s.rougeLsum:.2f} | "
            f"{s.mean_words:.1f} ({s.mean_reference_words:.1f}) | - | - |"
        )
    for compiled in [part == "int4-compiled" for part in parts if part.startswith("int4")]:
        lm = lmforge.load(
            "smollm2-135m-instruct", quantize="int4", compile="now" if compiled else False
        )
        lm.summarize(documents[:8], batch_size=8)  # untimed: a compiled step builds its layout
        name = "SmolLM2-135M-Instruct zero-shot, int4" + (" compiled" if compiled else "")
        rouge_row(name, lm, documents, references)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["sst2", "dialogsum", "xsum"])
    parser.add_argument(
        "--parts", nargs="+", choices=SST2_PARTS + XSUM_PARTS, help="rows to run (default: all)"
    )
    parser.add_argument("--minutes", type=float, default=28.0, help="LoRA training budget")
    parser.add_argument("--scratch-steps", type=int, default=4000)
    parser.add_argument("--limit", type=int, default=500, help="dialogsum, xsum: texts used")
    parser.add_argument("--out", type=Path, help="keep run directories here")
    args = parser.parse_args()
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, bf16 fast: {bf16_matmul_is_fast()}"
    )
    if args.task in ("dialogsum", "xsum"):
        {"dialogsum": dialogsum, "xsum": xsum}[args.task](args)
        return
    args.parts = args.parts or SST2_PARTS
    train_texts, train_labels = read_tsv(SST2 / "train.tsv")
    dev_texts, dev_labels = read_tsv(SST2 / "dev.tsv")
    print(f"SST-2: {len(train_texts)} training texts, {len(dev_texts)} dev texts\n")
    print("| model | dev accuracy | dev macro-F1 | minutes | notes |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as temporary:
        scratch = args.out or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        train_file = write_split(scratch / "train.tsv", train_texts, train_labels)
        if "majority" in args.parts:
            majority(train_labels, dev_texts, dev_labels)
        if "zero-shot" in args.parts:
            by_likelihood(0, train_texts, train_labels, dev_texts, dev_labels)
        if "few-shot" in args.parts:
            by_likelihood(8, train_texts, train_labels, dev_texts, dev_labels)
        if "lora" in args.parts:
            lora(args, scratch, train_file, dev_texts, dev_labels)
        if "scratch" in args.parts:
            from_scratch(args, scratch, train_file, train_texts, dev_texts, dev_labels)
    print("\nPublished: DistilBERT full fine-tune 91.3 (dev); Kim's CNN 88.1 (test split).")


if __name__ == "__main__":
    main()
