"""Evaluation and explanation: comparable perplexity, model comparison, explain reports, bias
probes and generation diagnostics."""

from lmforge.evaluation.diagnostics import diagnose
from lmforge.evaluation.perplexity import Perplexity, perplexity

__all__ = ["Perplexity", "diagnose", "perplexity"]
