"""Translation metrics from sacreBLEU, the reference implementation: BLEU and chrF on detokenized
text (with the signature that says how they were computed), and the lowercased BLEU that papers
and tutorials on Multi30k report (bentrevett's pytorch-seq2seq scores lowercased word tokens)."""

from __future__ import annotations

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
