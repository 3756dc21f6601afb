"""`lmforge embed train | eval | neighbors | analogy | plot`: word2vec and GloVe vectors."""

from __future__ import annotations

import argparse

from lmforge.cli.options import add_model_flags


def embed_train(args: argparse.Namespace) -> int:
    from lmforge import embeddings as emb

    sentences = emb.read_corpus(args.data)
    common = dict(
        vector_size=args.size,
        window=args.window,
        min_count=args.min_count,
        epochs=args.epochs,
        seed=args.seed,
    )
    if args.method == "glove":
        vectors, stats = emb.train_glove(sentences, **common)
    else:
        vectors, stats = emb.train_word2vec(
            sentences,
            method=args.method,
            negative=args.negative,
            sample=args.sample,
            workers=args.workers,
            **common,
        )
    vectors.save(args.out, binary=args.binary)
    losses = ", ".join(f"{x:.4f}" for x in stats.losses)
    print(
        f"{len(vectors)} words x {vectors.dim} -> {args.out} "
        f"({stats.words_per_second:,.0f} words/s; loss per epoch {losses})"
    )
    return 0


def embed_eval(args: argparse.Namespace) -> int:
    from lmforge.embeddings import KeyedVectors
    from lmforge.embeddings.evaluate import evaluation_report

    vectors = KeyedVectors.load(args.vectors)
    print("\n".join(evaluation_report(vectors, args.data_dir, args.restrict_vocab)))
    return 0


def embed_neighbors(args: argparse.Namespace) -> int:
    from lmforge.embeddings import KeyedVectors

    for word, score in KeyedVectors.load(args.vectors).most_similar(args.word, topn=args.topn):
        print(f"{score:.4f}  {word}")
    return 0


def embed_analogy(args: argparse.Namespace) -> int:
    from lmforge.embeddings import KeyedVectors

    a, b, c = args.words
    for word, score in KeyedVectors.load(args.vectors).most_similar([b, c], [a], topn=args.topn):
        print(f"{score:.4f}  {word}")
    return 0


def embed_plot(args: argparse.Namespace) -> int:
    from lmforge.embeddings import KeyedVectors
    from lmforge.embeddings.plot import plot_words

    vectors = KeyedVectors.load(args.vectors)
    plot_words(vectors, args.words or None, args.out, top=args.top, method=args.method)
    print(f"-> {args.out}")
    return 0


def embed_text(args: argparse.Namespace) -> int:
    """One JSON line per text: the text and its vector, from a language model or word vectors."""
    import json
    import sys

    from lmforge.errors import ConfigError

    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if args.vectors:
        if args.model:
            raise ConfigError(
                "give --model (a language model) or --vectors (word vectors), not both"
            )
        from lmforge.embeddings import KeyedVectors
        from lmforge.embeddings.texts import embed_with_word_vectors

        vectors = embed_with_word_vectors(KeyedVectors.load(args.vectors), texts)
    else:
        from lmforge.cli.options import load_model

        lm = load_model(args)
        vectors = lm.embed(texts, pooling=args.pooling, truncate=args.truncate)
    for text, vector in zip(texts, vectors.tolist(), strict=True):
        print(json.dumps({"text": text, "embedding": [round(x, 6) for x in vector]}))
    return 0


def add_parsers(verbs) -> None:
    embed = verbs.add_parser(
        "embed", help="word2vec / GloVe: train, eval, neighbors, analogy, plot; text vectors"
    )
    actions = embed.add_subparsers(dest="embed_action", required=True)
    train = actions.add_parser("train", help="train word vectors on a text file or 'shakespeare'")
    train.add_argument("--method", choices=["skipgram", "cbow", "glove"], default="skipgram")
    train.add_argument("--data", default="shakespeare", help="a text file (one sentence a line)")
    train.add_argument("--out", required=True, help="vectors file (word2vec text format)")
    train.add_argument("--binary", action="store_true", help="word2vec binary format")
    train.add_argument("--size", type=int, default=100)
    train.add_argument("--window", type=int, default=5)
    train.add_argument("--min-count", type=int, default=5)
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--negative", type=int, default=5)
    train.add_argument("--sample", type=float, default=1e-3)
    train.add_argument(
        "--workers",
        type=int,
        default=2,
        help="word2vec threads (Hogwild, as gensim); 1 makes a seeded run exactly repeatable",
    )
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=embed_train)
    evaluate = actions.add_parser("eval", help="WordSim-353, SimLex-999, Google analogies")
    evaluate.add_argument("vectors")
    evaluate.add_argument("--data-dir", help="default: the files in an installed gensim wheel")
    evaluate.add_argument("--restrict-vocab", type=int, default=300000)
    evaluate.set_defaults(func=embed_eval)
    neighbors = actions.add_parser("neighbors", help="nearest words by cosine")
    neighbors.add_argument("vectors")
    neighbors.add_argument("word")
    neighbors.add_argument("--topn", type=int, default=10)
    neighbors.set_defaults(func=embed_neighbors)
    analogy = actions.add_parser("analogy", help="a : b :: c : ? (3CosAdd)")
    analogy.add_argument("vectors")
    analogy.add_argument("words", nargs=3, metavar="WORD")
    analogy.add_argument("--topn", type=int, default=5)
    analogy.set_defaults(func=embed_analogy)
    plot = actions.add_parser("plot", help="PCA or t-SNE map of words as PNG")
    plot.add_argument("vectors")
    plot.add_argument("words", nargs="*")
    plot.add_argument("--out", default="words.png")
    plot.add_argument("--top", type=int, default=100, help="without words: the N most frequent")
    plot.add_argument("--method", choices=["pca", "tsne"], default="pca")
    plot.set_defaults(func=embed_plot)
    text = actions.add_parser(
        "text", help="vectors of texts (JSON lines) from a language model or word vectors"
    )
    text.add_argument("texts", nargs="*", help="texts to embed (default: lines of stdin)")
    add_model_flags(text)
    text.add_argument("--vectors", help="word2vec/GloVe vectors: each text's mean word vector")
    text.add_argument("--pooling", choices=["mean", "last"], default="mean")
    text.add_argument("--truncate", action="store_true", help="cut texts longer than the context")
    text.set_defaults(func=embed_text)
