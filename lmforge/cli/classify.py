"""`lmforge classify train|eval|predict`: text classification with a trained head, or zero-shot
with a language model and `--labels`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmforge.cli.train import _add_setting_flags, _config, _settings
from lmforge.errors import ConfigError


def _labels(values: list[str] | None) -> list[str] | None:
    """`--labels neg,pos` or `--labels neg pos`."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def cmd_train(args: argparse.Namespace) -> int:
    from lmforge.training import train

    if args.lora and not args.model:
        raise ConfigError("--lora adapts a pretrained model: pass --model")
    fixed = dict(
        task="classification",
        data=args.data,
        arch=args.arch,
        init_from=args.model,
        tokenizer=args.model or args.tokenizer,
        lora_rank=args.lora_rank if args.lora else 0,
    )
    if hasattr(args, "labels"):
        args.labels = _labels(args.labels)
    given = set(_settings(args, **fixed)) - {"task", "lora_rank", "arch", "tokenizer"}
    config = _config(args, **fixed)
    result = train(config, args.out, resume=args.resume, changes=given)
    last = result.evaluations[-1] if result.evaluations else {}
    if "val_accuracy" in last:
        print(
            f"step {result.step}; val accuracy {last['val_accuracy']:.4f}, macro-F1 "
            f"{last['val_macro_f1']:.4f}, loss {last['val_loss']:.4f}; "
            f"{result.ms_per_step:.1f} ms/step"
        )
    print(f"classifier written to {result.out}; try: lmforge classify predict --model {result.out}")
    return 0


def _load(args: argparse.Namespace):
    import lmforge

    lm = lmforge.load(args.model)
    labels = _labels(args.labels)
    if not lm.classifier and labels is None:
        raise ConfigError(
            f"{args.model} is a language model, not a classifier: pass --labels A,B to classify "
            "zero-shot by likelihood"
        )
    return lm, labels


def cmd_eval(args: argparse.Namespace) -> int:
    from lmforge.data.labelled import read_labelled
    from lmforge.evaluation.classification import classification_scores, plot_confusion

    if args.data is None:
        raise ConfigError("--data is needed: a CSV/TSV/JSONL file of texts and labels")
    lm, labels = _load(args)
    names = lm.model.labels if lm.classifier else labels
    data = read_labelled(args.data, args.text_column, args.label_column, names)
    results = lm.classify(data.texts, labels=labels, batch_size=args.batch_size)
    predicted = [names.index(r.label) for r in results]
    scores = classification_scores(predicted, data.labels, names)
    if args.confusion:
        plot_confusion(scores, args.confusion, f"{args.model} on {args.data}")
    report = {"model": args.model, "data": args.data, "texts": len(data), **scores.as_dict()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"accuracy {scores.accuracy:.4f}  macro-F1 {scores.macro_f1:.4f}  ({len(data)} texts)")
    corner = "true \\ predicted"
    width = max(len(corner), *(len(n) for n in names))
    print(f"{corner:<{width}}  " + "  ".join(f"{n:>6}" for n in names))
    for name, row in zip(names, scores.confusion, strict=True):
        print(f"{name:<{width}}  " + "  ".join(f"{c:>6}" for c in row))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lmforge.data.labelled import read_labelled

    lm, labels = _load(args)
    if args.data is None:
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    else:
        texts = read_labelled(args.data, args.text_column, args.label_column, labels, False).texts
    if not texts:
        raise ConfigError("no text to classify (stdin was empty)")
    for start in range(0, len(texts), args.batch_size):
        chunk = texts[start : start + args.batch_size]
        for text, result in zip(
            chunk, lm.classify(chunk, labels, batch_size=args.batch_size), strict=True
        ):
            if args.json:
                print(
                    json.dumps(
                        {
                            "text": text,
                            "label": result.label,
                            "score": result.score,
                            "scores": result.scores,
                        }
                    )
                )
            else:
                print(f"{result.label}\t{result.score:.4f}")
        sys.stdout.flush()
    return 0


def add_parsers(verbs) -> None:
    from lmforge.models.presets import ARCHITECTURES

    classify = verbs.add_parser("classify", help="train, evaluate and run text classifiers")
    tasks = classify.add_subparsers(dest="task_verb", required=True)

    train = tasks.add_parser(
        "train", help="train a classifier from scratch or on a pretrained model"
    )
    train.add_argument("--data", required=True, help="CSV/TSV with a header row, or JSONL")
    train.add_argument("--out", required=True, type=Path, help="run directory")
    train.add_argument(
        "--arch", choices=ARCHITECTURES, default="lstm", help="trunk from scratch [lstm]"
    )
    train.add_argument("--model", "-m", help="a pretrained trunk (known name, GGUF or directory)")
    train.add_argument("--tokenizer", default="word", help="from scratch: [word], char or bpe")
    train.add_argument("--lora", action="store_true", help="train LoRA adapters and the head only")
    train.add_argument("--lora-rank", type=int, default=8)
    train.add_argument("--config", help="YAML or JSON file of settings (flags win)")
    train.add_argument("--resume", action="store_true")
    _add_setting_flags(train)
    train.set_defaults(func=cmd_train)

    for name, func, help_text in (
        ("eval", cmd_eval, "accuracy, macro-F1 and the confusion matrix on labelled data"),
        ("predict", cmd_predict, "one label and its probability per text (file or stdin lines)"),
    ):
        verb = tasks.add_parser(name, help=help_text)
        verb.add_argument(
            "--model", "-m", required=True, help="a classifier, or a language model with --labels"
        )
        verb.add_argument("--data", required=name == "eval", help="CSV/TSV with a header, or JSONL")
        verb.add_argument("--text-column", help="[the one column besides the label's]")
        verb.add_argument("--label-column", default="label")
        verb.add_argument("--labels", nargs="+", help="zero-shot label names (A,B or A B)")
        verb.add_argument("--batch-size", type=int, default=32)
        verb.add_argument("--json", action="store_true", help="JSON output")
        if name == "eval":
            verb.add_argument("--confusion", type=Path, help="write the confusion matrix PNG here")
        verb.set_defaults(func=func)
