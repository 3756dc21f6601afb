"""`lmforge eval`, `compare`, `explain` and `bias`: scoring, comparing and explaining models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmforge.cli.options import add_quantize_flags
from lmforge.errors import ConfigError


def _translation_scores(lm, args: argparse.Namespace) -> dict:
    """BLEU, chrF and lowercased BLEU of the model's translations of --source against
    --reference (greedy unless --num-beams)."""
    from lmforge.data.parallel import read_parallel
    from lmforge.evaluation.metrics import translation_scores

    if args.reference is None:
        raise ConfigError("--source needs --reference (the reference translations, line by line)")
    pairs = read_parallel(args.source, args.reference)
    results = lm.translate(pairs.sources, num_beams=args.num_beams, truncate=True)
    scores = translation_scores([r.text.strip() for r in results], pairs.targets)
    skipped = {"pairs_skipped_empty": pairs.skipped_empty} if pairs.skipped_empty else {}
    return {"model": str(lm.source), "source": args.source, **scores.as_dict(), **skipped}


def cmd_eval(args: argparse.Namespace) -> int:
    import lmforge
    from lmforge.evaluation.perplexity import score_corpus

    if args.task == "classification":
        from lmforge.cli.classify import cmd_eval as classification_eval

        return classification_eval(args)
    if args.task == "summarization":
        from lmforge.cli.summarize import summarization_report

        if args.data is None:
            raise ConfigError("--data is needed: a JSONL file of texts and reference summaries")
        return _print(summarization_report(args), args.json)
    if (args.data is None) == (args.source is None):
        raise ConfigError("give --data (perplexity) or --source with --reference (BLEU)")
    lm = lmforge.load(args.model, quantize=args.quantize, group_size=args.group_size)
    if args.source is not None:
        return _print(_translation_scores(lm, args), args.json)
    score = score_corpus(
        lm.model,
        lm.tokenizer,
        args.data,
        args.field,
        args.split,
        args.val_fraction,
        args.test_fraction,
        args.max_tokens,
        args.context,
        args.stride,
    )
    result = {"model": str(lm.source), "precision": lm.precision, "data": args.data,
              "split": args.split, **score.to_dict()}  # fmt: skip
    return _print(result, args.json)


def _print(result: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result, indent=2))
        return 0
    width = max(map(len, result))
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import lmforge
    from lmforge.data.corpus import Corpus
    from lmforge.data.parallel import read_parallel
    from lmforge.evaluation.compare import compare, compare_translations

    translation = args.source is not None or args.reference is not None
    if translation == (args.data is not None) or (
        translation and None in (args.source, args.reference)
    ):
        raise ConfigError(
            "compare needs --data TEXT (language models) or --source F and --reference F "
            "(translation models), not both"
        )
    models = {name: lmforge.load(name) for name in args.models}
    if translation:
        pairs = read_parallel(args.source, args.reference)
        _, page = compare_translations(
            models,
            pairs.sources[: args.max_sentences],
            pairs.targets[: args.max_sentences],
            str(args.source),
            args.out,
            args.num_beams,
        )
    else:
        text = "\n\n".join(Corpus(args.data).texts())[: args.max_chars]
        _, page = compare(
            models,
            text,
            args.data,
            args.prompt,
            args.out,
            args.max_new_tokens,
            args.context,
            args.stride,
        )
    print((Path(args.out) / "compare.md").read_text())
    print(f"report: {page}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import lmforge
    from lmforge.evaluation.explain import write_report

    text = Path(args.text_file).read_text() if args.text_file else args.text
    if text is None:
        raise ConfigError("give the text to explain, or --text-file")
    views = tuple(args.views) if args.views else None
    page = write_report(lmforge.load(args.model), text, args.out, views)
    print(f"report: {page}")
    return 0


def cmd_bias(args: argparse.Namespace) -> int:
    from lmforge.evaluation import bias

    if args.probe == "weat":
        from lmforge.embeddings import KeyedVectors

        vectors = KeyedVectors.load(args.model)
        results, skipped = bias.weat_tests(vectors, args.test, args.permutations, args.seed)
        text = "\n".join([r.table() for r in results] + skipped)
        payload = [r.__dict__ for r in results]
    else:
        import lmforge

        if not args.data:
            raise ConfigError(
                f"--probe {args.probe} needs --data (the CrowS-Pairs CSV or StereoSet JSONL)"
            )
        lm = lmforge.load(args.model)
        if args.probe == "crows":
            items = bias.read_crows_pairs(args.data)[: args.limit]
            result = bias.crows_pairs(lm, items, seed=args.seed)
        else:
            items = bias.read_stereoset(args.data)[: args.limit]
            result = bias.stereoset(lm, items, seed=args.seed)
        text, payload = result.table(), result.to_dict()
    print(text)
    print(f"report: {bias.write_report(args.out, args.probe, args.model, text, payload)}")
    return 0


def add_parsers(verbs) -> None:
    ev = verbs.add_parser(
        "eval",
        help="loss, perplexity (per token, per word), bits per byte and char; or BLEU and chrF "
        "of a translation model",
    )
    ev.add_argument("--model", "-m", required=True)
    add_quantize_flags(ev)
    ev.add_argument(
        "--task",
        choices=["lm", "classification", "summarization"],
        default="lm",
        help="[lm]: perplexity (or BLEU with --source); classification: accuracy, macro-F1 "
        "and the confusion matrix of labelled --data (as `lmforge classify eval`); "
        "summarization: ROUGE-1/2/L/Lsum (stemmed) of summaries of the JSONL --data's --field",
    )
    ev.add_argument("--data", help="text file, directory, glob, .jsonl or 'shakespeare'")
    ev.add_argument("--source", help="translation: sentences to translate, one a line")
    ev.add_argument("--reference", help="translation: their reference translations")
    ev.add_argument("--num-beams", type=int, default=1, help="translation: beam width")
    ev.add_argument("--field", default="text", help="JSONL field")
    ev.add_argument(
        "--split",
        choices=["all", "train", "val", "test"],
        default="all",
        help="score a split of the corpus as training splits it (default: all)",
    )
    ev.add_argument("--val-fraction", type=float, default=0.05)
    ev.add_argument("--test-fraction", type=float, default=0.05)
    ev.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")
    ev.add_argument("--context", type=int, default=None, help="window (default: the model's)")
    ev.add_argument("--stride", type=int, default=None, help="window step (default: the context)")
    ev.add_argument("--text-column", help="classification: [the column besides the label's]")
    ev.add_argument("--label-column", default="label", help="classification: [label]")
    ev.add_argument("--labels", nargs="+", help="classification: zero-shot labels (A,B)")
    ev.add_argument("--batch-size", type=int, default=32, help="classification: texts at once")
    ev.add_argument("--confusion", type=Path, help="classification: confusion matrix PNG here")
    ev.add_argument(
        "--reference-field",
        nargs="+",
        default=["summary"],
        help="summarization: the reference summary field(s) [summary]",
    )
    ev.add_argument("--limit", type=int, default=None, help="summarization: the first N rows")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_eval)

    cmp = verbs.add_parser("compare", help="one report comparing models on the same text")
    cmp.add_argument("models", nargs="+", help="model names, files or run directories")
    cmp.add_argument("--data", help="text the language models are scored on")
    cmp.add_argument("--source", help="translation models: sentences to translate, one a line")
    cmp.add_argument("--reference", help="translation models: their translations, line by line")
    cmp.add_argument("--num-beams", type=int, default=1, help="translation models: beam size")
    cmp.add_argument("--max-sentences", type=int, default=None, help="translate at most this many")
    cmp.add_argument("--prompt", default="The ")
    cmp.add_argument("--max-chars", type=int, default=50_000, help="score this much of the text")
    cmp.add_argument("--max-new-tokens", type=int, default=40)
    cmp.add_argument("--context", type=int, default=None)
    cmp.add_argument("--stride", type=int, default=None)
    cmp.add_argument("--out", type=Path, default=Path("compare-report"))
    cmp.set_defaults(func=cmd_compare)

    ex = verbs.add_parser(
        "explain", help="HTML report: surprisal, attention, logit lens, RNN states"
    )
    ex.add_argument("text", nargs="?", default=None)
    ex.add_argument("--text-file")
    ex.add_argument("--model", "-m", default="smollm2-135m-instruct")
    ex.add_argument(
        "--views",
        nargs="+",
        choices=["surprisal", "attention", "lens", "states"],
        help="default: every view the model offers",
    )
    ex.add_argument("--out", type=Path, default=Path("explain-report"))
    ex.set_defaults(func=cmd_explain)

    bi = verbs.add_parser("bias", help="CrowS-Pairs, StereoSet (language models) or WEAT (vectors)")
    bi.add_argument(
        "--model", "-m", required=True, help="a language model; for weat, a vectors file"
    )
    bi.add_argument("--probe", choices=["crows", "stereoset", "weat"], required=True)
    bi.add_argument("--data", help="crows: a CrowS-Pairs CSV; stereoset: a StereoSet JSONL")
    bi.add_argument("--limit", type=int, default=None, help="use the first N items")
    bi.add_argument("--test", help="weat: one test (default: all)")
    bi.add_argument("--permutations", type=int, default=10_000)
    bi.add_argument("--seed", type=int, default=0)
    bi.add_argument("--out", type=Path, default=Path("bias-report"))
    bi.set_defaults(func=cmd_bias)
