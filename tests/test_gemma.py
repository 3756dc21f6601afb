"""Gemma 3 in our GPT: a small random transformers Gemma3ForCausalLM (sliding-window and full
layers, a head size apart from d_model, its own query scale, soft-capped scores and logits)
gives the same logits and greedy tokens in lmforge, through its cache and past its window; its
bundle loads back in transformers. The shipped Gemma 3 270M GGUF against transformers is in
`test_gemma_gguf.py` (slow)."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.checkpoints.bundle import save_bundle
from lmforge.checkpoints.load import load_checkpoint
from lmforge.models.gpt import GPTConfig
from tests.conftest import write_gpt2_tokenizer

WINDOW = 8


def save_random_gemma3(directory, **overrides):
    """A random Gemma 3 text model with 3 layers (sliding, full, sliding) and a window of 8."""
    import transformers

    settings = dict(
        vocab_size=50257, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        sliding_window=WINDOW, query_pre_attn_scalar=24, initializer_range=0.2,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
        bos_token_id=50256, eos_token_id=50256, pad_token_id=50256,
        attn_implementation="eager",
    )  # fmt: skip
    settings.update(overrides)
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**settings)).eval()
    with torch.no_grad():  # norms start at zero (a scale of 1); make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    model.save_pretrained(directory)
    write_gpt2_tokenizer(directory)
    return model


def random_gemma3(directory, softcapped: bool):
    """(reference, our LM, directory); soft-capped: transformers' Gemma 3 caps the logits and
    ignores the attention cap"""
    caps = {"attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0}
    reference = save_random_gemma3(directory, **(caps if softcapped else {}))
    return reference, lmforge.load(directory, compile=False), directory


@pytest.fixture(scope="module", params=["plain", "softcapped"])
def gemma(request, tmp_path_factory):
    return random_gemma3(tmp_path_factory.mktemp("gemma3"), request.param == "softcapped")


@pytest.fixture(scope="module")
def capped_gemma(tmp_path_factory):
    return random_gemma3(tmp_path_factory.mktemp("capped"), softcapped=True)


def test_the_config_reads_every_gemma3_setting(gemma):
    _, lm, _ = gemma
    c: GPTConfig = lm.model.config
    assert (c.embed_scale, c.norm_offset, c.qk_norm, c.post_norms) == (True,) * 4
    assert (c.mlp, c.head_dim, c.n_kv_head, c.sliding_window) == ("geglu", 32, 2, WINDOW)
    assert c.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert (c.rope_theta, c.rope_local_theta) == (1e6, 1e4)
    assert c.query_scale == pytest.approx(24**-0.5)
    assert [block.sliding for block in lm.model.blocks] == [True, False, True]


def test_logits_match_transformers_past_the_sliding_window(gemma):
    reference, lm, _ = gemma
    ids = torch.randint(0, 50000, (2, 5 * WINDOW), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = lm.model(ids)[0]
        theirs = reference(ids).logits
    assert (ours - theirs).abs().max() <= 1e-4
    if reference.config.final_logit_softcapping:
        assert ours.abs().max() < 3.0  # the cap holds


def test_cached_greedy_decoding_matches_transformers_beyond_the_window(gemma):
    reference, lm, _ = gemma
    prompt = lm.tokenizer.encode("The quick brown fox")
    ours = lm.generate(prompt, max_new_tokens=4 * WINDOW, logit_bias={50256: -100.0}).token_ids
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([prompt]), max_new_tokens=4 * WINDOW, do_sample=False,
            min_new_tokens=4 * WINDOW,
        )  # fmt: skip
    assert ours == out[0, len(prompt) :].tolist()


def test_a_batch_of_prompts_of_different_lengths_decodes_as_each_alone(gemma):
    _, lm, _ = gemma
    prompts = ["Hello", "A longer prompt, with more words in it than the window"]
    batched = lm.generate(prompts, max_new_tokens=12, logit_bias={50256: -100.0})
    for prompt, result in zip(prompts, batched, strict=True):
        alone = lm.generate(prompt, max_new_tokens=12, logit_bias={50256: -100.0})
        assert result.token_ids == alone.token_ids


def test_the_bundle_is_a_gemma3_checkpoint_transformers_loads(gemma, tmp_path):
    from transformers import AutoModelForCausalLM

    _, lm, _ = gemma
    save_bundle(lm.model, lm.tokenizer, tmp_path / "bundle")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "bundle", attn_implementation="eager")
    ids = torch.tensor([lm.tokenizer.encode("a sentence longer than the sliding window of eight")])
    with torch.no_grad():
        expected = lm.model(ids)[0]
        assert (again.eval()(ids).logits - expected).abs().max() <= 1e-4
        reloaded = load_checkpoint(tmp_path / "bundle").model
        assert torch.equal(reloaded(ids)[0], expected)


def test_int8_gemma_stays_close_to_float(gemma):
    """(int4 on the real model: `test_gemma_gguf.py`; random weights are no test of 4 bits)"""
    _, lm, directory = gemma
    quantised = lmforge.load(directory, quantize="int8", compile=False)
    ids = torch.tensor([lm.tokenizer.encode("The quick brown fox jumps over the lazy dog")])
    with torch.no_grad():
        ours, exact = quantised.model(ids)[0].float(), lm.model(ids)[0]
    # (a random model's top logits lie too close together to compare argmaxes)
    assert (ours - exact).abs().mean() < 0.1 * exact.abs().mean()


def test_soft_capped_attention_scores_are_capped_before_the_softmax():
    """(Gemma 2's `attn_logit_softcapping`; transformers' Gemma 3 ignores it, and so do we there)"""
    from lmforge.models.gpt import GPT

    config = GPTConfig(vocab_size=100, n_layer=1, n_head=2, d_model=32, max_seq_len=16,
                       norm="rmsnorm", mlp="swiglu", position="rope", attn_softcap=0.5)  # fmt: skip
    torch.manual_seed(0)
    model = GPT(config).eval()
    attention = model.blocks[0].attn
    x = torch.randn(1, 6, 32)
    q, k, v = attention.qkv(x).view(1, 6, 3, 2, 16).permute(2, 0, 3, 1, 4)
    from lmforge.models.rope import apply_rope, rope_angles

    rope = rope_angles(torch.arange(6)[None], model.inv_freq, x.dtype)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    scores = 0.5 * torch.tanh(q @ k.transpose(-1, -2) / 16**0.5 / 0.5)
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    expected = attention.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 6, 32))
    with torch.no_grad():
        ours = attention(x, rope, None, 0, None)
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_gguf_export_of_gemma_says_to_use_a_bundle(gemma, tmp_path):
    _, lm, _ = gemma
    with pytest.raises(lmforge.ConfigError, match=r"Gemma 3 model exports as a bundle"):
        lmforge.export_gguf(lm, tmp_path / "g.gguf")


def test_a_model_shipped_in_parts_is_joined_once_and_checked(tmp_path, monkeypatch):
    import hashlib
    import importlib

    # (the package exports the function `resolve`, which hides the module of that name)
    resolving = importlib.import_module("lmforge.checkpoints.resolve")

    parts = {f"pkg-part{i}": (tmp_path / f"m.gguf.part0{i}", bytes([i]) * 1000) for i in range(3)}
    for path, data in parts.values():
        path.write_bytes(data)
    whole = b"".join(data for _, data in parts.values())
    known = resolving.KnownModel(
        "pkg", tuple((p, path.name) for p, (path, _) in parts.items()),
        hashlib.sha256(whole).hexdigest(),
    )  # fmt: skip
    monkeypatch.setitem(resolving.KNOWN_MODELS, "parted", known)
    monkeypatch.setattr(resolving, "_package_file", lambda package, name: parts[package][0])
    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    joined = resolving.resolve("parted")
    assert joined == tmp_path / "cache" / "models" / "m.gguf" and joined.read_bytes() == whole
    stamp = joined.stat().st_mtime_ns
    assert resolving.resolve("parted").stat().st_mtime_ns == stamp  # joined once
    joined.unlink()
    damaged = resolving.KnownModel(known.install, known.parts, "0" * 64)
    monkeypatch.setitem(resolving.KNOWN_MODELS, "parted", damaged)
    with pytest.raises(lmforge.CheckpointError, match="parts join to sha256"):
        resolving.resolve("parted")
    assert not joined.exists() and not list(joined.parent.iterdir())  # no partial file left


def test_a_compiled_step_decodes_as_eagerly_past_the_window(capped_gemma):
    _, lm, directory = capped_gemma
    compiled = lmforge.load(directory, compile="now")
    prompt = lm.tokenizer.encode("The quick brown fox")
    options = dict(max_new_tokens=3 * WINDOW, logit_bias={50256: -100.0})
    assert (
        compiled.generate(prompt, **options).token_ids == lm.generate(prompt, **options).token_ids
    )
    assert compiled.model.compiled_decoder.compiled_layouts  # the steps did run compiled


def test_lora_fine_tuning_trains_a_gemma_and_the_adapter_loads(capped_gemma, tmp_path):
    _, lm, directory = capped_gemma
    data = tmp_path / "fox.txt"
    data.write_text("The quick brown fox jumps over the lazy dog.\n" * 40)
    tuned = lmforge.finetune(
        directory, data, tmp_path / "run", task="lm", lora=True, steps=8, block_size=16,
        batch_size=2, warmup=0, lr=1e-2, eval_interval=8, val_fraction=0.1, test_fraction=0.0,
    )  # fmt: skip
    ids = torch.tensor([lm.tokenizer.encode("The quick brown fox jumps")])
    with torch.no_grad():
        assert not torch.allclose(tuned.model(ids)[0], lm.model(ids)[0], atol=1e-3)


def test_a_gemma3_trained_here_is_a_checkpoint_transformers_loads(tmp_path):
    from transformers import AutoModelForCausalLM

    from lmforge.models.presets import build_model
    from lmforge.tokenizers.train import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["The quick brown fox jumps over the lazy dog. " * 50], 300)
    model = build_model("gpt", 300, 32, family="gemma3", n_layer=3, n_head=2, n_embd=32).eval()
    assert model.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    save_bundle(model, tokenizer, tmp_path / "bundle")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "bundle").eval()
    ids = torch.randint(0, 300, (1, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (reference(ids).logits - model(ids)[0]).abs().max() <= 1e-4


def test_explain_traces_show_each_layers_window(gemma):
    _, lm, _ = gemma
    ids = torch.tensor([lm.tokenizer.encode("a sentence that is longer than the window of eight")])
    record = lm.model.trace(ids)
    seen = [int((weights[0, 0, -1] > 0).sum()) for weights in record.attentions]
    assert seen == [WINDOW, ids.shape[1], WINDOW]  # sliding, full, sliding
    assert torch.allclose(record.logits, lm.model(ids)[0], atol=1e-5)


def test_the_server_batches_gemma_requests_as_generate_decodes_them(capped_gemma):
    """Four concurrent completions through the OpenAI client, two past the window: the
    continuous batcher's shared cache gives each what `generate` gives it alone."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.serving import Server

    _, lm, _ = capped_gemma
    prompts = ["Hello", "The quick brown fox jumps over the lazy dog and then", "A", "One two"]
    server = Server(lm)
    try:
        client = server.client()

        def complete(prompt: str) -> str:
            reply = client.completions.create(
                model="smollm2-135m-instruct", prompt=prompt, max_tokens=12, temperature=0,
                logit_bias={"50256": -100},
            )  # fmt: skip
            return reply.choices[0].text

        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(complete, prompts))
    finally:
        server.stop()
    alone = [lm.generate(p, max_new_tokens=12, logit_bias={50256: -100.0}).text for p in prompts]
    assert texts == alone


def test_perplexity_with_a_sliding_window_of_context(capped_gemma):
    from lmforge.evaluation.perplexity import perplexity

    _, lm, _ = capped_gemma
    text = "The quick brown fox jumps over the lazy dog. " * 6
    ids = lm.tokenizer.encode(text)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids]))[0][0]
    expected = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()
    whole = perplexity(lm.model, lm.tokenizer, text)
    assert whole.tokens == len(ids) - 1 and abs(whole.loss - expected) < 1e-4
    strided = perplexity(lm.model, lm.tokenizer, text, context=32, stride=16)
    assert strided.tokens == whole.tokens and strided.loss != whole.loss  # less context each
