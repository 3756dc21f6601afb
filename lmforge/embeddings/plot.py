"""A 2-D picture of word vectors (PCA, or t-SNE), saved as PNG."""

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


def tsne_2d(
    vectors: torch.Tensor, perplexity: float = 30.0, iterations: int = 1000, seed: int = 0
) -> torch.Tensor:
    """Exact t-SNE (van der Maaten & Hinton 2008): Gaussian affinities whose bandwidths match
    `perplexity`, a Student-t map fitted by gradient descent on KL(P || Q) with momentum and
    early exaggeration. O(n^2) memory and time: meant for the hundreds of words of a plot."""
    n = vectors.shape[0]
    if n < 4:
        raise ConfigError(f"t-SNE needs at least 4 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    x = vectors.double()
    distances = torch.cdist(x, x).pow(2)
    distances.fill_diagonal_(float("inf"))
    # Per point, bisect the precision beta so that the entropy of P(.|i) is log(perplexity).
    low, high = torch.zeros(n, 1, dtype=torch.double), torch.full((n, 1), float("inf"))
    beta = torch.ones(n, 1, dtype=torch.double)
    target = torch.log(torch.tensor(perplexity, dtype=torch.double))
    for _ in range(64):
        logits = -distances * beta
        p = torch.softmax(logits, dim=1)
        entropy = -(p * torch.log(p.clamp(min=1e-300))).sum(dim=1, keepdim=True)
        too_flat = entropy > target  # spread too wide: raise beta
        low = torch.where(too_flat, beta, low)
        high = torch.where(too_flat, high, beta)
        beta = torch.where(torch.isinf(high), beta * 2, (low + high) / 2)
    p = (p + p.T) / (2 * n)
    p = p.clamp(min=1e-12)
    generator = torch.Generator().manual_seed(seed)
    y = (torch.randn(n, 2, generator=generator, dtype=torch.double) * 1e-4).requires_grad_()
    learning_rate = max(n / 12 / 4, 50.0)
    velocity = torch.zeros_like(y)
    for step in range(iterations):
        exaggeration, momentum = (12.0, 0.5) if step < 250 else (1.0, 0.8)
        inverse = 1 / (1 + torch.cdist(y, y).pow(2))
        inverse = inverse - torch.diag(torch.diagonal(inverse))
        q = (inverse / inverse.sum()).clamp(min=1e-12)
        loss = (exaggeration * p * torch.log(exaggeration * p / q)).sum()
        (grad,) = torch.autograd.grad(loss, y)
        with torch.no_grad():
            velocity = momentum * velocity - learning_rate * grad
            y += velocity
    return y.detach().float()


def plot_words(
    vectors: KeyedVectors,
    words: list[str] | None,
    out: str | Path,
    top: int = 100,
    method: str = "pca",
):
    """Scatter `words` (default: the `top` most frequent) on their first two principal axes, or
    on a t-SNE map (`method="tsne"`)."""
    if method not in ("pca", "tsne"):
        raise ConfigError(f"method={method!r}; expected 'pca' or 'tsne'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = words or vectors.words[:top]
    missing = [w for w in chosen if w not in vectors]
    if missing:
        raise ConfigError(f"not in the vocabulary: {', '.join(missing[:10])}")
    if len(chosen) < 3:
        raise ConfigError("give at least 3 words to plot")
    project = pca_2d if method == "pca" else tsne_2d
    points = project(torch.stack([vectors[w] for w in chosen])).numpy()
    figure, axes = plt.subplots(figsize=(9, 7))
    axes.scatter(points[:, 0], points[:, 1], s=12, color="#3366aa")
    for word, (x, y) in zip(chosen, points, strict=True):
        axes.annotate(word, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
    name = "PCA" if method == "pca" else "t-SNE"
    axes.set_title(f"{len(chosen)} words, {name} of {vectors.dim}-d vectors")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
