"""`lmforge compare M1 M2 ... --data TEXT`: one table for models with different architectures
and tokenizers, ranked by units they share (bits per byte, per-word perplexity), with the same
prompt's continuation from each. Written as Markdown and as HTML with PNG bar charts."""

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
        name=name,
        architecture=type(lm.model).__name__,
        parameters=lm.model.num_parameters(),
        tokenizer=describe_tokenizer(lm.tokenizer),
        vocab_size=lm.tokenizer.vocab_size,
        tokens=score.tokens,
        bits_per_byte=score.bits_per_byte,
        word_perplexity=score.word_perplexity,
        token_perplexity=score.perplexity,
        tokens_per_second=len(completion.token_ids) / seconds,
        sample=completion.text,
    )


def markdown(rows: list[ModelRow], data: str, prompt: str) -> str:
    lines = [
        f"# Model comparison on {data}",
        "",
        "| model | architecture | parameters | tokenizer (vocab) | tokens | bits/byte | ppl/word | ppl/token | gen tokens/s |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r.bits_per_byte):
        lines.append(
            f"| {r.name} | {r.architecture} | {r.parameters:,} | {r.tokenizer} ({r.vocab_size:,}) "
            f"| {r.tokens:,} | {r.bits_per_byte:.4f} | {r.word_perplexity:.2f} | "
            f"{r.token_perplexity:.2f} | {r.tokens_per_second:.1f} |"
        )
    lines += [
        "",
        "Per-token perplexity depends on the tokenizer; compare models by bits per byte "
        "or per-word perplexity.",
        "",
        f"## Continuations of {prompt!r}",
        "",
    ]
    for r in rows:
        lines += [f"**{r.name}**", "", "```", prompt + r.sample, "```", ""]
    return "\n".join(lines)


def _bar_chart(rows: list[ModelRow], field: str, label: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(rows)))
    ax.barh([r.name for r in rows], [getattr(r, field) for r in rows], color="#4f81bd")
    ax.set_xlabel(label)
    ax.invert_yaxis()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write_report(rows: list[ModelRow], data: str, prompt: str, out: str | Path) -> Path:
    """`out/compare.md`, `out/compare.html` and the PNG charts; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, data, prompt)
    (out / "compare.md").write_text(md, encoding="utf-8")
    charts = {
        "bits_per_byte.png": _bar_chart(rows, "bits_per_byte", "bits per byte (lower is better)"),
        "word_perplexity.png": _bar_chart(rows, "word_perplexity", "perplexity per word"),
        "tokens_per_second.png": _bar_chart(rows, "tokens_per_second", "generated tokens/s"),
    }
    for name, png in charts.items():
        (out / name).write_bytes(png)
    table = "".join(
        f"<tr><td>{html.escape(r.name)}</td><td>{r.architecture}</td><td>{r.parameters:,}</td>"
        f"<td>{html.escape(r.tokenizer)} ({r.vocab_size:,})</td><td>{r.tokens:,}</td>"
        f"<td>{r.bits_per_byte:.4f}</td><td>{r.word_perplexity:.2f}</td>"
        f"<td>{r.token_perplexity:.2f}</td><td>{r.tokens_per_second:.1f}</td></tr>"
        for r in sorted(rows, key=lambda r: r.bits_per_byte)
    )
    images = "".join(
        f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for name, png in charts.items()
    )
    samples = "".join(
        f"<h3>{html.escape(r.name)}</h3><pre>{html.escape(prompt)}<b>{html.escape(r.sample)}</b></pre>"
        for r in rows
    )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>lmforge compare</title><style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}pre{{white-space:pre-wrap;background:#f6f6f6;padding:8px}}
img{{margin:8px;vertical-align:top}}</style></head><body>
<h1>Model comparison on {html.escape(data)}</h1>
<table><tr><th>model</th><th>architecture</th><th>parameters</th><th>tokenizer (vocab)</th>
<th>tokens</th><th>bits/byte</th><th>ppl/word</th><th>ppl/token</th><th>gen tokens/s</th></tr>{table}</table>
<p>Per-token perplexity depends on the tokenizer; compare by bits per byte or per-word perplexity.</p>
{images}<h2>Continuations</h2>{samples}</body></html>"""
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
    """Measure each loaded model (name -> `lmforge.LM`), write the report; returns (rows, html path)."""
    rows = []
    for name, lm in models.items():
        with torch.inference_mode():
            rows.append(measure(lm, name, text, prompt, max_new_tokens, context, stride))
    return rows, write_report(rows, data_name, prompt, out)
