"""`lmforge explain`: what a model predicted for a text, and how it got there, as one HTML file.

- Surprisal: every token coloured by -log2 p(token | text before it), with its top-5 alternatives.
- Attention (GPT, nn.Transformer LM): each layer's and head's weights, from an eager attention path
  used only here; the fast path stays SDPA.
- Logit lens (GPT, nn.Transformer LM): the output head applied to the residual stream after each
  layer, i.e. what the model "would say" at that depth, for every position.
- Recurrent models: hidden states and gate activations (LSTM input/forget/output gates and cell
  state, GRU reset/update gates) over the text.

The report is self-contained (data inline, images as data URIs) and the plots are also written as
PNG files beside it.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.device import model_device
from lmforge.errors import ConfigError
from lmforge.generation.search import start_token

VIEWS = ("surprisal", "attention", "lens", "states")
MAX_TOKENS = 256


def available_views(model) -> tuple[str, ...]:
    return ("surprisal", *model.trace_views)


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


@torch.inference_mode()
def analyse(lm, text: str, views: tuple[str, ...] | None = None, top_k: int = 5) -> dict[str, Any]:
    """Everything the report shows, as plain data (lists and floats)."""
    model, tokenizer = lm.model, lm.tokenizer
    offered = available_views(model)
    views = tuple(views or offered)
    for view in views:
        if view not in VIEWS:
            raise ConfigError(f"view {view!r} is unknown; choose from {VIEWS}")
        if view not in offered:
            raise ConfigError(
                f"{type(model).__name__} has no {view} view; it offers: {', '.join(offered)}"
            )
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise ConfigError("the text gives no tokens; give at least one character")
    limit = min(MAX_TOKENS, getattr(model.config, "max_seq_len", MAX_TOKENS) - 1)
    if len(ids) > limit:
        raise ConfigError(f"the text is {len(ids)} tokens; explain takes at most {limit}")
    tokens = torch.tensor([[start_token(tokenizer), *ids]], device=model_device(model))
    model.eval()
    trace = model.trace(tokens)
    logits = trace.logits
    log_probs = F.log_softmax(logits[0, :-1].float(), dim=-1)
    top = torch.topk(log_probs, top_k, dim=-1)
    labels = [_token_text(tokenizer, t) for t in tokens[0].tolist()]
    report: dict[str, Any] = {
        "model": str(lm.source),
        "architecture": type(model).__name__,
        "text": text,
        "tokens": labels,  # the start token first
        "surprisal": [-float(log_probs[i, t]) / math.log(2) for i, t in enumerate(ids)],
        "alternatives": [
            [
                [_token_text(tokenizer, int(t)), math.exp(float(v))]
                for v, t in zip(vs, ts, strict=True)
            ]
            for vs, ts in zip(top.values, top.indices, strict=True)
        ],
        "views": list(views),
    }
    if "attention" in views:
        report["attention"] = [
            [
                [[round(float(w), 4) for w in row] for row in head_weights]
                for head_weights in layer[0]
            ]
            for layer in trace.attentions
        ]
    if "lens" in views:
        lens = []
        for h in trace.hidden_states:
            probs = trace.read_out(h)[0].float().softmax(dim=-1)
            best = probs.max(dim=-1)
            lens.append(
                [
                    [_token_text(tokenizer, int(t)), float(p)]
                    for p, t in zip(best.values, best.indices, strict=True)
                ]
            )
        report["lens"] = lens
    if "states" in views:
        report["states"] = {
            name: [layer.tolist() for layer in layers] for name, layers in trace.states.items()
        }
    return report


# --- plots -------------------------------------------------------------------------------------


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG images: surprisal per token, mean attention per layer, and recurrent states."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: dict[str, bytes] = {}
    shown = [repr(t)[1:-1] for t in report["tokens"][1:]]
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(shown)), 3))
    ax.bar(range(len(shown)), report["surprisal"], color="#c0504d")
    ax.set_xticks(range(len(shown)), shown, rotation=90, fontsize=7)
    ax.set_ylabel("surprisal (bits)")
    ax.set_title("surprisal of each token")
    images["surprisal.png"] = _figure_png(fig)
    plt.close(fig)
    if "attention" in report:
        layers = report["attention"]
        columns = min(4, len(layers))
        rows = -(-len(layers) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
        for index, ax in enumerate(axes.flat):
            ax.axis("off")
            if index < len(layers):
                mean = torch.tensor(layers[index]).mean(dim=0)
                ax.imshow(mean.numpy(), cmap="viridis", vmin=0, vmax=1)
                ax.set_title(f"layer {index} (mean of heads)", fontsize=8)
        images["attention.png"] = _figure_png(fig)
        plt.close(fig)
    for name, layers in report.get("states", {}).items():
        fig, axes = plt.subplots(len(layers), 1, figsize=(8, 2.2 * len(layers)), squeeze=False)
        for index, (ax, values) in enumerate(zip(axes[:, 0], layers, strict=True)):
            image = torch.tensor(values).T[:64].numpy()
            ax.imshow(image, aspect="auto", cmap="coolwarm", vmin=-1, vmax=1)
            ax.set_title(f"{name}, layer {index} (first 64 units; time runs right)", fontsize=8)
            ax.set_yticks([])
        images[f"{name.replace(' ', '_')}.png"] = _figure_png(fig)
        plt.close(fig)
    return images


# --- HTML --------------------------------------------------------------------------------------

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lmforge explain</title>
<style>
body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.tok{padding:2px 1px;border-radius:3px;white-space:pre;cursor:default;font-family:monospace}
#tip{position:fixed;display:none;background:#222;color:#fff;padding:6px 8px;border-radius:4px;
font:12px monospace;pointer-events:none;white-space:pre}
table.lens{border-collapse:collapse;font:11px monospace}
table.lens td,table.lens th{border:1px solid #ddd;padding:2px 4px;white-space:pre}
canvas{border:1px solid #ccc;image-rendering:pixelated}
.note{color:#666;font-size:13px}
img{max-width:100%}
</style></head><body>
<h1>lmforge explain</h1>
<p class="note">model <b id="model"></b> (<span id="arch"></span>), <span id="count"></span> tokens.
Colour: surprisal -log2 p(token | text before it), white = expected, red = surprising.
Hover a token for its probability and the model's top alternatives.</p>
<div id="text"></div><div id="tip"></div>
<div id="images"></div>
<div id="attention-view" hidden><h2>Attention</h2>
<p>layer <select id="layer"></select> head <select id="head"></select>
<span class="note">rows: the token attending; columns: the tokens it attends to</span></p>
<canvas id="canvas"></canvas><div class="note" id="attn-hover">&nbsp;</div></div>
<div id="lens-view" hidden><h2>Logit lens</h2>
<p class="note">The top next-token prediction read from the residual stream after each layer
(rows) at every position (columns); shade: its probability.</p><div id="lens"></div></div>
<script id="data" type="application/json">__DATA__</script>
<script>
const R = JSON.parse(document.getElementById('data').textContent);
const esc = s => s.replace(/[&<>]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));
const show = s => JSON.stringify(s).slice(1, -1);
document.getElementById('model').textContent = R.model;
document.getElementById('arch').textContent = R.architecture;
document.getElementById('count').textContent = R.tokens.length - 1;
const tip = document.getElementById('tip');
const text = document.getElementById('text');
R.tokens.slice(1).forEach((t, i) => {
  const span = document.createElement('span');
  span.className = 'tok';
  span.textContent = t;
  const s = R.surprisal[i], level = Math.min(1, s / 12);
  span.style.backgroundColor = `rgb(255, ${Math.round(255 - 180 * level)}, ${Math.round(255 - 200 * level)})`;
  span.dataset.surprisal = s.toFixed(2);
  span.onmousemove = e => {
    const lines = [`"${show(t)}"  ${s.toFixed(2)} bits  (p = ${(100 * 2 ** -s).toFixed(2)}%)`, 'top alternatives:'];
    R.alternatives[i].forEach(([a, p]) => lines.push(`  "${show(a)}"  ${(100 * p).toFixed(2)}%`));
    tip.textContent = lines.join('\\n');
    tip.style.display = 'block'; tip.style.left = (e.clientX + 12) + 'px'; tip.style.top = (e.clientY + 12) + 'px';
  };
  span.onmouseleave = () => { tip.style.display = 'none'; };
  text.appendChild(span);
});
const images = document.getElementById('images');
for (const [name, uri] of Object.entries(R.images)) {
  const h = document.createElement('h2'); h.textContent = name.replace('.png', '').replace(/_/g, ' ');
  const img = document.createElement('img'); img.src = uri; img.alt = name;
  images.append(h, img);
}
if (R.attention) {
  document.getElementById('attention-view').hidden = false;
  const layerSel = document.getElementById('layer'), headSel = document.getElementById('head');
  R.attention.forEach((_, i) => layerSel.add(new Option(i, i)));
  R.attention[0].forEach((_, i) => headSel.add(new Option(i, i)));
  const canvas = document.getElementById('canvas'), ctx = canvas.getContext('2d');
  const n = R.tokens.length, cell = Math.max(4, Math.min(24, Math.floor(560 / n)));
  canvas.width = canvas.height = n * cell;
  const draw = () => {
    const w = R.attention[layerSel.value][headSel.value];
    for (let q = 0; q < n; q++) for (let k = 0; k < n; k++) {
      const v = w[q][k];
      ctx.fillStyle = `rgb(${Math.round(255 - 230 * v)}, ${Math.round(255 - 150 * v)}, 255)`;
      ctx.fillRect(k * cell, q * cell, cell, cell);
    }
  };
  canvas.onmousemove = e => {
    const r = canvas.getBoundingClientRect();
    const q = Math.floor((e.clientY - r.top) / cell), k = Math.floor((e.clientX - r.left) / cell);
    if (q < n && k < n) document.getElementById('attn-hover').textContent =
      `"${show(R.tokens[q])}" -> "${show(R.tokens[k])}": ${R.attention[layerSel.value][headSel.value][q][k].toFixed(3)}`;
  };
  layerSel.onchange = headSel.onchange = draw;
  draw();
}
if (R.lens) {
  document.getElementById('lens-view').hidden = false;
  let rows = '<tr><th>layer</th>' + R.tokens.map(t => `<th>${esc(show(t))}</th>`).join('') + '</tr>';
  R.lens.forEach((layer, i) => {
    rows += `<tr><th>${i}</th>` + layer.map(([t, p]) =>
      `<td style="background:rgba(70,130,180,${p.toFixed(2)})" title="${(100 * p).toFixed(1)}%">${esc(show(t))}</td>`).join('') + '</tr>';
  });
  document.getElementById('lens').innerHTML = `<table class="lens">${rows}</table>`;
}
</script></body></html>
"""


def write_report(lm, text: str, out: str | Path, views: tuple[str, ...] | None = None) -> Path:
    """Analyse `text` and write `out/report.html` plus the PNGs; returns the HTML path."""
    report = analyse(lm, text, views)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = plots(report)
    for name, data in images.items():
        (out / name).write_bytes(data)
    report["images"] = {
        name: "data:image/png;base64," + base64.b64encode(data).decode()
        for name, data in images.items()
    }
    payload = json.dumps(report).replace("</", "<\\/")  # safe inside <script>
    page = out / "report.html"
    page.write_text(_PAGE.replace("__DATA__", payload), encoding="utf-8")
    (out / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k != "images"}))
    return page
