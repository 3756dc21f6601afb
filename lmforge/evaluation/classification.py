"""Classification: labels for texts from a trained classifier or, zero- and few-shot, from a
language model's likelihood of each label's words; accuracy, macro-F1 and the confusion matrix.

Zero-shot scoring asks the model how likely each label is as the continuation of a prompt that
holds the text (through the chat template for instruct models, k solved examples before it for
few-shot) and picks the likeliest: a label's score is the sum of its tokens' log-probabilities,
the same figure `lmforge eval` sums over a text's tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.data.batches import pad_rows
from lmforge.device import model_device
from lmforge.errors import ConfigError
from lmforge.paths import write_atomically


@dataclass
class Classification:
    """One text's label, its probability, and every label's probability."""

    label: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)


def _results(logits: torch.Tensor, names: Sequence[str]) -> list[Classification]:
    probabilities = logits.float().softmax(dim=-1)
    out = []
    for row in probabilities.tolist():
        best = max(range(len(names)), key=row.__getitem__)
        out.append(Classification(names[best], row[best], dict(zip(names, row, strict=True))))
    return out


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each text, cut to `max_length` tokens; and how many were cut."""
    if isinstance(texts, str):
        raise ConfigError("texts must be a list of strings (wrap one text in a list)")
    ids, cut = [], 0
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"text {i} is empty; a classifier needs some text")
        tokens = tokenizer.encode(text)
        if len(tokens) > max_length:
            tokens, cut = tokens[:max_length], cut + 1
        ids.append(tokens)
    return ids, cut


@torch.inference_mode()
def label_logits(classifier, ids: list[list[int]], pad_id: int, batch_size: int = 32):
    """(texts, labels) logits, texts run in batches of similar length (right-padded)."""
    device = model_device(classifier)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    logits = torch.empty(len(ids), len(classifier.labels))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch, mask = pad_rows([ids[i] for i in rows], pad_id)
        logits[rows] = classifier(batch.to(device), mask.to(device)).float().cpu()
    return logits


def classify_with_head(
    classifier, tokenizer, texts: Sequence[str], batch_size: int = 32
) -> list[Classification]:
    """Labels of `texts` from a trained classifier (texts longer than its maximum are cut)."""
    limit = getattr(classifier.config, "max_seq_len", None) or 1 << 30  # (RNNs: no limit)
    ids, _ = encode_texts(tokenizer, texts, limit)
    return _results(label_logits(classifier, ids, tokenizer.pad_id, batch_size), classifier.labels)


# --- zero- and few-shot, by likelihood ------------------------------------------------------------


def zero_shot_prompt(
    tokenizer, text: str, labels: Sequence[str], examples: Sequence[tuple[str, str]] = ()
) -> list[int]:
    """The prompt whose continuation is a label: through the chat template where the tokenizer
    has one (each example a user turn and the assistant's label), else plain "Text: ... Label:"
    lines."""
    question = f"Classify the text as one of: {', '.join(labels)}. Answer with the label only."
    if tokenizer.chat_template:
        messages = []
        for example, label in examples:
            messages += [
                {"role": "user", "content": f"{question}\nText: {example}"},
                {"role": "assistant", "content": label},
            ]
        messages.append({"role": "user", "content": f"{question}\nText: {text}"})
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return tokenizer.encode(rendered, add_special_tokens=False)
    shots = "".join(f"Text: {example}\nLabel: {label}\n\n" for example, label in examples)
    return tokenizer.encode(f"{question}\n\n{shots}Text: {text}\nLabel:")


def _shared_start(prompts: list[list[int]]) -> list[int]:
    """The tokens every prompt starts with, leaving at least the last token of each prompt."""
    shortest = min(len(p) for p in prompts) - 1
    first = prompts[0]
    n = 0
    while n < shortest and all(p[n] == first[n] for p in prompts):
        n += 1
    return first[:n]


@torch.inference_mode()
def continuation_logprobs(
    model, prompts: list[list[int]], continuations: list[list[int]], batch_size: int = 16
) -> list[float]:
    """For each (prompt, continuation) pair, the sum of the continuation tokens' log-probabilities
    after the prompt. The prompts' shared beginning (a few-shot prompt's examples) runs once into
    a cache; each row then runs only the rest, right-padded in batches of similar length."""
    device = model_device(model)
    shared = _shared_start(prompts)
    rests = [p[len(shared) :] + c for p, c in zip(prompts, continuations, strict=True)]
    base = None
    if shared:
        base = model.new_cache(1, len(shared) + max(map(len, rests)))
        _, base = model(torch.tensor([shared], device=device), base)
    totals: list[float] = [0.0] * len(prompts)
    order = sorted(range(len(rests)), key=lambda i: len(rests[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        cache = None
        if base is not None:  # the shared beginning's state, once for every row
            cache = copy.deepcopy(base)
            cache.reorder(torch.zeros(len(rows), dtype=torch.long, device=device))
        ids, _ = pad_rows([rests[i] for i in rows], 0)
        logits, _ = model(ids.to(device), cache)
        logprobs = logits.float().log_softmax(dim=-1).cpu()
        for b, i in enumerate(rows):
            first, count = len(prompts[i]) - len(shared), len(continuations[i])
            targets = torch.tensor(continuations[i])
            picked = logprobs[b, first - 1 : first - 1 + count].gather(1, targets[:, None])
            totals[i] = float(picked.sum())
    return totals


def classify_by_likelihood(
    model,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[str],
    examples: Sequence[tuple[str, str]] = (),
    batch_size: int = 16,
) -> list[Classification]:
    """Each text's likeliest label under a language model (`examples`: few-shot (text, label)
    pairs put before it). Scores are the labels' likelihoods normalised over the labels."""
    if isinstance(texts, str):
        raise ConfigError("texts must be a list of strings (wrap one text in a list)")
    labels = [str(label) for label in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ConfigError(f"labels={labels}; give at least two distinct labels")
    unknown = [label for _, label in examples if label not in labels]
    if unknown:
        raise ConfigError(f"few-shot examples use labels {unknown} that are not in {labels}")
    # a label follows "Label:" (or the assistant's turn) after a space, as a writer would put it
    spaced = not tokenizer.chat_template
    words = [
        tokenizer.encode((" " if spaced else "") + label, add_special_tokens=False)
        for label in labels
    ]
    prompts, continuations = [], []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"text {i} is empty; a classifier needs some text")
        prompt = zero_shot_prompt(tokenizer, text, labels, examples)
        for word in words:
            prompts.append(prompt)
            continuations.append(word)
    longest = max(len(p) + len(c) for p, c in zip(prompts, continuations, strict=True))
    if longest > model.max_seq_len:
        raise ConfigError(
            f"a prompt of {longest} tokens is longer than the model's context "
            f"({model.max_seq_len}); use fewer or shorter examples"
        )
    totals = continuation_logprobs(model, prompts, continuations, batch_size)
    logits = torch.tensor(totals).view(len(texts), len(labels))
    return _results(logits, labels)


# --- scores ----------------------------------------------------------------------------------------


@dataclass
class ClassificationScores:
    """Accuracy, macro-F1 (the unweighted mean of the labels' F1) and the confusion matrix
    (`confusion[true][predicted]` counts)."""

    accuracy: float
    macro_f1: float
    confusion: list[list[int]]
    names: list[str]

    def f1(self) -> list[float]:
        scores = []
        for k in range(len(self.names)):
            hits = self.confusion[k][k]
            predicted = sum(row[k] for row in self.confusion)
            actual = sum(self.confusion[k])
            scores.append(2 * hits / (predicted + actual) if predicted + actual else 0.0)
        return scores

    def as_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "f1": dict(zip(self.names, self.f1(), strict=True)),
            "confusion": self.confusion,
            "labels": self.names,
        }


def classification_scores(
    predicted: Sequence[int], gold: Sequence[int], names: Sequence[str]
) -> ClassificationScores:
    if len(predicted) != len(gold) or not gold:
        raise ConfigError(f"{len(predicted)} predictions for {len(gold)} gold labels")
    confusion = [[0] * len(names) for _ in names]
    for p, g in zip(predicted, gold, strict=True):
        confusion[g][p] += 1
    accuracy = sum(confusion[k][k] for k in range(len(names))) / len(gold)
    scores = ClassificationScores(accuracy, 0.0, confusion, list(names))
    # over the labels that occur among the gold labels or the predictions (as scikit-learn)
    seen = set(predicted) | set(gold)
    scores.macro_f1 = sum(f for k, f in enumerate(scores.f1()) if k in seen) / len(seen)
    return scores


def plot_confusion(scores: ClassificationScores, path: str | Path, title: str = "") -> Path:
    """The confusion matrix as a PNG heat map with counts (rows: true label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(scores.names)
    size = max(3.0, 0.6 * n + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(scores.confusion, cmap="Blues")
    top = max(max(row) for row in scores.confusion) or 1
    for t in range(n):
        for p in range(n):
            count = scores.confusion[t][p]
            colour = "white" if count > top / 2 else "black"
            axes.text(p, t, str(count), ha="center", va="center", color=colour)
    axes.set_xticks(range(n), scores.names, rotation=45 if n > 4 else 0)
    axes.set_yticks(range(n), scores.names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    accuracy = f"accuracy {scores.accuracy:.3f}, macro-F1 {scores.macro_f1:.3f}"
    axes.set_title(f"{title}\n{accuracy}" if title else accuracy, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100))
    plt.close(figure)
    return path


__all__ = [
    "Classification",
    "ClassificationScores",
    "classification_scores",
    "classify_by_likelihood",
    "classify_with_head",
    "continuation_logprobs",
]
