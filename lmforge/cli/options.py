"""Flags several verbs share: which model and how to load it, and every decoding option, the
latter generated from `GenerationConfig`'s own fields so the CLI can never drift from them."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig, cli_flags

DEFAULT_PROMPT = "Once upon a time"
_TYPES = {"int": int, "float": float, "str": str}


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        "-m",
        default=None,
        help="known name, GGUF file or HF directory (default: smollm2-135m-instruct)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="weight dtype, unquantised (default: float32, or what --quantize auto picks)",
    )
    add_quantize_flags(parser)
    add_compile_flag(parser)
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="say on stderr what was loaded and in what precision (and why)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the model runs: cpu (default), cuda, cuda:N, mps, or auto (a CUDA GPU when "
        "PyTorch sees one)",
    )


def add_compile_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compile",
        action="store_const",
        const=True,
        default="auto",
        help="compile the decode step with AOTInductor (GPT models): a layout not compiled yet "
        "compiles in a background process (about a minute) while decoding goes on eagerly. By "
        "default, layouts already compiled (`lmforge compile`, an earlier --compile) are used",
    )
    parser.add_argument(
        "--no-compile",
        dest="compile",
        action="store_const",
        const=False,
        help="decode eagerly, even where a compiled step is cached",
    )


def add_quantize_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quantize",
        "-q",
        default="auto",
        choices=["auto", "none", "bf16", "int8", "int4"],
        help="weight-only quantisation (int8/int4 compute in bfloat16; int4 is the fastest); "
        "auto (default) keeps the checkpoint's precision: a Q4 GGUF runs int4, Q5-Q8 int8, "
        "F16 bf16; none is float32",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=32,
        help="int4: input columns per scale (32, 64, 128, 256)",
    )


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `GenerationConfig` option that has one, plus --draft-model."""
    groups = {
        "decoding": parser.add_argument_group("decoding"),
        "speculative": parser.add_argument_group(
            "speculative decoding (greedy; same output, fewer passes)"
        ),
        "structured": parser.add_argument_group(
            "structured output (every token checked against the constraint; give one)"
        ),
    }
    for f in dataclasses.fields(GenerationConfig):
        flags = cli_flags(f)
        if not flags:
            continue
        meta = f.metadata
        group = groups[meta.get("group", "decoding")]
        common: dict[str, Any] = {"dest": meta.get("dest", f.name), "help": meta["help"]}
        kind = meta.get("cli", "value")
        if kind in ("true", "false"):
            group.add_argument(*flags, action="store_true", **common)
        elif kind == "append":
            group.add_argument(
                *flags, action="append", default=[], metavar=meta.get("metavar"), **common
            )
        elif "choices" in meta:
            group.add_argument(*flags, choices=meta["choices"], **common)
        else:
            kind_name = "str" if "parse" in meta else str(f.type).split("|")[0].strip()
            group.add_argument(
                *flags, type=_TYPES[kind_name], metavar=meta.get("metavar"), **common
            )
    groups["speculative"].add_argument(
        "--draft-model", help="a smaller model with the same tokenizer drafts tokens"
    )


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options given on the command line, as `GenerationConfig` names them."""
    options: dict[str, Any] = {}
    for f in dataclasses.fields(GenerationConfig):
        if not cli_flags(f):
            continue
        meta = f.metadata
        value = getattr(args, meta.get("dest", f.name))
        kind, parse = meta.get("cli", "value"), meta.get("parse")
        if kind == "true":
            value = True if value else None
        elif kind == "false":
            value = False if value else None
        elif kind == "append":
            items = [parse(v) for v in value] if parse else value
            value = (dict(items) if f.name == "logit_bias" else items) or None
        elif value is not None and parse:
            value = parse(value)
        if value is not None:
            options[f.name] = value
    return options


def check_options(args: argparse.Namespace, options: dict[str, Any]) -> None:
    """Reject bad options before spending seconds loading a model."""
    config = GenerationConfig.from_options(**options)
    if args.draft_model is not None:
        config.check_speculative("--draft-model")


def load_model(args: argparse.Namespace, name: str | None = None):
    """The model of --model (or `name`), loaded as the flags say."""
    import sys

    from lmforge.api import load
    from lmforge.checkpoints import DEFAULT_MODEL

    lm = load(
        name or args.model or DEFAULT_MODEL,
        dtype=getattr(args, "dtype", None),  # `info` and `bench` have no --dtype
        quantize=args.quantize,
        group_size=args.group_size,
        compile=getattr(args, "compile", "auto") if name is None else False,  # a draft: eager
        device=getattr(args, "device", "cpu"),
    )
    if getattr(args, "verbose", False):
        print(f"lmforge: loaded {lm.source} in {lm.precision}", file=sys.stderr)
    return lm


def with_draft(args: argparse.Namespace, options: dict[str, Any]) -> dict[str, Any]:
    """Load --draft-model (quantised like the main model) into the options."""
    if args.draft_model is None:
        return options
    return {**options, "draft_model": load_model(args, args.draft_model)}


def read_prompt(args: argparse.Namespace) -> str:
    """The prompt argument, or --prompt-file's UTF-8 text, or the default prompt."""
    if args.prompt_file is None:
        return DEFAULT_PROMPT if args.prompt is None else args.prompt
    if args.prompt is not None:
        raise ConfigError("give the prompt as an argument or with --prompt-file, not both")
    path = Path(args.prompt_file)
    if not path.is_file():
        raise ConfigError(f"--prompt-file {path}: no such file")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"--prompt-file {path}: invalid UTF-8 at byte {exc.start} ({data[exc.start : exc.start + 4]!r})"
        ) from None
