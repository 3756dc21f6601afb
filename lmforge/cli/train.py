"""`lmforge train` and `lmforge finetune`.

Every `TrainConfig` setting is also a flag (`--block-size`, `--lr`, ...), generated from the
dataclass so the two never drift apart; flags override a `--config` file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from lmforge.errors import ConfigError

# Settings with a dedicated flag or chosen by the verb itself.
_MANUAL = {"data", "arch", "tokenizer", "init_from", "lora_rank", "merge_lora"}


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    from lmforge.training.config import KIND_DEFAULTS, TrainConfig

    group = parser.add_argument_group("settings (see TrainConfig; default in brackets)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in _MANUAL:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in KIND_DEFAULTS:
            default = "{}; translation: {}".format(*KIND_DEFAULTS[f.name])
        kind = str(f.type).split("|")[0].strip()  # "int | None" -> "int"
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=f"[{default}]")
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif kind.startswith("list"):
            group.add_argument(flag, nargs="+", **common)
        else:
            group.add_argument(flag, type={"int": int, "float": float, "str": str}[kind], **common)


def _settings(args: argparse.Namespace, **fixed) -> dict:
    from lmforge.training.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and k not in _MANUAL}
    values.update({k: v for k, v in fixed.items() if v is not None})
    return values


def _config(args: argparse.Namespace, **fixed):
    from lmforge.training.config import TrainConfig

    values = _settings(args, **fixed)
    if args.config:
        return TrainConfig.from_file(args.config, **values)
    return TrainConfig.from_dict(values, "command line")


def _report(result, config) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one process reports
        return
    last = result.evaluations[-1] if result.evaluations else {}
    parts = [f"step {result.step}"]
    if "val_bpc" in last:
        parts.append(
            f"val loss {last['val_loss']:.4f} (ppl {last['val_ppl']:.2f}, "
            f"{last['val_bpc']:.3f} bits/char, {last['val_bpb']:.3f} bits/byte)"
        )
    elif "val_loss" in last:
        parts.append(f"val loss {last['val_loss']:.4f} (ppl {last['val_ppl']:.2f})")
    if "val_bleu" in last:
        parts.append(f"val BLEU {last['val_bleu']:.2f}, chrF {last['val_chrf']:.2f}")
    if result.best_val_loss is not None:
        parts.append(f"best val loss {result.best_val_loss:.4f}")
    parts.append(f"{result.ms_per_step:.1f} ms/step")
    print("; ".join(parts))
    verb = "translate" if config.arch.startswith("seq2seq") else "generate"
    if config.task == "classification":
        verb = "classify predict"
    print(f"run written to {result.out}; try: lmforge {verb} --model {result.out}")


def cmd_train(args: argparse.Namespace) -> int:
    from lmforge.training import train

    fixed = dict(data=args.data, arch=args.arch, tokenizer=args.tokenizer)
    config = _config(args, **fixed)
    given = set(_settings(args, **fixed))  # a resumed run changes only what was asked for
    _report(train(config, args.out, resume=args.resume, changes=given), config)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from lmforge.training import train

    fixed = dict(
        data=args.data,
        init_from=args.model,
        tokenizer=args.model,
        arch="gpt",
        lora_rank=args.lora_rank if args.lora else 0,
        merge_lora=args.merge,
    )
    if args.merge and not args.lora:
        raise ConfigError("--merge applies to --lora fine-tuning (full fine-tuning has no adapter)")
    given = set(_settings(args, **fixed)) - {"lora_rank", "merge_lora", "arch", "tokenizer"}
    from lmforge.training.config import finetune_defaults

    for name, value in finetune_defaults(args.lora, getattr(args, "task", "lm")).items():
        if not hasattr(args, name):
            setattr(args, name, value)
    config = _config(args, **fixed)
    _report(train(config, args.out, resume=args.resume, changes=given), config)
    return 0


def add_parsers(verbs) -> None:
    from lmforge.models.presets import ARCHITECTURES

    train = verbs.add_parser(
        "train", help="train a language model on your text, or a translation model on pairs"
    )
    train.add_argument("--arch", choices=ARCHITECTURES, help="[gpt]; seq2seq* translate")
    train.add_argument(
        "--data",
        "--source",
        dest="data",
        help="text file, directory, glob, .jsonl, or [shakespeare]; seq2seq: the source side "
        "(with --target), or a .tsv/.jsonl of pairs",
    )
    train.add_argument(
        "--tokenizer", help="[char] (seq2seq: [bpe]), word, bpe, or a pretrained model's"
    )
    train.add_argument("--out", required=True, type=Path, help="run directory (runs/NAME)")
    train.add_argument("--config", help="YAML or JSON file of settings (flags win)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_setting_flags(train)
    train.set_defaults(func=cmd_train)

    finetune = verbs.add_parser("finetune", help="fine-tune a pretrained model (full or LoRA)")
    finetune.add_argument("--model", "-m", required=True, help="known name, GGUF file or directory")
    finetune.add_argument("--data", required=True, help="text file, directory, glob or .jsonl")
    finetune.add_argument("--out", required=True, type=Path)
    finetune.add_argument("--lora", action="store_true", help="train low-rank adapters only")
    finetune.add_argument("--lora-rank", type=int, default=8)
    finetune.add_argument(
        "--merge", action="store_true", help="save the merged model, not the adapter"
    )
    finetune.add_argument("--config", help="YAML or JSON file of settings (flags win)")
    finetune.add_argument("--resume", action="store_true")
    _add_setting_flags(finetune)
    finetune.set_defaults(func=cmd_finetune)
