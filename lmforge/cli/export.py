"""`lmforge export MODEL --out PATH`: a model as a GGUF file llama.cpp runs, or as a bundle
(a Hugging Face directory for GPT-2, Llama and Gemma 3 models)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmforge.checkpoints.gguf_export import GGUF_TYPES
from lmforge.errors import CheckpointError


def cmd_export(args: argparse.Namespace) -> int:
    import lmforge

    if args.format == "hf":
        from lmforge.checkpoints.bundle import save_bundle
        from lmforge.checkpoints.load import load_checkpoint

        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.force:
            raise CheckpointError(f"{out} exists and is not empty; pass --force to write into it")
        checkpoint = load_checkpoint(args.model)  # float32: a bundle holds unquantised weights
        generation = checkpoint.generation_defaults or None
        save_bundle(checkpoint.model, checkpoint.tokenizer, out, generation)
        print(f"wrote {out} (a bundle of the {type(checkpoint.model).__name__})")
        return 0
    lm = lmforge.load(args.model, compile=False)
    print(f"{lm.source} in {lm.precision}", file=sys.stderr)
    report = lmforge.export_gguf(lm, args.out, type=args.type, force=args.force, name=args.name)
    print(report.summary())
    return 0


def add_parsers(verbs) -> None:
    export = verbs.add_parser(
        "export",
        help="write a model as a GGUF file (llama.cpp, Ollama, LM Studio) or a bundle",
    )
    export.add_argument("model", metavar="MODEL", help="a model name, GGUF file or directory")
    export.add_argument("--out", required=True, help="the file (gguf) or directory (hf) to write")
    export.add_argument(
        "--format",
        choices=("gguf", "hf"),
        default="gguf",
        help="gguf (default; GPT models of the llama and gpt2 families) or hf (a bundle "
        "directory: any model; a Hugging Face checkpoint for GPT-2, Llama and Gemma 3)",
    )
    export.add_argument(
        "--type",
        choices=GGUF_TYPES,
        default="auto",
        help="ggml type of the weights (gguf; default auto: a GGUF model's own type, else its "
        "precision's: float32 f32, bf16 bf16, int8 q8_0, int4 q4_1). Norms and biases stay f32; "
        "with q4_0/q4_1 the embedding and output head are q8_0, as llama.cpp's Q4 files",
    )
    export.add_argument("--name", default=None, help="general.name (default: the source's)")
    export.add_argument("--force", action="store_true", help="replace an existing file")
    export.set_defaults(func=cmd_export)
