"""Word embeddings: files interchangeable with gensim, gensim's evaluation numbers, training that
finds planted structure, clear errors."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from lmforge.embeddings import (
    KeyedVectors,
    evaluate_word_analogies,
    evaluate_word_pairs,
    read_corpus,
    train_glove,
    train_word2vec,
)
from lmforge.errors import ConfigError
from tests.conftest import SHARED_DATA

gensim_models = pytest.importorskip("gensim.models")
WORDSIM = SHARED_DATA / "word-similarity" / "wordsim353.tsv"
SIMLEX = SHARED_DATA / "word-similarity" / "simlex999.txt"
ANALOGIES = SHARED_DATA / "word-similarity" / "questions-words.txt"


def _benchmark_vectors(seed: int = 0) -> KeyedVectors:
    """Vectors for every benchmark word (some in two spellings, to exercise case folding), with
    a planted 'female = male + offset' structure so the family analogies partly hold."""
    rng = np.random.default_rng(seed)
    words: list[str] = []
    for path in (WORDSIM, SIMLEX, ANALOGIES):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith((":", "#")):
                continue
            words += [w.lower() for w in line.split()[:4] if not w.replace(".", "").isdigit()]
    unique = list(dict.fromkeys(words))[:3000]
    unique += [w.capitalize() for w in unique[:200]]  # rarer second spellings
    vectors = rng.standard_normal((len(unique), 50)).astype(np.float32)
    index = {w: i for i, w in enumerate(unique)}
    offset = rng.standard_normal(50).astype(np.float32) * 2
    section = None
    for line in ANALOGIES.read_text().splitlines():
        if line.startswith(":"):
            section = line
            continue
        if section == ": family":
            a, b = (w.lower() for w in line.split()[:2])
            if a in index and b in index:
                vectors[index[b]] = vectors[index[a]] + offset
    return KeyedVectors(unique, vectors)


@pytest.mark.parametrize("binary", [False, True])
def test_files_round_trip_with_gensim(tmp_path, binary):
    ours = _benchmark_vectors()
    path = tmp_path / ("v.bin" if binary else "v.txt")
    ours.save(path, binary=binary)
    theirs = gensim_models.KeyedVectors.load_word2vec_format(str(path), binary=binary)
    assert theirs.index_to_key == ours.words
    np.testing.assert_allclose(theirs.vectors, ours.vectors.numpy(), rtol=1e-5, atol=1e-6)
    back = tmp_path / ("g.bin" if binary else "g.txt")
    theirs.save_word2vec_format(str(back), binary=binary)
    again = KeyedVectors.load(back)  # format sniffed
    assert again.words == ours.words
    np.testing.assert_allclose(again.vectors.numpy(), theirs.vectors, rtol=1e-6)


def test_glove_text_format(tmp_path):
    ours = _benchmark_vectors()
    path = tmp_path / "glove.txt"
    ours.save(path, header=False)
    assert not path.read_text().split("\n", 1)[0].split()[0].isdigit()
    loaded = KeyedVectors.load(path)
    assert loaded.words == ours.words
    torch.testing.assert_close(loaded.vectors, ours.vectors, rtol=1e-5, atol=1e-6)


def test_queries_match_gensim():
    ours = _benchmark_vectors()
    theirs = gensim_models.KeyedVectors(50)
    theirs.add_vectors(ours.words, ours.vectors.numpy())
    for positive, negative in (
        (["king"], []),
        (["woman", "king"], ["man"]),
        (["paris"], ["france"]),
    ):
        expected = theirs.most_similar(positive=positive, negative=negative, topn=5)
        got = ours.most_similar(positive, negative, topn=5)
        assert [w for w, _ in got] == [w for w, _ in expected]
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=1e-5)
        cosmul = theirs.most_similar_cosmul(positive=positive, negative=negative, topn=5)
        assert [w for w, _ in ours.most_similar_cosmul(positive, negative, topn=5)] == [
            w for w, _ in cosmul
        ]
    assert ours.similarity("king", "queen") == pytest.approx(
        float(theirs.similarity("king", "queen")), abs=1e-6
    )
    words = ["king", "queen", "prince", "banana"]
    assert ours.doesnt_match(words) == theirs.doesnt_match(words)
    assert ours.most_similar("king", topn=3, restrict_vocab=100)[0][0] in ours.words[:100]


def test_evaluation_matches_gensim():
    ours = _benchmark_vectors()
    theirs = gensim_models.KeyedVectors(50)
    theirs.add_vectors(ours.words, ours.vectors.numpy())
    for path in (WORDSIM, SIMLEX):
        pearson, spearman, oov = theirs.evaluate_word_pairs(str(path))
        got = evaluate_word_pairs(ours, path)
        assert got.pearson == pytest.approx(pearson.statistic, abs=1e-6)
        # float32 dot products summed in another order can swap two near-equal similarities
        # (a rank swap), so Spearman agrees to ~1e-5 rather than exactly
        assert got.spearman == pytest.approx(spearman.statistic, abs=1e-4)
        assert got.oov_ratio == pytest.approx(oov)
    for restrict in (300000, 1500):
        accuracy, sections = theirs.evaluate_word_analogies(str(ANALOGIES), restrict_vocab=restrict)
        got = evaluate_word_analogies(ours, ANALOGIES, restrict_vocab=restrict)
        assert got.accuracy == pytest.approx(accuracy)
        total = sections[-1]
        assert sum(n for _, n in got.sections.values()) == len(total["correct"]) + len(
            total["incorrect"]
        )
        assert got.sections["family"][0] == len(
            next(s for s in sections if s["section"] == "family")["correct"]
        )
    assert got.sections["family"][0] > 0  # the planted structure is found


def _planted_corpus(seed: int = 0):
    """Sentences each drawn from one of 6 topics of 8 words (letters only, so the text splitter
    keeps them whole): same-topic words co-occur."""
    rng = random.Random(seed)
    topics = [[f"t{'abcdef'[t]}w{'abcdefgh'[w]}" for w in range(8)] for t in range(6)]
    sentences = [[rng.choice(topic) for _ in range(10)] for topic in rng.choices(topics, k=2500)]
    return topics, sentences


@pytest.mark.parametrize("method", ["skipgram", "cbow", "glove"])
def test_training_finds_planted_structure(method):
    topics, sentences = _planted_corpus()
    if method == "glove":
        vectors, stats = train_glove(sentences, vector_size=20, window=5, epochs=30, min_count=1)
    else:
        vectors, stats = train_word2vec(
            sentences, method=method, vector_size=20, window=4, epochs=5, min_count=1, sample=0
        )
    assert stats.losses[-1] < stats.losses[0]  # the objective goes down
    topic_of = {w: t for t, words in enumerate(topics) for w in words}
    hits = [
        topic_of[n] == topic_of[w] for w in topic_of for n, _ in vectors.most_similar(w, topn=5)
    ]
    assert sum(hits) / len(hits) > 0.9


def test_one_worker_is_repeatable_and_workers_learn_the_same_structure():
    topics, sentences = _planted_corpus()
    common = dict(vector_size=20, window=4, epochs=5, min_count=1, sample=0, seed=3)
    first, _ = train_word2vec(sentences, workers=1, **common)
    again, _ = train_word2vec(sentences, workers=1, **common)
    assert torch.equal(first.vectors, again.vectors)
    hogwild, stats = train_word2vec(sentences, workers=3, **common)
    assert stats.losses[-1] < stats.losses[0]
    topic_of = {w: t for t, words in enumerate(topics) for w in words}
    hits = [
        topic_of[n] == topic_of[w] for w in topic_of for n, _ in hogwild.most_similar(w, topn=5)
    ]
    assert sum(hits) / len(hits) > 0.9


def test_context_windows_match_a_direct_loop():
    """Every centre's context is exactly the words within its random reach, in its sentence,
    in order, then unused slots (word2vec's dynamic window)."""
    from lmforge.embeddings.train import _context_slots, _context_spans

    rng = random.Random(0)
    sentence = torch.tensor(sorted(rng.randrange(400) for _ in range(3000)))
    first, last = _context_spans(sentence, 5, torch.Generator().manual_seed(7), reduced=True)
    reach = torch.randint(1, 6, (3000,), generator=torch.Generator().manual_seed(7))
    slots, unused = _context_slots(torch.arange(3000), first, last, 5)
    for i in range(3000):
        r = int(reach[i])
        inside = [j for j in range(i - r, i + r + 1) if 0 <= j < 3000 and j != i]
        want = [j for j in inside if sentence[j] == sentence[i]]
        assert slots[i][~unused[i]].tolist() == want
        assert unused[i].tolist() == [False] * len(want) + [True] * (10 - len(want))


@pytest.mark.parametrize("average", [False, True], ids=["skipgram", "cbow"])
def test_batched_step_is_word2vecs_update(average):
    """One step on two windows equals word2vec's update written out pair by pair (with the
    window's negatives shared by its context words, and every update computed from the old
    vectors, as in a batch)."""
    from lmforge.embeddings.train import _negative_sampling_step, _Scratch

    torch.manual_seed(0)
    V, D, lr = 12, 6, 0.1
    w_in, w_out = torch.randn(V, D, dtype=torch.float64), torch.randn(V, D, dtype=torch.float64)
    contexts = torch.tensor([[1, 2, 3], [4, 5, -1]])
    centres, negatives = torch.tensor([6, 7]), torch.tensor([[8, 9], [10, 1]])
    want_in, want_out, want_loss = w_in.clone(), w_out.clone(), []
    batch = zip(contexts.tolist(), centres.tolist(), negatives.tolist(), strict=True)
    for window, centre, noise in batch:
        words = [w for w in window if w >= 0]
        hiddens = [w_in[words].mean(0)] if average else [w_in[w] for w in words]
        for k, hidden in enumerate(hiddens):
            error = torch.zeros(D, dtype=torch.float64)
            want_loss.append(0.0)
            for label, target in [(1.0, centre)] + [(0.0, n) for n in noise]:
                p = torch.sigmoid(hidden @ w_out[target])
                want_loss[-1] -= float(torch.log(p if label else 1 - p))
                g = (label - p) * lr
                want_out[target] += g * hidden
                error += g * w_out[target]
            for word in words if average else [words[k]]:
                want_in[word] += error
    scratch = _Scratch(V, 2, 3, 3, D)
    for name in ("rows", "in_error", "out_vectors", "out_error"):
        setattr(scratch, name, getattr(scratch, name).double())
    loss = _negative_sampling_step(w_in, w_out, contexts, centres, negatives, lr, scratch, average)
    assert loss == pytest.approx(sum(want_loss) / len(want_loss))
    torch.testing.assert_close(w_in, want_in)
    torch.testing.assert_close(w_out, want_out)


def test_shakespeare_skipgram_neighbours():
    sentences = read_corpus("shakespeare")[:40000]
    vectors, stats = train_word2vec(sentences, epochs=3, min_count=5, seed=1)
    assert stats.words_per_second > 0 and len(vectors) > 3000
    royals = {w for w, _ in vectors.most_similar("king", topn=10)}
    assert royals & {"queen", "prince", "duke", "emperor", "lord"}


def test_bad_input_errors(tmp_path):
    with pytest.raises(ConfigError, match="no word occurs min_count=50"):
        train_word2vec([["a", "b"], ["a"]], min_count=50)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ConfigError, match="has no words"):
        read_corpus(empty)
    bad = tmp_path / "bad.txt"
    bad.write_text("2 3\nking 1 2 3\nqueen 1 2\n")
    with pytest.raises(ConfigError, match="line 3: 2 numbers, expected 3"):
        KeyedVectors.load(bad)
    header = tmp_path / "header.bin"
    header.write_bytes(b"two 3\n" + b"\x00" * 40)
    with pytest.raises(ConfigError, match="bad header"):
        KeyedVectors.load(header, binary=True)
    truncated = tmp_path / "trunc.bin"
    _benchmark_vectors().save(truncated, binary=True)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(ConfigError, match=r"record \d+ of \d+ is truncated"):
        KeyedVectors.load(truncated, binary=True)
    vectors = _benchmark_vectors()
    with pytest.raises(ConfigError, match="'zyzzyva' is not in the vocabulary"):
        vectors.most_similar("zyzzyva")
    wrong = tmp_path / "pairs.txt"
    wrong.write_text("just some text\nwithout tabs\n")
    with pytest.raises(ConfigError, match="0 scorable pairs"):
        evaluate_word_pairs(vectors, wrong)
    with pytest.raises(ConfigError, match="method='fasttext'"):
        train_word2vec([["a"]], method="fasttext", min_count=1)
    with pytest.raises(ConfigError, match="workers=0; expected an integer >= 1"):
        train_word2vec([["a", "b"]], min_count=1, workers=0)
    with pytest.warns(UserWarning, match="word2vec trained on nothing"):
        _, stats = train_word2vec([["a"], ["b"]] * 5, min_count=1)  # no word has a context
    assert all(math.isnan(loss) for loss in stats.losses)


def test_embed_cli(tmp_path, capsys):
    from lmforge.cli import main

    topics, sentences = _planted_corpus()
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(" ".join(s) for s in sentences))
    out = tmp_path / "vectors.bin"
    argv = ["embed", "train", "--data", str(text), "--out", str(out), "--binary", "--size", "16",
            "--min-count", "1", "--epochs", "3", "--sample", "0"]  # fmt: skip
    assert main(argv) == 0
    assert gensim_models.KeyedVectors.load_word2vec_format(str(out), binary=True).vector_size == 16
    capsys.readouterr()
    assert main(["embed", "neighbors", str(out), "tawa", "--topn", "3"]) == 0
    neighbours = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert len(neighbours) == 3 and all(w.startswith("ta") for w in neighbours)
    assert main(["embed", "analogy", str(out), "tawa", "tawb", "tbwa"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 5
    assert main(["embed", "plot", str(out), "--top", "20", "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    tsne = [
        "embed",
        "plot",
        str(out),
        "--top",
        "20",
        "--method",
        "tsne",
        "--out",
        str(tmp_path / "t.png"),
    ]
    assert main(tsne) == 0 and (tmp_path / "t.png").stat().st_size > 1000
    assert main(["embed", "neighbors", str(out), "nope"]) == 2
    assert "'nope' is not in the vocabulary" in capsys.readouterr().err
    if not WORDSIM.exists():
        pytest.skip(f"needs {WORDSIM}, which is missing")
    assert main(["embed", "eval", str(out), "--data-dir", str(WORDSIM.parent)]) == 2  # no overlap
    assert "0 scorable pairs" in capsys.readouterr().err


def test_vectors_as_lm_input_embedding():
    from lmforge.embeddings import load_into_embedding

    vectors = _benchmark_vectors()
    vocabulary = ["<unk>", "king", "queen", "notaword", "paris"]
    embedding = torch.nn.Embedding(len(vocabulary), vectors.dim)
    before = embedding.weight.detach().clone()
    assert load_into_embedding(embedding, vocabulary, vectors, freeze=True) == (3, 2)
    torch.testing.assert_close(embedding.weight[1], vectors["king"])
    torch.testing.assert_close(embedding.weight[4], vectors["paris"])
    torch.testing.assert_close(embedding.weight[[0, 3]], before[[0, 3]])
    assert not embedding.weight.requires_grad
    with pytest.raises(ConfigError, match="embedding has 8 dimensions, the vectors 50"):
        load_into_embedding(torch.nn.Embedding(5, 8), vocabulary, vectors)


def test_tsne_keeps_planted_clusters_apart():
    from lmforge.embeddings.plot import tsne_2d

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 50, generator=generator) * 3
    points = torch.cat([c + torch.randn(30, 50, generator=generator) for c in centres])
    labels = torch.arange(4).repeat_interleave(30)
    mapped = tsne_2d(points, perplexity=10, iterations=400)
    distances = torch.cdist(mapped, mapped)
    distances.fill_diagonal_(float("inf"))
    assert (labels[distances.argmin(dim=1)] == labels).float().mean() > 0.95
    with pytest.raises(ConfigError, match="at least 4 points"):
        tsne_2d(points[:3])
