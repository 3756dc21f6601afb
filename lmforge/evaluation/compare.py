"""`lmforge compare M1 M2 ... --data TEXT`: one table for models with different architectures
and tokenizers, ranked by units they share (bits per byte, per-word perplexity), with the same
prompt's continuation from each; `--source F --reference F` compares translation models by
sacreBLEU, chrF and speed instead. Written as Markdown and as HTML with PNG bar charts."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmforge.errors import ConfigError
from lmforge.evaluation.metrics import translation_scores
from lmforge.evaluation.perplexity import model_context, perplexity


@dataclass
class ModelRow:
    name: str
    architecture: str
    parameters: int
    tokenizer: str
    vocab_size: int
    tokens: int
    bits_per_byte: float
    word_perplexity: float
    token_perplexity: float
    tokens_per_second: float
    sample: str


def describe_tokenizer(tokenizer) -> str:
    """ "char", "word", "byte-level BPE", ... read from the tokenizer's own JSON."""
    spec = json.loads(tokenizer.backend.to_str())
    kind = spec["model"]["type"]
    if kind == "WordLevel":
        return "word"
    if kind == "BPE" and not spec["model"].get("merges"):
        return "char"  # lmforge's character tokenizer is a BPE model without merges
    if kind == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer")):
        return "byte-level BPE"
    return kind


def _identity(lm, name: str) -> dict[str, Any]:
    """The columns every comparison starts with: what the model is."""
    return {
        "name": name,
        "architecture": type(lm.model).__name__,
        "parameters": lm.model.num_parameters(),
        "tokenizer": describe_tokenizer(lm.tokenizer),
        "vocab_size": lm.tokenizer.vocab_size,
    }


def measure(
    lm,
    name: str,
    text: str,
    prompt: str,
    max_new_tokens: int,
    context: int | None,
    stride: int | None,
) -> ModelRow:
    """Score `text`, time a greedy continuation of `prompt`, and describe the model."""
    if context is not None and not lm.model.stateful:  # attention models: within their window
        context = min(context, model_context(lm.model))
        stride = min(stride, context) if stride else None
    score = perplexity(lm.model, lm.tokenizer, text, context, stride)
    lm.generate(prompt, max_new_tokens=2)  # warm-up
    started = time.perf_counter()
    completion = lm.generate(
        prompt, max_new_tokens=max_new_tokens, ignore_eos=True, truncate="left"
    )
    seconds = time.perf_counter() - started
    return ModelRow(
        **_identity(lm, name),
        tokens=score.tokens,
        bits_per_byte=score.bits_per_byte,
        word_perplexity=score.word_perplexity,
        token_perplexity=score.perplexity,
        tokens_per_second=len(completion.token_ids) / seconds,
        sample=completion.text,
    )


@dataclass
class TranslationRow:
    name: str
    architecture: str
    parameters: int
    tokenizer: str
    vocab_size: int
    bleu: float
    bleu_lowercase: float
    chrf: float
    sentences_per_second: float
    sample: str  # the translation of the first source


@dataclass
class Report:
    """What a comparison shows, whatever it compares: a table (cells already formatted, in
    display order), bar charts (file name -> labels, values, axis label) and a sample per model."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    charts: dict[str, tuple[list[str], list[float], str]]
    samples: list[tuple[str, str, str]]  # (model, the input shown plain, its output shown bold)
    note: str


def measure_translation(
    lm, name: str, sources: list[str], references: list[str], num_beams: int, batch_size: int
) -> TranslationRow:
    """Translate `sources` (timed) and score them against `references` with sacreBLEU."""
    lm.translate(sources[:2], num_beams=num_beams)  # warm-up
    started = time.perf_counter()
    outputs = lm.translate(sources, num_beams=num_beams, batch_size=batch_size)
    seconds = time.perf_counter() - started
    scores = translation_scores([o.text.strip() for o in outputs], references)
    return TranslationRow(
        **_identity(lm, name),
        bleu=scores.bleu,
        bleu_lowercase=scores.bleu_lowercase,
        chrf=scores.chrf,
        sentences_per_second=len(sources) / seconds,
        sample=outputs[0].text.strip(),
    )


def language_model_report(rows: list[ModelRow], data: str, prompt: str) -> Report:
    ranked = sorted(rows, key=lambda r: r.bits_per_byte)
    return Report(
        title=f"Model comparison on {data}",
        columns=[
            "model",
            "architecture",
            "parameters",
            "tokenizer (vocab)",
            "tokens",
            "bits/byte",
            "ppl/word",
            "ppl/token",
            "gen tokens/s",
        ],
        rows=[
            [
                r.name,
                r.architecture,
                f"{r.parameters:,}",
                f"{r.tokenizer} ({r.vocab_size:,})",
                f"{r.tokens:,}",
                f"{r.bits_per_byte:.4f}",
                f"{r.word_perplexity:.2f}",
                f"{r.token_perplexity:.2f}",
                f"{r.tokens_per_second:.1f}",
            ]
            for r in ranked
        ],
        charts={
            "bits_per_byte.png": _chart(rows, "bits_per_byte", "bits per byte (lower is better)"),
            "word_perplexity.png": _chart(rows, "word_perplexity", "perplexity per word"),
            "tokens_per_second.png": _chart(rows, "tokens_per_second", "generated tokens/s"),
        },
        samples=[(r.name, prompt, r.sample) for r in rows],
        note="Per-token perplexity depends on the tokenizer; compare models by bits per byte "
        "or per-word perplexity.",
    )


def translation_report(
    rows: list[TranslationRow], data: str, source: str, num_beams: int
) -> Report:
    decoding = "greedy" if num_beams == 1 else f"beam {num_beams}"
    return Report(
        title=f"Translation comparison on {data} ({decoding})",
        columns=[
            "model",
            "architecture",
            "parameters",
            "tokenizer (vocab)",
            "BLEU",
            "BLEU lowercased",
            "chrF",
            "sentences/s",
        ],
        rows=[
            [
                r.name,
                r.architecture,
                f"{r.parameters:,}",
                f"{r.tokenizer} ({r.vocab_size:,})",
                f"{r.bleu:.2f}",
                f"{r.bleu_lowercase:.2f}",
                f"{r.chrf:.2f}",
                f"{r.sentences_per_second:.1f}",
            ]
            for r in sorted(rows, key=lambda r: -r.bleu)
        ],
        charts={
            "bleu.png": _chart(rows, "bleu", "sacreBLEU (higher is better)"),
            "sentences_per_second.png": _chart(rows, "sentences_per_second", "sentences/s"),
        },
        samples=[(r.name, source + "\n", r.sample) for r in rows],
        note="sacreBLEU and chrF on detokenised text (13a tokens); the lowercased BLEU is the "
        "same with lowercase=True.",
    )


def _chart(rows: list, field: str, label: str) -> tuple[list[str], list[float], str]:
    return [r.name for r in rows], [getattr(r, field) for r in rows], label


def _bar_chart(labels: list[str], values: list[float], label: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(labels)))
    ax.barh(labels, values, color="#4f81bd")
    ax.set_xlabel(label)
    ax.invert_yaxis()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", "| " + " | ".join(report.columns) + " |"]
    lines.append("|---|---|" + "---:|" * (len(report.columns) - 2))
    lines += ["| " + " | ".join(row) + " |" for row in report.rows]
    lines += ["", report.note, "", "## Samples", ""]
    for name, given, output in report.samples:
        lines += [f"**{name}**", "", "```", given + output, "```", ""]
    return "\n".join(lines)


def write_report(report: Report, out: str | Path) -> Path:
    """`out/compare.md`, `out/compare.html` and the PNG charts; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(markdown(report), encoding="utf-8")
    charts = {name: _bar_chart(*chart) for name, chart in report.charts.items()}
    for name, png in charts.items():
        (out / name).write_bytes(png)
    header = "".join(f"<th>{html.escape(c)}</th>" for c in report.columns)
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in report.rows
    )
    images = "".join(
        f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for name, png in charts.items()
    )
    samples = "".join(
        f"<h3>{html.escape(name)}</h3><pre>{html.escape(given)}<b>{html.escape(output)}</b></pre>"
        for name, given, output in report.samples
    )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>lmforge compare</title><style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:8px}}
img{{margin:8px;vertical-align:top}}</style></head><body>
<h1>{html.escape(report.title)}</h1>
<table><tr>{header}</tr>{table}</table>
<p>{html.escape(report.note)}</p>
{images}<h2>Samples</h2>{samples}</body></html>"""
    path = out / "compare.html"
    path.write_text(page, encoding="utf-8")
    return path


def compare(
    models: dict[str, Any],
    text: str,
    data_name: str,
    prompt: str,
    out: str | Path,
    max_new_tokens: int = 40,
    context: int | None = None,
    stride: int | None = None,
):
    """Measure each loaded language model (name -> `lmforge.LM`) on `text`, write the report;
    returns (rows, html path)."""
    for name, lm in models.items():
        if lm.encoder_decoder:
            raise ConfigError(
                f"{name} is a translation model: compare it on parallel text (--source and "
                "--reference) with other translation models"
            )
    rows = []
    for name, lm in models.items():
        with torch.inference_mode():
            rows.append(measure(lm, name, text, prompt, max_new_tokens, context, stride))
    return rows, write_report(language_model_report(rows, data_name, prompt), out)


def compare_translations(
    models: dict[str, Any],
    sources: list[str],
    references: list[str],
    data_name: str,
    out: str | Path,
    num_beams: int = 1,
    batch_size: int = 64,
):
    """Translate `sources` with each translation model (name -> `lmforge.LM`), score them against
    `references`, write the report; returns (rows, html path)."""
    if len(sources) != len(references) or not sources:
        raise ConfigError(
            f"{len(sources)} sources and {len(references)} references: expected as many of each "
            "(one per line), and at least one"
        )
    for name, lm in models.items():
        if not lm.encoder_decoder:
            raise ConfigError(
                f"{name} is a language model: compare it on text (--data) with other language "
                "models; --source/--reference compare translation models"
            )
    rows = [
        measure_translation(lm, name, sources, references, num_beams, batch_size)
        for name, lm in models.items()
    ]
    report = translation_report(rows, data_name, sources[0], num_beams)
    return rows, write_report(report, out)
