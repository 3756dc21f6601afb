"""Trained tokenizers (round trips, files other tools read) and corpora with their token cache."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.batches import RandomWindows, Streams
from lmforge.data.corpus import Corpus, strip_gutenberg
from lmforge.data.tokens import split_tokens, token_dtype, tokenize_corpus
from lmforge.errors import ConfigError
from lmforge.tokenizers import Tokenizer
from lmforge.tokenizers.train import (
    train_bpe_tokenizer,
    train_char_tokenizer,
    train_word_tokenizer,
)
from tests.conftest import SHARED_DATA

TINY = SHARED_DATA / "tinyshakespeare" / "input.txt"


@functools.cache
def sample() -> str:
    """The first 50,000 characters of Tiny Shakespeare (read when a test first needs them)."""
    return TINY.read_text()[:50_000]


@pytest.fixture(scope="module")
def char_tok():
    return train_char_tokenizer([sample()])


@pytest.fixture(scope="module")
def bpe_tok():
    return train_bpe_tokenizer([sample()], vocab_size=600, special_tokens=["<|user|>"])


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_char_tokenizer_round_trips_any_unicode(char_tok, text):
    # Text that spells a special token ("<|endoftext|>": Hypothesis tries the code's own string
    # constants) encodes to that token, as in transformers; decoding keeps it only when asked.
    ids = char_tok.encode(text)
    assert char_tok.decode(ids, skip_special_tokens=False) == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_bpe_tokenizer_round_trips_any_unicode(bpe_tok, text):
    assert bpe_tok.decode(bpe_tok.encode(text), skip_special_tokens=False) == text


@pytest.mark.parametrize("special", ["<|endoftext|>", "<|user|>"])
def test_text_spelling_a_special_token_round_trips(char_tok, bpe_tok, special):
    """The case Hypothesis found: a special token's text comes back when specials are kept."""
    for tok in (char_tok, bpe_tok):
        text = f"a{special}b"
        assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


def test_char_tokenizer_is_one_token_per_seen_character(char_tok):
    ids = char_tok.encode("ROMEO:\nO")
    assert [char_tok.token(i) for i in ids] == list("ROMEO:\nO")
    assert len(char_tok.encode("é")) == 2  # unseen: its two UTF-8 bytes
    strict = train_char_tokenizer(["abc"], byte_fallback=False)
    assert strict.vocab_size == 5  # <|endoftext|>, <unk>, a, b, c
    assert strict.decode(strict.encode("abz"), skip_special_tokens=False) == "ab<unk>"


def test_saved_tokenizers_load_in_tokenizers_and_transformers(tmp_path, bpe_tok, char_tok):
    from transformers import PreTrainedTokenizerFast

    for name, tok in (("bpe", bpe_tok), ("char", char_tok)):
        tok.save(tmp_path / name)
        text = "Good morrow, cousin! Ça va? 日本"
        raw = tokenizers.Tokenizer.from_file(str(tmp_path / name / "tokenizer.json"))
        assert raw.encode(text).ids == tok.encode(text)
        hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / name / "tokenizer.json"))
        assert hf(text)["input_ids"] == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text
        again = Tokenizer.from_hf_directory(tmp_path / name)
        assert again.encode(text) == tok.encode(text) and again.eos_ids == [0]
    assert bpe_tok.encode("<|user|>") == [bpe_tok.backend.token_to_id("<|user|>")]
    assert bpe_tok.vocab_size == 600


def test_word_tokenizer_options():
    text = "The cat sat.\nthe cat ran\nThe end\n"
    tok = train_word_tokenizer([text])
    assert [tok.token(i) for i in tok.encode("The cat\n")] == ["The", "cat", "<eos>"]
    assert tok.decode(tok.encode("The cat\nsat.")) == "The cat\n sat."
    assert tok.token(tok.encode("zebra")[0]) == "<unk>"
    lower = train_word_tokenizer([text], lowercase=True, min_frequency=2)
    assert {lower.token(i) for i in range(lower.vocab_size)} == {
        "<|endoftext|>", "<unk>", "<eos>", "the", "cat",
    }  # fmt: skip
    capped = train_word_tokenizer([text], max_vocab=5)
    assert capped.vocab_size == 5
    with pytest.raises(ConfigError, match="max_vocab"):
        train_word_tokenizer([text], max_vocab=2)
    with pytest.raises(ConfigError, match="no words"):
        train_word_tokenizer(["   "])


def test_bpe_vocab_too_small_is_refused():
    with pytest.raises(ConfigError, match="vocab_size=100 is too small"):
        train_bpe_tokenizer(["hello"], vocab_size=100)


def test_corpora_files_globs_jsonl_and_shakespeare(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / "b.txt").write_text("second file\n")
    assert list(Corpus(tmp_path).texts()) == ["first file\n", "second file\n"]
    assert len(Corpus(str(tmp_path / "*.txt")).files) == 2
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert list(Corpus(jsonl, field="body").texts()) == ["one", "two"]
    with pytest.raises(
        ConfigError, match="d.jsonl:1: expected an object with a string field 'text'"
    ):
        list(Corpus(jsonl).texts())
    with pytest.raises(ConfigError, match="does not exist"):
        Corpus(tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="matches no file"):
        Corpus(str(tmp_path / "*.md"))

    works = Corpus("shakespeare")
    assert len(works.files) >= 36
    hamlet = next(t for p, t in zip(works.files, works.texts(), strict=True) if "hamlet" in p.name)
    assert "To be, or not to be" in hamlet and "Gutenberg" not in hamlet


def test_strip_gutenberg_removes_header_footer_and_licence():
    text = (
        "The Project Gutenberg EBook\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n"
        "<<THIS ELECTRONIC VERSION IS COPYRIGHT 1990-1993 BY WORLD LIBRARY>>\n"
        "HAMLET. To be.\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nlicence text\n"
    )
    assert strip_gutenberg(text) == "HAMLET. To be.\n"


def test_token_cache_is_built_once_and_reused(tmp_path, char_tok, monkeypatch):
    import lmforge.data.tokens as tokens_module

    corpus_file = tmp_path / "c.txt"
    corpus_file.write_text(sample()[:5000])
    first = tokenize_corpus(Corpus(corpus_file), char_tok, root=tmp_path / "cache")
    assert first.dtype == np.uint16 and len(first) == 5000
    assert char_tok.decode(first.tolist()) == sample()[:5000]

    def fail(*args):
        raise AssertionError("rebuilt a cached corpus")

    monkeypatch.setattr(tokens_module, "_build", fail)
    again = tokenize_corpus(Corpus(corpus_file), char_tok, root=tmp_path / "cache")
    assert np.array_equal(first, again)
    corpus_file.write_text("changed")  # an edited file is a new corpus
    with pytest.raises(AssertionError, match="rebuilt"):
        tokenize_corpus(Corpus(corpus_file), char_tok, root=tmp_path / "cache")


def test_token_dtype_widens_for_large_vocabularies_and_documents_are_separated(tmp_path):
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32  # no overflow: ids up to 65536 need 17 bits
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "1.txt").write_text("ab")
    (tmp_path / "docs" / "2.txt").write_text("ba")
    tok = train_char_tokenizer(["ab"])
    ids = tokenize_corpus(Corpus(tmp_path / "docs"), tok, root=tmp_path / "cache").tolist()
    assert ids == tok.encode("ab") + [0] + tok.encode("ba")


def test_empty_corpus_and_bad_splits_are_clear_errors(tmp_path, char_tok):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        tokenize_corpus(Corpus(empty), char_tok, root=tmp_path / "cache")
    with pytest.raises(ConfigError, match="val_fraction"):
        split_tokens(np.arange(10), val_fraction=1.5)
    with pytest.raises(ConfigError, match="fewer than one block"):
        RandomWindows(np.arange(10), block_size=64, batch_size=2, seed=0)


def test_splits_are_contiguous_and_deterministic():
    splits = split_tokens(np.arange(1000), 0.1, 0.05)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (850, 100, 50)
    assert splits.val[0] == 850 and splits.test[0] == 950


def test_batches_resume_exactly_and_streams_cover_the_text():
    tokens = np.arange(10_000) % 65
    a = RandomWindows(tokens, 16, 4, seed=3)
    a.next()
    state = a.state_dict()
    expected = a.next()[0]
    b = RandomWindows(tokens, 16, 4, seed=99)
    b.load_state_dict(state)
    assert np.array_equal(b.next()[0], expected)
    x, y, first = a.next()
    assert (y[:, :-1] == x[:, 1:]).all() and not first

    streams = Streams(np.arange(100), block_size=8, batch_size=4)
    seen, starts = [], []
    for _ in range(streams.steps_per_epoch):
        x, y, first = streams.next()
        seen.append(x)
        starts.append(first)
        assert (y == x + 1).all()
    assert starts == [True] + [False] * (len(starts) - 1)
    rows = np.concatenate(seen, axis=1)
    assert rows[1].tolist() == list(range(25, 49))  # stream 1 is the second quarter
    assert streams.next()[2] is True  # a new epoch starts
