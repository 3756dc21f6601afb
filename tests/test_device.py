"""`device=`: the option is checked, and every tensor the engine, the server and the evaluators
make goes to the model's device. Without a GPU the second is checked by making "meta" the
default device: a tensor created without the model's device lands there and fails the run.
The CUDA tests at the end run only where PyTorch sees a GPU."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.device import model_device, resolve_device
from lmforge.errors import ConfigError
from lmforge.models.quantized import (
    Int4Linear,
    Int8ViaInt4Linear,
    head_reads_embedding,
    pack_int4,
    quantize_int4_groups,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TINY_SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare/input.txt"


def test_device_option_is_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ConfigError, match=r"device='gpu'; expected one of auto, cpu, cuda"):
        resolve_device("gpu")
    with pytest.raises(ConfigError, match=r"device='cuda:x'"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device='cuda' but PyTorch sees no CUDA GPU"):
            lmforge.load("smollm2-135m-instruct", device="cuda")
    else:
        with pytest.raises(ConfigError, match=r"cuda:99.*CUDA GPU\(s\)"):
            resolve_device("cuda:99")


def test_cli_rejects_a_bad_device_before_loading(capsys):
    from lmforge.cli import main

    assert main(["generate", "--device", "tpu", "--max-new-tokens", "1", "hi"]) != 0
    assert "device='tpu'; expected one of" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama_dir):
    return lmforge.load(tiny_llama_dir[0])


@pytest.fixture
def meta_by_default():
    """Factory calls without a device make meta tensors for the test's duration."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


OPTIONS = [
    {},
    {"do_sample": True, "seed": 3, "top_k": 20, "top_p": 0.9, "temperature": 0.8},
    {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "logit_bias": {5: 3.0}},
    {"frequency_penalty": 0.5, "presence_penalty": 0.5, "top_logprobs": 3},
    {"num_beams": 3},
    {"prompt_lookup_num_tokens": 3},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "greedy")
def test_generation_makes_its_tensors_on_the_models_device(tiny_lm, options, meta_by_default):
    prompts = ["hello world hello world", "a b"]
    with torch.device("cpu"):
        expected = tiny_lm.generate(prompts, max_new_tokens=6, **options)
    assert tiny_lm.generate(prompts, max_new_tokens=6, **options) == expected


def test_speculative_draft_model_and_evaluators_on_the_models_device(tiny_lm, meta_by_default):
    from lmforge.evaluation.bias import sentence_logprob
    from lmforge.evaluation.perplexity import token_nll

    ids = tiny_lm.encode("one two three four five")
    with torch.device("cpu"):
        plain = tiny_lm.generate("one two three", max_new_tokens=8)
        losses = token_nll(tiny_lm.model, ids, context=4, stride=2)
        logprob = sentence_logprob(tiny_lm, "one two three")
    speculative = tiny_lm.generate("one two three", max_new_tokens=8, draft_model=tiny_lm)
    assert speculative.token_ids == plain.token_ids  # (logprobs of a multi-token pass round apart)
    assert torch.equal(token_nll(tiny_lm.model, ids, context=4, stride=2), losses)
    assert sentence_logprob(tiny_lm, "one two three") == logprob


def _serve_synchronously(lm, requests: list[tuple[str, dict]]) -> list[str]:
    """Run the server's batcher in this thread until every request is done; their texts."""
    from lmforge.serve.batcher import Batcher, Job

    loop = asyncio.new_event_loop()
    batcher = Batcher(lm, max_batch=2, cache_len=64, background=False)
    jobs = [Job([lm.encode(p)], options, loop, math.inf) for p, options in requests]
    for job in jobs:
        batcher.submit(job)
    with torch.inference_mode():
        while batcher.waiting or any(batcher.rows):
            batcher._admit()
            batcher._choose_tokens()
            batcher._forward()
    loop.run_until_complete(asyncio.sleep(0))
    texts = []
    for job in jobs:
        items = [job.events.get_nowait() for _ in range(job.events.qsize())]
        for item in items:
            assert not isinstance(item, Exception), item
        texts.append("".join(item[1].text for item in items if isinstance(item, tuple)))
    loop.close()
    return texts


@pytest.mark.parametrize("arch", ["gpt", "gru", "transformer"])
def test_server_rows_make_their_tensors_on_the_models_device(arch, tiny_lm, tmp_path):
    """Every row store (KV cache, recurrent state, token window) and the batcher's sampling."""
    if arch == "gpt":
        lm = tiny_lm
    else:
        from lmforge.training import TrainConfig, train

        corpus = tmp_path / "text.txt"
        corpus.write_text(TINY_SHAKESPEARE.read_text()[:5_000])
        config = TrainConfig(data=str(corpus), arch=arch, steps=2, eval_interval=2,
                             block_size=16, batch_size=4, n_layer=1, n_embd=16, n_head=2,
                             eval_tokens=100)  # fmt: skip
        train(config, tmp_path / "run")
        lm = lmforge.load(tmp_path / "run")
    requests = [
        ("ab", {"max_new_tokens": 5}),
        ("abc", {"max_new_tokens": 7, "do_sample": True, "seed": 1, "repetition_penalty": 1.2}),
        ("b", {"max_new_tokens": 3}),
    ]
    expected = _serve_synchronously(lm, requests)
    assert all(expected)
    torch.set_default_device("meta")
    try:
        assert _serve_synchronously(lm, requests) == expected
    finally:
        torch.set_default_device(None)


def test_int4_codes_read_back_through_the_kernel_repack_exactly():
    """The move between devices reads a layer's int4 codes back through the kernel (identity
    input, scale 1, zero 0) and repacks them: exact for both int4 layers."""
    weight = torch.randn(40, 96)
    layer = Int4Linear.from_float(weight, None, 32)
    codes, _, _ = quantize_int4_groups(torch.nn.functional.pad(weight, (0, 0, 0, 8)), 32)
    assert torch.equal(layer.int4_codes(), codes)
    assert torch.equal(pack_int4(layer.int4_codes()), layer.packed)

    q = torch.randint(-128, 128, (24, 64), dtype=torch.int8)
    q[0, :2] = torch.tensor([-128, 127])
    head = Int8ViaInt4Linear.from_int8(q, torch.rand(24) + 0.1)
    high, low = torch.split(head.int4_codes(), head.half)
    assert torch.equal(((high - 8) * 16 + low)[:24], q.int())


def test_a_tied_quantised_head_stays_tied_through_a_move(smollm_path):
    """Buffers move one by one, so a move would leave SmolLM2's int8 head a copy of the
    embedding (twice the memory, and a fine-tune would update only one)."""
    model = lmforge.load(smollm_path, quantize="int8").model
    assert head_reads_embedding(model)
    model._apply(lambda t: t.clone())  # what a move does to every tensor
    assert head_reads_embedding(model)


def test_info_names_the_device(tiny_lm):
    assert tiny_lm.info()["device"] == "cpu"
    assert model_device(tiny_lm.model) == torch.device("cpu")


# ---- on a CUDA GPU -------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("quantize", ["none", "int4"])
def test_every_decoding_option_runs_on_cuda(smollm, quantize):
    """The same options on a GPU; the quality of each mode there is checked in test_quantize."""
    lm = lmforge.load("smollm2-135m-instruct", quantize=quantize, device="cuda")
    assert model_device(lm.model).type == "cuda"
    expected = smollm.generate("The capital of France is", max_new_tokens=8).token_ids
    if quantize == "none":  # float32 on both: the same greedy tokens
        assert lm.generate("The capital of France is", max_new_tokens=8).token_ids == expected
    for options in OPTIONS:
        assert lm.generate(["hello hello", "a"], max_new_tokens=5, **options)
    assert lm.generate("Hi", max_new_tokens=5, draft_model=lm).token_ids


@needs_cuda
def test_int4_layers_give_the_same_products_on_cuda_and_the_cpu():
    layer = Int4Linear.from_float(torch.randn(200, 576), torch.randn(200), 32)
    x = torch.randn(3, 576)
    expected = layer(x).float()
    moved = layer.to("cuda")
    torch.testing.assert_close(moved(x.cuda()).float().cpu(), expected, atol=0.05, rtol=0.02)
    assert torch.equal(moved.int4_codes().cpu(), layer.cpu().int4_codes())
