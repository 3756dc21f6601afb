"""Small random GPT-2 and Llama checkpoints saved by transformers load into our GPT with the same logits."""

import pytest
import torch

import lmforge
from tests.conftest import GPT2_TOKENIZER, save_random_hf_model


def max_logit_diff(directory, hf_model, length=40):
    lm = lmforge.load(directory)
    torch.manual_seed(1)
    ids = torch.randint(0, lm.model.config.vocab_size, (2, length))
    with torch.no_grad():
        ours, _ = lm.model(ids)
        theirs = hf_model(ids).logits
    return (ours - theirs).abs().max().item()


def test_gpt2_safetensors(tiny_gpt2_dir):
    directory, hf_model = tiny_gpt2_dir
    assert max_logit_diff(directory, hf_model) <= 1e-4


def test_llama_gqa_untied_safetensors(tiny_llama_dir):
    directory, hf_model = tiny_llama_dir
    assert max_logit_diff(directory, hf_model) <= 1e-4


@pytest.mark.parametrize(
    "overrides",
    [
        {"tie_word_embeddings": True, "num_key_value_heads": 4},
        {
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            }
        },
        {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "rope_theta": 500000.0},
        {"attention_bias": True, "mlp_bias": True},
    ],
    ids=["tied-mha", "llama3-rope", "linear-rope", "biases"],
)
def test_llama_variants(tmp_path, overrides):
    hf_model = save_random_hf_model(tmp_path, "llama", **overrides)
    assert max_logit_diff(tmp_path, hf_model, length=100) <= 1e-4


def test_sharded_safetensors(tmp_path):
    hf_model = save_random_hf_model(tmp_path, "llama", max_shard_size="2MB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert max_logit_diff(tmp_path, hf_model) <= 1e-4


def test_pytorch_model_bin(tmp_path):
    hf_model = save_random_hf_model(tmp_path, "gpt2")
    (
        tmp_path / "model.safetensors"
    ).unlink()  # transformers 5 no longer writes .bin; write one as 4.x did
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    assert max_logit_diff(tmp_path, hf_model) <= 1e-4


def test_gpt2_tokenizer_matches_transformers(tiny_gpt2_dir):
    from transformers import GPT2Tokenizer

    directory, _ = tiny_gpt2_dir
    ours = lmforge.load(directory).tokenizer
    theirs = GPT2Tokenizer(
        vocab=str(GPT2_TOKENIZER / "encoder.json"), merges=str(GPT2_TOKENIZER / "vocab.bpe")
    )
    texts = [
        "Hello, my dog is cute",
        "Café déjà vu — naïve façade, Ünïcödé àccents",
        "Emoji: 🙂🚀👩‍👩‍👧 and flags 🇫🇷",
        "中文字符 日本語のテキスト 한국어",
        "spaces   and\ttabs\n\n\nnewlines    end  ",
        "<|endoftext|> special in text",
    ]
    for text in texts:
        ids = ours.encode(text)
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == text
