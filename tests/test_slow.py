"""The long runs (`make test-slow`): learning to nanoGPT-like losses, long parity windows, and a
server soak lives in test_reliability.py. Each checks real behaviour at a size the default suite
cannot afford."""

from __future__ import annotations

import pytest

import lmforge
from lmforge.training import TrainConfig, train
from tests.conftest import SHARED_DATA

TINY = SHARED_DATA / "tinyshakespeare" / "input.txt"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_small_gpt_learns_shakespeare(tmp_path, family):
    """nanoGPT's CPU model (4 layers, 4 heads, 128 wide, block 64) for 600 steps: the validation
    loss falls far below a unigram model's (~3.3 nats) and the samples are English-like."""
    config = TrainConfig(data=str(TINY), arch="gpt", family=family, preset="micro", block_size=64,
                         batch_size=12, steps=600, eval_interval=200, lr=1e-3, min_lr=1e-4,
                         warmup=50, dropout=0.0, eval_tokens=20_000)  # fmt: skip
    result = train(config, tmp_path / family)
    losses = [e["val_loss"] for e in result.evaluations]
    assert losses == sorted(losses, reverse=True), losses  # every evaluation improves
    assert losses[-1] < 2.3, losses
    lm = lmforge.load(tmp_path / family)
    text = lm.generate(
        "ROMEO:", max_new_tokens=200, temperature=0.8, top_k=40, seed=0, truncate="left"
    ).text  # past the 64-token context: the cache is rebuilt from the newest half
    words = text.split()
    assert len(words) > 20 and sum(w.isalpha() for w in words) > len(words) / 2, text


def test_an_lstm_learns_words(tmp_path):
    """word_language_model's LSTM on word-level Shakespeare: perplexity well under the vocabulary's."""
    config = TrainConfig(data=str(TINY), arch="lstm", tokenizer="word", lowercase=True,
                         min_frequency=3, block_size=35, batch_size=20, steps=400,
                         eval_interval=200, optimizer="sgd", lr=20.0, min_lr=0.0,
                         schedule="plateau", warmup=0, grad_clip=0.25, weight_decay=0.0,
                         n_embd=200, eval_tokens=20_000)  # fmt: skip
    result = train(config, tmp_path / "lstm")
    vocab = lmforge.load(tmp_path / "lstm").tokenizer.vocab_size
    assert result.evaluations[-1]["val_ppl"] < vocab / 10, (vocab, result.evaluations)
