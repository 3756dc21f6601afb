"""`lmforge summarize`: a document from stdin (or `--input`), or one summary per JSONL row; and
the ROUGE evaluation `lmforge eval --task summarization` runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmforge.cli.options import add_generation_flags, add_model_flags, generation_options
from lmforge.errors import ConfigError


def read_documents(path: str, field: str) -> list[dict]:
    """Rows of a JSONL file that hold the text in `field`."""
    from lmforge.data.files import jsonl_objects

    rows = []
    for number, row in jsonl_objects(Path(path)):
        if not isinstance(row.get(field), str):
            raise ConfigError(f"{path}:{number}: no text field {field!r}")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{path}: no rows")
    return rows


def cmd_summarize(args: argparse.Namespace) -> int:
    from lmforge.cli.options import load_model

    options = generation_options(args)
    lm = load_model(args)
    instruction = {"instruction": args.instruction} if args.instruction else {}
    if args.input is None or not args.input.endswith(".jsonl"):
        text = sys.stdin.read() if args.input is None else Path(args.input).read_text("utf-8")
        if not text.strip():
            raise ConfigError("nothing to summarise: the document is empty")
        print(lm.summarize(text, **instruction, **options).text)
        return 0
    rows = read_documents(args.input, args.field)
    for start in range(0, len(rows), args.batch_size):
        chunk = [row[args.field] for row in rows[start : start + args.batch_size]]
        for result in lm.summarize(chunk, batch_size=args.batch_size, **instruction, **options):
            line = " ".join(result.text.split())
            print(json.dumps({"summary": line}) if args.json else line, flush=True)
    return 0


def summarization_report(args: argparse.Namespace) -> dict:
    """ROUGE of the model's summaries of `--data` (JSONL: `--field` the text, `--reference-field`
    one or more reference fields) with length statistics and summaries per second."""
    import time

    import lmforge
    from lmforge.evaluation.metrics import summary_scores

    rows = read_documents(args.data, args.field)[: args.limit]
    fields = [f for value in args.reference_field for f in value.split(",") if f]
    missing = [f for f in fields if not isinstance(rows[0].get(f), str)]
    if missing:
        raise ConfigError(
            f"{args.data}: no reference field {missing}; the row has {sorted(rows[0])}"
        )
    lm = lmforge.load(args.model)
    started = time.perf_counter()
    results = lm.summarize([r[args.field] for r in rows], batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    references = [[r[f] for f in fields if isinstance(r.get(f), str)] for r in rows]
    scores = summary_scores([r.text for r in results], references)
    return {
        "model": args.model,
        "data": args.data,
        **scores.as_dict(),
        "summaries_per_s": len(rows) / seconds,
    }


def add_parsers(verbs) -> None:
    sm = verbs.add_parser(
        "summarize", help="summarise a document (stdin or --input), or each row of a JSONL file"
    )
    sm.add_argument("--input", "-i", help="a text file, or .jsonl with one document a row")
    sm.add_argument("--field", default="document", help="JSONL: the text field [document]")
    sm.add_argument("--instruction", help="what the chat model is asked before the text")
    sm.add_argument("--batch-size", type=int, default=8)
    sm.add_argument("--json", action="store_true", help="JSONL: one {'summary': ...} a line")
    add_model_flags(sm)
    add_generation_flags(sm)
    sm.set_defaults(func=cmd_summarize)
