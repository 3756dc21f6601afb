"""GGUF export (`lmforge export`, `lmforge.export_gguf`): files lmforge's own loader reads back
with the same logits, the metadata and tensor layouts llama.cpp expects (read back with `gguf`),
an unchanged Q4_1 model written back bit for bit, and clear refusals. llama.cpp itself runs the
exported files in `test_gguf_llamacpp.py` (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lmforge
from lmforge.checkpoints.gguf import GGUFFile, unpermute_rope_rows
from lmforge.checkpoints.gguf_export import export_gguf
from lmforge.checkpoints.load import load_checkpoint
from lmforge.cli import main
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.lora import apply_lora
from lmforge.tokenizers.train import train_bpe_tokenizer, train_tokenizer
from tests.conftest import SHARED_DATA

TEXT = "Héllo wörld, naïve café — 東京 🙂 emoji; 2024 and 31415 digits\nROMEO:\nBut soft!"


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return (SHARED_DATA / "tinyshakespeare" / "input.txt").read_text()[:100_000]


@pytest.fixture(scope="module")
def bpe(shakespeare):
    return train_bpe_tokenizer([shakespeare], vocab_size=512)


def tiny_gpt(family: str, std: float = 0.2, vocab_size: int = 520) -> GPT:
    """A small random GPT of `family` (its vocabulary a little larger than the tokenizer's, as
    trained models often pad it); `std` sets how sharp its logits are."""
    if family == "llama":
        config = GPTConfig(
            vocab_size=vocab_size, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=160,
            max_seq_len=128, norm="rmsnorm", mlp="swiglu", position="rope", rope_theta=5e4,
            qkv_bias=False, out_bias=False, mlp_bias=False, tie_embeddings=False,
            extra={"family": "llama"},
        )  # fmt: skip
    else:  # llama.cpp's gpt2 graph: the tanh GELU
        config = GPTConfig(
            vocab_size=vocab_size, n_layer=2, n_head=4, d_model=64, max_seq_len=128, mlp="gelu",
            extra={"family": "gpt2"},
        )  # fmt: skip
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].float()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize(("kind", "tolerance"), [("f32", 1e-4), ("f16", 1e-2)])
def test_an_exported_file_reads_back_with_the_same_logits_and_tokens(
    tmp_path, bpe, shakespeare, family, kind, tolerance
):
    model = tiny_gpt(family)
    path = tmp_path / f"{family}.gguf"
    report = export_gguf(model, bpe, path, type=kind)
    assert report.architecture == family and report.path == path
    back = load_checkpoint(path)
    assert back.model.config.extra["family"] == family
    ids = bpe.encode(shakespeare[:500])[:64]
    assert len(ids) == 64
    difference = (logits(back.model, ids) - logits(model, ids)).abs().max().item()
    assert difference <= tolerance, f"{kind}: logits differ by {difference}"
    assert back.tokenizer.encode(TEXT) == bpe.encode(TEXT)
    assert back.tokenizer.decode(bpe.encode(TEXT)) == TEXT


def test_llama_metadata_tensor_names_and_layouts_are_llama_cpps(tmp_path, bpe):
    model = tiny_gpt("llama")
    export_gguf(model, bpe, tmp_path / "m.gguf", type="f32")
    file = GGUFFile(tmp_path / "m.gguf")
    c = model.config
    expected = {
        "general.architecture": "llama",
        "general.file_type": 0,
        "llama.context_length": 128,
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 160,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.rope.freq_base": 5e4,
        "llama.vocab_size": 520,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.bos_token_id": bpe.bos_id,
        "tokenizer.ggml.eos_token_id": bpe.eos_ids[0],
        "tokenizer.ggml.add_bos_token": False,
    }
    assert {k: file.get(k) for k in expected} == expected
    assert file.get("llama.attention.layer_norm_rms_epsilon") == pytest.approx(c.norm_eps)
    tokens, types = file.get("tokenizer.ggml.tokens"), file.get("tokenizer.ggml.token_type")
    size = bpe.backend.get_vocab_size()
    assert len(tokens) == len(types) == 520  # padded to the embedding, as llama.cpp requires
    assert tokens[size:] == [f"[PAD{i}]" for i in range(size, 520)] and set(types[size:]) == {5}
    assert types[bpe.eos_ids[0]] == 3  # <|endoftext|> is a control token
    assert len(file.get("tokenizer.ggml.merges")) == size - 256 - 1  # bytes, then merges
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in file.reader.tensors}
    assert shapes["token_embd.weight"] == (64, 520)  # ggml lists the row length first
    assert shapes["output.weight"] == (64, 520)  # untied head written
    assert shapes["blk.1.attn_q.weight"] == (64, 64)
    assert shapes["blk.1.attn_k.weight"] == (64, 32)  # 2 kv heads of 16
    assert shapes["blk.1.ffn_gate.weight"] == (64, 160)
    assert shapes["blk.1.ffn_down.weight"] == (160, 64)
    assert len(shapes) == 3 + 9 * 2
    # q rows are in llama.cpp's interleaved RoPE order: un-permuting gives ours back exactly
    stored = file.tensors()
    q = model.blocks[1].attn.qkv.weight[:64]
    assert not torch.equal(stored["blk.1.attn_q.weight"], q)
    assert torch.equal(unpermute_rope_rows(stored["blk.1.attn_q.weight"], 4), q)
    assert all(t.tensor_type.name == "F32" for t in file.reader.tensors)


def test_gpt2_gets_fused_qkv_positions_and_every_bias(tmp_path, bpe):
    config = GPTConfig(vocab_size=512, n_layer=1, n_head=2, d_model=64, max_seq_len=128,
                       mlp="gelu", qkv_bias=False, out_bias=False, mlp_bias=False, norm_bias=False,
                       extra={"family": "gpt2"})  # fmt: skip
    torch.manual_seed(0)
    model = GPT(config).eval()
    export_gguf(model, bpe, tmp_path / "g.gguf", type="q8_0")
    file = GGUFFile(tmp_path / "g.gguf")
    assert file.get("gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
    types = {t.name: t.tensor_type.name for t in file.reader.tensors}
    assert "output.weight" not in types  # tied: llama.cpp reuses the embedding
    for name in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"):
        assert types[f"blk.0.{name}.bias"] == "F32"  # zeros where the model has none
    assert types["output_norm.bias"] == "F32"
    assert types["blk.0.attn_qkv.weight"] == "Q8_0" and types["position_embd.weight"] == "Q8_0"
    back = load_checkpoint(tmp_path / "g.gguf")
    ids = bpe.encode(TEXT)
    expected = logits(model, ids)
    error = (logits(back.model, ids) - expected).abs().max()
    assert error <= 0.01 * expected.abs().max()  # Q8_0: about 1/256 of each block's range


def test_an_unchanged_q4_1_model_exports_bit_exactly(tmp_path, smollm, smollm_path):
    """The shipped Q4_1 file, loaded (float32 here) and written back with --type q4_1: every
    tensor's bytes, and the file's description, are the original's."""
    report = lmforge.export_gguf(smollm, tmp_path / "same.gguf", type="q4_1")
    original, written = GGUFFile(smollm_path), GGUFFile(tmp_path / "same.gguf")
    before = {t.name: t for t in original.reader.tensors}
    assert len(written.reader.tensors) == len(before) == 272
    for tensor in written.reader.tensors:
        assert tensor.tensor_type == before[tensor.name].tensor_type, tensor.name
        assert np.array_equal(np.asarray(tensor.data), np.asarray(before[tensor.name].data))
    assert any("272 unchanged tensors copied bit-exactly" in n for n in report.notes)
    for key in ("general.license", "general.name", "tokenizer.ggml.pre", "tokenizer.chat_template"):
        assert written.get(key) == original.get(key), key
    assert written.get("tokenizer.ggml.tokens") == original.get("tokenizer.ggml.tokens")
    assert written.get("tokenizer.ggml.merges") == original.get("tokenizer.ggml.merges")


def test_a_changed_weight_is_requantised_and_the_rest_still_copied(tmp_path, smollm_path):
    lm = lmforge.load(smollm_path, quantize="int4", compile=False)
    with torch.no_grad():
        lm.model.norm.weight.mul_(2)  # output_norm.weight changes; nothing else
    report = lmforge.export_gguf(lm, tmp_path / "changed.gguf")  # auto: the file's Q4_1
    assert report.file_type == "Q4_1"
    assert any("271 unchanged tensors copied bit-exactly" in n for n in report.notes), report.notes
    written = {t.name: t for t in GGUFFile(tmp_path / "changed.gguf").reader.tensors}
    before = {t.name: t for t in GGUFFile(smollm_path).reader.tensors}
    norm, was = (np.asarray(t["output_norm.weight"].data) for t in (written, before))
    np.testing.assert_allclose(norm, 2 * was, rtol=1e-2)  # (int4 runs its norms in bfloat16)


def test_a_lora_model_exports_with_its_updates_merged(tmp_path, bpe, shakespeare):
    model = tiny_gpt("llama")
    apply_lora(model, ["qkv", "down"], rank=4, alpha=8.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_b" in name:
                p.normal_(0, 0.1)
    export_gguf(model, bpe, tmp_path / "lora.gguf", type="f32")
    back = load_checkpoint(tmp_path / "lora.gguf")
    ids = bpe.encode(shakespeare[:300])[:48]
    assert (logits(back.model, ids) - logits(model, ids)).abs().max() <= 1e-4


def test_bad_input_is_refused_clearly(tmp_path, bpe, shakespeare):
    model = tiny_gpt("llama")
    with pytest.raises(ConfigError, match=r"'q5_k' is not supported; expected one of"):
        export_gguf(model, bpe, tmp_path / "x.gguf", type="q5_k")
    from lmforge.models.presets import build_model

    lstm = build_model("lstm", vocab_size=520, block_size=32)
    with pytest.raises(ConfigError, match=r"RNNLM has no llama.cpp architecture.*--format hf"):
        export_gguf(lstm, bpe, tmp_path / "x.gguf")
    for kind in ("char", "word"):
        tokenizer = train_tokenizer(kind, [shakespeare[:2000]])
        with pytest.raises(ConfigError, match=r"--tokenizer bpe"):
            export_gguf(tiny_gpt("llama"), tokenizer, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    path = tmp_path / "there.gguf"
    path.write_bytes(b"keep me")
    with pytest.raises(CheckpointError, match=r"exists; pass --force"):
        export_gguf(model, bpe, path)
    assert path.read_bytes() == b"keep me"
    export_gguf(model, bpe, path, force=True)
    assert GGUFFile(path).arch == "llama"


def test_an_interrupted_write_leaves_no_file(tmp_path, bpe, monkeypatch):
    import gguf

    def fail(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(KeyboardInterrupt):
        export_gguf(tiny_gpt("llama"), bpe, tmp_path / "half.gguf")
    assert list(tmp_path.iterdir()) == []  # neither the target nor the partial file


def test_the_cli_exports_a_trained_bundle_to_gguf_and_hf(tmp_path, bpe, shakespeare, capsys):
    from lmforge.checkpoints.bundle import save_bundle

    model = tiny_gpt("llama")
    save_bundle(model, bpe, tmp_path / "bundle")
    assert main(["export", str(tmp_path / "bundle"), "--out", str(tmp_path / "m.gguf")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "llama, F32" in out  # auto: a float32 model keeps f32
    ids = bpe.encode(shakespeare[:300])[:40]
    back = load_checkpoint(tmp_path / "m.gguf")
    assert (logits(back.model, ids) - logits(model, ids)).abs().max() <= 1e-4
    assert main(["export", str(tmp_path / "bundle"), "--out", str(tmp_path / "m.gguf")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "m.gguf"), "--format", "hf",
                 "--out", str(tmp_path / "hf")]) == 0  # fmt: skip
    again = load_checkpoint(tmp_path / "hf")
    assert (logits(again.model, ids) - logits(model, ids)).abs().max() <= 1e-4
