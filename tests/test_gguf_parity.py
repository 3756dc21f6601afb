"""The shipped SmolLM2 GGUF in our modules vs transformers' loading of the same file."""

import pytest
import torch

PASSAGE = (
    "The history of the city begins in the Roman period, when a small settlement grew up on the north "
    "bank of the river. Over the following centuries it became a centre of trade, and merchants from "
    "across the continent came to its markets to buy wool, cloth and wine. The old walls still stand "
    "today, and every summer thousands of visitors walk along them to look out over the valley."
)


def test_logits_match_transformers(smollm, hf_smollm):
    hf_model, _ = hf_smollm
    ids = smollm.tokenizer.encode(PASSAGE)[:64]
    assert len(ids) == 64
    x = torch.tensor([ids])
    with torch.no_grad():
        ours, _ = smollm.model(x)
        theirs = hf_model(x).logits
    assert (ours - theirs).abs().max().item() <= 1e-3


def test_same_32_greedy_tokens_as_transformers(smollm, hf_smollm):
    hf_model, _ = hf_smollm
    ids = smollm.tokenizer.encode("The capital of France is")
    eos = smollm.tokenizer.eos_ids[0]
    # transformers' min_new_tokens bans EOS; a -100 logit bias does the same on our side.
    ours = smollm.generate(ids, max_new_tokens=32, logit_bias={eos: -100.0}).token_ids
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([ids]), max_new_tokens=32, do_sample=False, min_new_tokens=32
        )
    assert ours == out[0, len(ids) :].tolist()


def test_tokenizer_matches_transformers_on_words(smollm, hf_smollm):
    _, hf_tokenizer = hf_smollm
    text = "Hello world! Élan, naïve café — 東京 and 🙂 emoji;\n\n   spaces\tand <|im_start|>user tokens"
    assert (
        smollm.tokenizer.encode(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    )


def test_digits_are_split_one_by_one_like_llama_cpp(smollm):
    # GGUF pre-tokenizer 'smollm' (llama.cpp): every digit is its own pre-token, as in SmolLM2's tokenizer.json.
    pieces = [smollm.tokenizer.decode([i]) for i in smollm.tokenizer.encode("In 2024")]
    assert pieces[-4:] == ["2", "0", "2", "4"]


def test_chat_template_and_eos_come_from_metadata(smollm):
    text = smollm.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert smollm.tokenizer.token(smollm.tokenizer.eos_ids[0]) == "<|im_end|>"
    reply = smollm.chat(
        [{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=40
    )
    assert reply.finish_reason == "eos"
    assert "Paris" in reply.text


def test_cached_conversion_gives_identical_model(smollm, smollm_path):
    import lmforge
    from lmforge.checkpoints import cache

    entry = cache.entry_for(smollm_path)
    assert entry.exists()  # written by the first load
    again = lmforge.load(smollm_path, quantize="none")
    x = torch.tensor([smollm.tokenizer.encode(PASSAGE)])
    with torch.no_grad():
        assert torch.equal(again.model(x)[0], smollm.model(x)[0])
    assert again.tokenizer.encode(PASSAGE) == smollm.tokenizer.encode(PASSAGE)
    assert again.tokenizer.eos_ids == smollm.tokenizer.eos_ids
    assert again.tokenizer.chat_template == smollm.tokenizer.chat_template


@pytest.mark.parametrize("damage", ["config", "weights"])
def test_corrupt_cache_entry_falls_back_to_the_file(
    tmp_path, monkeypatch, smollm, smollm_path, damage
):
    import lmforge
    from lmforge.checkpoints import cache

    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path))
    entry = cache.entry_for(smollm_path)
    cache.save_converted(entry, smollm.model, smollm.tokenizer)
    if damage == "config":
        (entry / "lmforge_config.json").write_text("{not json")
    else:
        weights = entry / cache.WEIGHTS_FILE
        with weights.open("r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    lm = lmforge.load(smollm_path)
    assert (
        lm.generate("The capital of France is", max_new_tokens=2).text.strip().startswith("Paris")
    )
