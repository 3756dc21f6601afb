"""Task metrics from their reference implementations. Translation: sacreBLEU's BLEU and chrF on
detokenized text (with the signature that says how they were computed), and the lowercased BLEU
that papers and tutorials on Multi30k report (bentrevett's pytorch-seq2seq scores lowercased word
tokens). Summarisation: ROUGE-1/2/L/Lsum F-measures from Google's `rouge-score` with Porter
stemming, as papers and transformers' examples report them."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from lmforge.errors import ConfigError


@dataclass
class TranslationScores:
    """Corpus-level scores of hypotheses against one reference each."""

    bleu: float  # sacreBLEU, cased, 13a tokenization
    chrf: float
    bleu_lowercase: float  # lowercased, 13a tokenization: comparable to tokenised-BLEU tables
    sentences: int
    bleu_signature: str
    chrf_signature: str

    def as_dict(self) -> dict[str, float | int | str]:
        return dict(vars(self))


def translation_scores(hypotheses: list[str], references: list[str]) -> TranslationScores:
    """BLEU, chrF and lowercased BLEU of `hypotheses` against `references` (line by line)."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ConfigError(
            f"{len(hypotheses)} translations but {len(references)} references; "
            "they must be line-aligned"
        )
    if not references:
        raise ConfigError("no sentences to score")
    bleu, chrf, lower = BLEU(), CHRF(), BLEU(lowercase=True)
    return TranslationScores(
        bleu=bleu.corpus_score(hypotheses, [references]).score,
        chrf=chrf.corpus_score(hypotheses, [references]).score,
        bleu_lowercase=lower.corpus_score(hypotheses, [references]).score,
        sentences=len(references),
        bleu_signature=str(bleu.get_signature()),
        chrf_signature=str(chrf.get_signature()),
    )


@dataclass
class SummaryScores:
    """Mean ROUGE F-measures (x100) of summaries against their references (the best-matching
    reference where there are several), and length statistics in words."""

    rouge1: float
    rouge2: float
    rougeL: float  # noqa: N815 (the metric's own name)
    rougeLsum: float  # noqa: N815
    summaries: int
    mean_words: float
    mean_reference_words: float
    stemming: bool = True

    def as_dict(self) -> dict[str, float | int | bool]:
        return dict(vars(self))


def _sentence_lines(text: str) -> str:
    """One sentence a line: what ROUGE-Lsum reads as the summary's sentences."""
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


def summary_scores(summaries: list[str], references: list[str] | list[list[str]]) -> SummaryScores:
    """ROUGE of `summaries` against `references`: one string per summary, or a list of strings
    (several references: each metric takes the best, as `rouge_score.score_multi` does)."""
    from rouge_score import rouge_scorer

    if len(summaries) != len(references):
        raise ConfigError(f"{len(summaries)} summaries but {len(references)} references")
    if not summaries:
        raise ConfigError("no summaries to score")
    names = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(names, use_stemmer=True)
    totals = dict.fromkeys(names, 0.0)
    reference_words = []
    for summary, refs in zip(summaries, references, strict=True):
        refs = [refs] if isinstance(refs, str) else list(refs)
        scores = scorer.score_multi([_sentence_lines(r) for r in refs], _sentence_lines(summary))
        for name in names:
            totals[name] += scores[name].fmeasure
        reference_words.append(statistics.mean(len(r.split()) for r in refs))
    n = len(summaries)
    return SummaryScores(
        *(100 * totals[name] / n for name in names),
        summaries=n,
        mean_words=statistics.mean(len(s.split()) for s in summaries),
        mean_reference_words=statistics.mean(reference_words),
    )
