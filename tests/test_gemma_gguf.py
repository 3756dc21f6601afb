"""The shipped Gemma 3 270M (Q4_K_M GGUF, joined from its packages) in our modules against
transformers' loading of the same file (slow: transformers takes about a minute to load it):
the same logits, greedy tokens and token ids, also past the 512-token sliding window; and the
quantised modes' quality on the Hamlet passage."""

from __future__ import annotations

import pytest
import torch

import lmforge
from lmforge.checkpoints import locate_known
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow

TEXTS = [
    "The capital of France is",
    "Héllo wörld, naïve café — 東京 🙂 emoji; 2024 and 31415 digits\n\n  two  spaces\tand a tab",
    "def f(x):\n    return x ** 2  # a comment <start_of_turn>user",
    "   leading spaces and trailing   ",
]


@pytest.fixture(scope="module")
def gemma_path():
    path = locate_known("gemma3-270m")
    assert path is not None, "the Gemma 3 packages are not installed; run the tests via `make test`"
    return path


@pytest.fixture(scope="module")
def gemma(gemma_path):
    return lmforge.load(gemma_path, quantize="none", compile=False)


@pytest.fixture(scope="module")
def hf_gemma(gemma_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gemma_path.parent, gguf_file=gemma_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gemma_path.parent, gguf_file=gemma_path.name, dtype=torch.float32
    )
    return model.eval(), tokenizer


def shakespeare_ids(gemma, n: int) -> list[int]:
    text = (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()[:20_000]
    ids = gemma.tokenizer.encode(text)[:n]
    assert len(ids) == n
    return ids


def test_the_name_resolves_through_package_metadata(gemma, gemma_path):
    assert gemma_path.name == "gemma-3-270m-q4_k_m.gguf"
    info = gemma.info()
    assert info["family"] == "gemma3" and info["layers"] == 18
    assert gemma.model.config.layer_types.count("full_attention") == 3


@pytest.mark.parametrize("n", [64, 700])  # 700: past the 512-token sliding window
def test_logits_match_transformers(gemma, hf_gemma, n):
    ids = torch.tensor([shakespeare_ids(gemma, n)])
    with torch.no_grad():
        ours, theirs = gemma.model(ids)[0], hf_gemma[0](ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-3


def test_token_ids_match_transformers(gemma, hf_gemma):
    for text in TEXTS:
        assert gemma.tokenizer.encode(text) == hf_gemma[1](text)["input_ids"], text
        ids = gemma.tokenizer.encode(text)[1:]  # (after <bos>)
        assert gemma.tokenizer.decode(ids, skip_special_tokens=False) == text


def greedy_tokens_agree(gemma, hf_model, ids: list[int], n: int) -> bool:
    """Both decode `n` greedy tokens after `ids` with their caches (EOS banned on both sides:
    transformers' min_new_tokens, a -100 logit bias here)."""
    ours = gemma.generate(ids, max_new_tokens=n, logit_bias={1: -100.0}).token_ids
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n
        )
    return ours == out[0, len(ids) :].tolist()


def test_same_32_greedy_tokens_as_transformers(gemma, hf_gemma):
    ids = gemma.tokenizer.encode("The capital of France is")
    assert greedy_tokens_agree(gemma, hf_gemma[0], ids, 32)


def test_decoding_across_the_window_with_the_cache_matches_transformers(gemma, hf_gemma):
    """A 500-token prompt and 40 new tokens: the sliding layers' window moves during decoding."""
    assert greedy_tokens_agree(gemma, hf_gemma[0], shakespeare_ids(gemma, 500), 40)


def test_the_default_precision_keeps_the_hamlet_likelihood(gemma, gemma_path):
    """The file's block weights are mostly Q5_0, so "auto" runs int8: its mean NLL of the first
    1000 Hamlet tokens is within 0.02 nats of float32 (the bar the SmolLM2 modes meet in
    test_quantize). (int4 is not: `benchmarks/gemma.py` measures every mode.)"""
    from tests.test_quantize import _hamlet_ids, _mean_nll

    ids = _hamlet_ids(gemma.tokenizer)
    default = lmforge.load(gemma_path, compile=False)
    assert default.precision == "int8 (auto: the GGUF's block weights are Q5_0)"
    assert abs(_mean_nll(default, ids) - _mean_nll(gemma, ids)) <= 0.02
