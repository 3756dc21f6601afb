"""Text embeddings from a language model's hidden states and from word vectors."""

from __future__ import annotations

import json

import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.embeddings import KeyedVectors
from lmforge.embeddings.texts import embed_with_word_vectors
from lmforge.errors import ConfigError

TEXTS = ["The cat sat on the mat.", "Hi", "A much longer sentence about stock markets falling."]


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_a_batch_embeds_each_text_as_alone(smollm, pooling):
    batch = smollm.embed(TEXTS, pooling=pooling)
    assert batch.shape == (3, 576)
    assert torch.allclose(batch.norm(dim=1), torch.ones(3), atol=1e-5)
    for text, vector in zip(TEXTS, batch, strict=True):
        assert torch.allclose(smollm.embed(text, pooling=pooling), vector, atol=1e-5)
    raw = smollm.embed(TEXTS[0], pooling=pooling, normalize=False)
    states = smollm.model.hidden(torch.tensor([smollm.tokenizer.encode(TEXTS[0])]))[0]
    expected = states.mean(dim=0) if pooling == "mean" else states[-1]
    assert torch.allclose(raw, expected.float(), atol=1e-5)


def test_empty_and_too_long_texts(tiny_gpt2_dir):
    lm = lmforge.load(tiny_gpt2_dir[0])  # a context of 128 tokens
    with pytest.raises(ConfigError, match="input 1 is empty"):
        lm.embed(["fine", " "])
    long = " ".join(["word"] * 200)
    with pytest.raises(ConfigError, match="has 200 tokens; this model reads at most 128"):
        lm.embed(long)
    cut = lm.embed(long, truncate=True)
    assert torch.allclose(cut, lm.embed(" ".join(["word"] * 128)), atol=1e-5)


def test_word_vectors_embed_a_text_as_its_mean_word(tmp_path, capsys):
    words = KeyedVectors(["cat", "sat", "mat"], torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))
    vector = embed_with_word_vectors(words, ["The cat sat, unknownword!"], normalize=False)[0]
    assert torch.allclose(vector, torch.tensor([0.5, 1.0]))
    with pytest.raises(ConfigError, match="no word in the vectors' vocabulary"):
        embed_with_word_vectors(words, ["nothing known"])
    path = tmp_path / "vectors.txt"
    words.save(path)
    assert main(["embed", "text", "cat mat", "--vectors", str(path)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["text"] == "cat mat" and line["embedding"] == pytest.approx([1.0, 0.0])


def test_word_vectors_serve_as_an_embeddings_model():
    import openai

    from lmforge.serve import Settings, create_vectors_app
    from tests.serving import Server

    words = KeyedVectors(["cat", "sat", "mat"], torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))
    running = Server(None, app=create_vectors_app(words, Settings(model_id="words")))
    try:
        client = running.client()
        reply = client.embeddings.create(model="words", input=["cat sat", "mat"])
        expected = embed_with_word_vectors(words, ["cat sat", "mat"])
        assert torch.allclose(torch.tensor([d.embedding for d in reply.data]), expected)
        with pytest.raises(openai.BadRequestError, match="no word in the vectors"):
            client.embeddings.create(model="words", input="dog")
        assert [m.id for m in client.models.list()] == ["words"]
    finally:
        running.stop()
