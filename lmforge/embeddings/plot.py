"""A 2-D picture of word vectors (PCA), saved as PNG."""

from __future__ import annotations

from pathlib import Path

import torch

from lmforge.embeddings.vectors import KeyedVectors
from lmforge.errors import ConfigError


def pca_2d(vectors: torch.Tensor) -> torch.Tensor:
    """Coordinates on the two principal axes of the (centred) rows."""
    centred = vectors - vectors.mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def plot_words(vectors: KeyedVectors, words: list[str] | None, out: str | Path, top: int = 100):
    """Scatter `words` (default: the `top` most frequent) on their first two principal axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = words or vectors.words[:top]
    missing = [w for w in chosen if w not in vectors]
    if missing:
        raise ConfigError(f"not in the vocabulary: {', '.join(missing[:10])}")
    if len(chosen) < 3:
        raise ConfigError("give at least 3 words to plot")
    points = pca_2d(torch.stack([vectors[w] for w in chosen])).numpy()
    figure, axes = plt.subplots(figsize=(9, 7))
    axes.scatter(points[:, 0], points[:, 1], s=12, color="#3366aa")
    for word, (x, y) in zip(chosen, points, strict=True):
        axes.annotate(word, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    axes.set_title(f"{len(chosen)} words, PCA of {vectors.dim}-d vectors")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
