"""Every GGUF tensor type we claim, end to end: a tiny Llama written with the `gguf` package's writer,
its linear weights in one tensor type, loaded by us and by transformers (whose dequantiser is its own
code), logits compared."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants
from gguf.constants import GGML_QUANT_SIZES

import lmforge

D_MODEL, D_FF, HEADS, KV_HEADS, LAYERS, CONTEXT = 256, 512, 4, 2, 2, 64
# Byte offsets of the fp16 scale fields in each K-quant block (from ggml's block layouts).
K_QUANT_SCALES = {Q.Q2_K: (-4, -2), Q.Q3_K: (-2,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (-2,)}


def quantized(weight: np.ndarray, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    if qtype == Q.F32:
        return weight.astype(np.float32)
    if qtype == Q.F16:
        return weight.astype(np.float16)
    if qtype not in K_QUANT_SCALES:
        return quants.quantize(weight, qtype)
    # gguf has no K-quant quantiser: random blocks with small, finite scales are valid K-quant data.
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(weight.size // block_elems, block_bytes), dtype=np.uint8)
    for offset in K_QUANT_SCALES[qtype]:
        scale = rng.uniform(0.0005, 0.002, size=len(blocks)).astype(np.float16)
        start = offset % block_bytes
        blocks[:, start : start + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(weight.shape[0], -1)


def write_tiny_llama(path, qtype: Q) -> None:
    from tokenizers.pre_tokenizers import ByteLevel

    rng = np.random.default_rng(0)
    tokens = sorted(ByteLevel.alphabet())
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(D_MODEL)
    writer.add_feed_forward_length(D_FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)

    def normal(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    head_dim = D_MODEL // HEADS
    writer.add_tensor("token_embd.weight", normal(len(tokens), D_MODEL, scale=1.0))
    writer.add_tensor("output_norm.weight", 1 + normal(D_MODEL, scale=0.1))
    writer.add_tensor(
        "output.weight", quantized(normal(len(tokens), D_MODEL), qtype, rng), raw_dtype=qtype
    )
    shapes = {
        "attn_q": (HEADS * head_dim, D_MODEL),
        "attn_k": (KV_HEADS * head_dim, D_MODEL),
        "attn_v": (KV_HEADS * head_dim, D_MODEL),
        "attn_output": (D_MODEL, HEADS * head_dim),
        "ffn_gate": (D_FF, D_MODEL),
        "ffn_up": (D_FF, D_MODEL),
        "ffn_down": (D_MODEL, D_FF),
    }
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", 1 + normal(D_MODEL, scale=0.1))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + normal(D_MODEL, scale=0.1))
        for name, shape in shapes.items():
            writer.add_tensor(
                f"blk.{i}.{name}.weight", quantized(normal(*shape), qtype, rng), raw_dtype=qtype
            )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize(
    "qtype",
    [Q.F32, Q.F16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K],
    ids=lambda q: q.name,
)
def test_tensor_type_matches_transformers(tmp_path, qtype):
    from transformers import AutoModelForCausalLM

    path = tmp_path / f"tiny-{qtype.name}.gguf"
    write_tiny_llama(path, qtype)
    ours = lmforge.load(path, quantize="none")
    assert qtype.name in ours.model.config.extra["quantization"]
    theirs = AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = theirs(ids).logits
        got, _ = ours.model(ids)
    assert expected.abs().max() > 0.1  # the weights are not degenerate
    assert (got - expected).abs().max().item() <= 1e-4


# What quantize="auto" (the default) runs each type as: its precision class.
AUTO_MODES = {"F32": "none", "F16": "bf16", "Q8_0": "int8", "Q6_K": "int8", "Q5_K": "int8",
              "Q5_0": "int8", "Q4_1": "int4", "Q4_0": "int4", "Q4_K": "int4", "Q2_K": "int4"}  # fmt: skip


@pytest.mark.parametrize("type_name", AUTO_MODES)
def test_auto_keeps_the_files_precision_class(tmp_path, type_name):
    path = tmp_path / f"tiny-{type_name}.gguf"
    write_tiny_llama(path, Q[type_name])
    lm = lmforge.load(path)
    mode = AUTO_MODES[type_name]
    assert lm.precision == f"{mode} (auto: the GGUF's block weights are {type_name})"
    assert lm.info()["quantization (runtime)"] == mode
    again = lmforge.load(path)  # from the converted cache: the choice without parsing the file
    assert again.precision == lm.precision
    assert lmforge.load(path, dtype="float32").precision == "none (dtype=float32 given)"


def test_auto_keeps_a_q4_1_files_grid(tmp_path):
    """Q4_1 stores each block of 32 as d * q + m with q in [0, 15]: int4 with a scale and zero
    point per group of 32 is the same grid, so auto's weights are the file's up to the bfloat16
    rounding of d and m (a new grid would be off by up to half a step)."""
    path = tmp_path / "tiny-Q4_1.gguf"
    write_tiny_llama(path, Q.Q4_1)
    file_weights = lmforge.load(path, quantize="none").model.blocks[0].mlp.down.weight
    layer = lmforge.load(path).model.blocks[0].mlp.down
    scales, zeros = layer.scales_and_zeros[..., 0].float(), layer.scales_and_zeros[..., 1].float()
    codes = layer.int4_codes()[: layer.out_features].float()
    group = codes.shape[1] // scales.shape[0]
    step = scales[:, : layer.out_features].t().repeat_interleave(group, dim=1)
    zero = zeros[:, : layer.out_features].t().repeat_interleave(group, dim=1)
    ours = (codes - 8) * step + zero
    assert ((ours - file_weights).abs() / step).max() < 1 / 16
