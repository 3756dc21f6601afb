"""GGUF files (llama.cpp's format) into our `GPT` and `Tokenizer`.

The `gguf` package reads the file and dequantises every tensor type llama.cpp writes (F32, F16,
BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants ...). We map metadata to a `GPTConfig`, undo
llama.cpp's q/k row permutation (it interleaves RoPE pairs; we rotate halves, as transformers
does), and rebuild the tokenizer from the vocabulary and merges stored in the file. The name
tables and pre-tokenizers here are used both ways: `gguf_export` writes with them.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.checkpoints.hf import name_regex
from lmforge.errors import CheckpointError
from lmforge.models.gpt_config import GEMMA3, GPTConfig
from lmforge.tokenizers import Tokenizer

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "gpt2", "gemma3")
# Gemma 3 as llama.cpp runs it: every sixth layer attends to all tokens, the others to a window
# with RoPE base 10000 (neither is stored in the file)
_GEMMA3_FULL_EVERY, _GEMMA3_LOCAL_THETA = 6, 10000.0

# Pre-tokenizer regexes by `tokenizer.ggml.pre`, as llama.cpp (llama-vocab.cpp) defines them.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone")
_SPLITS = {
    "default": _GPT2_SPLIT,
    "gpt2": _GPT2_SPLIT,
    "gpt-2": _GPT2_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


class GGUFFile:
    """A parsed GGUF file: metadata as plain Python values, tensors on demand."""

    def __init__(self, path: Path):
        import gguf

        self.path = path
        try:
            self.reader = gguf.GGUFReader(path)
        except Exception as exc:  # truncated, corrupted, or not GGUF at all
            raise CheckpointError(
                f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})"
            ) from exc
        self.arch = self.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        return default if field is None else field.contents()

    def arch_get(self, key: str, default: Any = None) -> Any:
        return self.get(f"{self.arch}.{key}", default)

    @property
    def quantization(self) -> str:
        from collections import Counter

        counts = Counter(t.tensor_type.name for t in self.reader.tensors)
        return ", ".join(f"{name} x{n}" for name, n in counts.most_common())

    @property
    def weight_type(self) -> str:
        """The most common type of the blocks' matrices: the precision the file was made at
        (the embedding and norms often keep more)."""
        from collections import Counter

        counts = Counter(
            t.tensor_type.name
            for t in self.reader.tensors
            if t.name.startswith("blk.") and len(t.shape) == 2
        )
        return counts.most_common(1)[0][0] if counts else "F32"

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor dequantised to float32, shaped (out, in) like a PyTorch Linear weight."""
        from gguf import quants

        out = {}
        for tensor in self.reader.tensors:
            try:
                array = quants.dequantize(tensor.data, tensor.tensor_type)
            except NotImplementedError as exc:
                raise CheckpointError(
                    f"{self.path}: tensor {tensor.name} uses {tensor.tensor_type.name}, which cannot be dequantised"
                ) from exc
            shape = tuple(int(d) for d in reversed(tensor.shape))
            array = np.asarray(array, dtype=np.float32)
            if not array.flags.writeable:  # F32 tensors come straight from the memory map
                array = array.copy()
            out[tensor.name] = torch.from_numpy(array).reshape(shape)
        return out


def config_from_gguf(file: GGUFFile) -> GPTConfig:
    if file.arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise CheckpointError(
            f"{file.path}: GGUF architecture {file.arch!r} is not supported; "
            f"supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )
    n_head = file.arch_get("attention.head_count")
    d_model = file.arch_get("embedding_length")
    has_output = any(t.name == "output.weight" for t in file.reader.tensors)
    tokens = file.reader.fields.get("tokenizer.ggml.tokens")
    shared = dict(
        vocab_size=file.arch_get("vocab_size") or len(tokens.data),
        n_layer=file.arch_get("block_count"),
        n_head=n_head,
        d_model=d_model,
        d_ff=file.arch_get("feed_forward_length"),
        max_seq_len=file.arch_get("context_length"),
        tie_embeddings=not has_output,
        extra={
            "family": file.arch,
            "source_format": "gguf",
            "quantization": file.quantization,
            "weight_type": file.weight_type,
        },
    )
    if file.arch == "gemma3":
        return _gemma3_config(file, shared)
    if file.arch == "gpt2":  # llama.cpp's gpt2 graph: LayerNorm, tanh GELU, every bias
        return GPTConfig(
            **shared,
            norm="layernorm",
            norm_eps=float(file.arch_get("attention.layer_norm_epsilon", 1e-5)),
            mlp="gelu",
            position="learned",
        )
    return GPTConfig(
        **shared,
        n_kv_head=file.arch_get("attention.head_count_kv") or n_head,
        head_dim=file.arch_get("attention.key_length") or d_model // n_head,
        norm="rmsnorm",
        norm_eps=float(file.arch_get("attention.layer_norm_rms_epsilon", 1e-5)),
        mlp="swiglu",
        position="rope",
        rope_theta=float(file.arch_get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(file),
        qkv_bias=False,
        out_bias=False,
        mlp_bias=False,
    )


def _gemma3_config(file: GGUFFile, shared: dict) -> GPTConfig:
    n_layer = shared["n_layer"]
    layer_types = [
        "full_attention" if (i + 1) % _GEMMA3_FULL_EVERY == 0 else "sliding_attention"
        for i in range(n_layer)
    ]
    return GPTConfig(
        **shared,
        **GEMMA3,
        n_kv_head=file.arch_get("attention.head_count_kv"),
        head_dim=file.arch_get("attention.key_length"),
        norm_eps=float(file.arch_get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(file.arch_get("rope.freq_base", 1e6)),
        rope_scaling=_rope_scaling(file),
        rope_local_theta=_GEMMA3_LOCAL_THETA,
        sliding_window=file.arch_get("attention.sliding_window"),
        layer_types=layer_types,
    )


def _rope_scaling(file: GGUFFile) -> dict[str, Any] | None:
    if file.arch_get("rope.scaling.type") == "linear":
        return {"rope_type": "linear", "factor": file.arch_get("rope.scaling.factor")}
    return None


# GGUF tensor name -> ours, by architecture ({i}: the block; {p}: weight or bias). Llama's q/k/v
# and gate/up are separate in GGUF and fused in our modules; GPT-2's q|k|v is fused in both.
GGUF_NAMES = {
    "llama": {
        "token_embd.weight": "embed.weight",
        "output_norm.weight": "norm.weight",
        "output.weight": "lm_head.weight",
        "blk.{i}.attn_norm.weight": "blocks.{i}.attn_norm.weight",
        "blk.{i}.ffn_norm.weight": "blocks.{i}.mlp_norm.weight",
        "blk.{i}.attn_q.weight": "blocks.{i}.attn.q.weight",
        "blk.{i}.attn_k.weight": "blocks.{i}.attn.k.weight",
        "blk.{i}.attn_v.weight": "blocks.{i}.attn.v.weight",
        "blk.{i}.attn_output.weight": "blocks.{i}.attn.out.weight",
        "blk.{i}.ffn_gate.weight": "blocks.{i}.mlp.gate.weight",
        "blk.{i}.ffn_up.weight": "blocks.{i}.mlp.up.weight",
        "blk.{i}.ffn_down.weight": "blocks.{i}.mlp.down.weight",
    },
    "gemma3": {
        "token_embd.weight": "embed.weight",
        "output_norm.weight": "norm.weight",
        "blk.{i}.attn_norm.weight": "blocks.{i}.attn_norm.weight",
        "blk.{i}.post_attention_norm.weight": "blocks.{i}.attn_post_norm.weight",
        "blk.{i}.ffn_norm.weight": "blocks.{i}.mlp_norm.weight",
        "blk.{i}.post_ffw_norm.weight": "blocks.{i}.mlp_post_norm.weight",
        "blk.{i}.attn_q.weight": "blocks.{i}.attn.q.weight",
        "blk.{i}.attn_k.weight": "blocks.{i}.attn.k.weight",
        "blk.{i}.attn_v.weight": "blocks.{i}.attn.v.weight",
        "blk.{i}.attn_q_norm.weight": "blocks.{i}.attn.q_norm.weight",
        "blk.{i}.attn_k_norm.weight": "blocks.{i}.attn.k_norm.weight",
        "blk.{i}.attn_output.weight": "blocks.{i}.attn.out.weight",
        "blk.{i}.ffn_gate.weight": "blocks.{i}.mlp.gate.weight",
        "blk.{i}.ffn_up.weight": "blocks.{i}.mlp.up.weight",
        "blk.{i}.ffn_down.weight": "blocks.{i}.mlp.down.weight",
    },
    "gpt2": {
        "token_embd.weight": "embed.weight",
        "position_embd.weight": "pos_embed.weight",
        "output_norm.{p}": "norm.{p}",
        "output.weight": "lm_head.weight",
        "blk.{i}.attn_norm.{p}": "blocks.{i}.attn_norm.{p}",
        "blk.{i}.attn_qkv.{p}": "blocks.{i}.attn.qkv.{p}",
        "blk.{i}.attn_output.{p}": "blocks.{i}.attn.out.{p}",
        "blk.{i}.ffn_norm.{p}": "blocks.{i}.mlp_norm.{p}",
        "blk.{i}.ffn_up.{p}": "blocks.{i}.mlp.up.{p}",
        "blk.{i}.ffn_down.{p}": "blocks.{i}.mlp.down.{p}",
    },
}


# GGUF -> ours (reading) and ours -> GGUF (writing), from the one table
READ_RULES = {a: [(name_regex(g), o) for g, o in t.items()] for a, t in GGUF_NAMES.items()}
WRITE_RULES = {a: [(name_regex(o), g) for g, o in t.items()] for a, t in GGUF_NAMES.items()}


def rename(name: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    """`name` through the first rule that matches it, or None."""
    for regex, target in rules:
        match = regex.match(name)
        if match:
            return target.format(**match.groupdict())
    return None


def permute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order: per head, (first halves, second halves) -> pairs interleaved."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, 2, half, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k permutation: per head, rows (pairs interleaved) -> (first halves, second halves)."""
    half = weight.shape[0] // n_heads // 2
    return weight.reshape(n_heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def weights_from_gguf(file: GGUFFile, config: GPTConfig) -> dict[str, torch.Tensor]:
    """GGUF tensors renamed to our module names, Llama's q/k un-permuted (q/k/v still separate)."""
    renamed = {}
    for name, tensor in file.tensors().items():
        if name.startswith("rope_freqs"):
            continue
        ours = rename(name, READ_RULES[file.arch])
        if ours is None:
            raise CheckpointError(
                f"{file.path}: unexpected tensor {name!r} for a {file.arch} model"
            )
        renamed[ours] = tensor
    if file.arch == "gemma3":  # llama.cpp stores Gemma's (1 + w) norm scales; we keep w
        return {k: v - 1 if "norm" in k else v for k, v in renamed.items()}
    if file.arch == "gpt2":
        return renamed
    for i in range(config.n_layer):
        renamed[f"blocks.{i}.attn.q.weight"] = unpermute_rope_rows(
            renamed[f"blocks.{i}.attn.q.weight"], config.n_head
        )
        renamed[f"blocks.{i}.attn.k.weight"] = unpermute_rope_rows(
            renamed[f"blocks.{i}.attn.k.weight"], config.n_kv_head
        )
    return renamed


def pre_tokenizer_for(pre: str):
    """The `tokenizers` pre-tokenizer of llama.cpp's `tokenizer.ggml.pre` name (GPT-2's split for
    a name it does not know)."""
    from tokenizers import Regex, pre_tokenizers

    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
    if pre in ("default", "gpt2", "gpt-2"):  # GPT-2's split is ByteLevel's own regex
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    split = pre_tokenizers.Split(Regex(_SPLITS.get(pre, _GPT2_SPLIT)), behavior="isolated")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return pre_tokenizers.Sequence([split, byte_level])


def _sentencepiece_backend(tokens: list[str], token_types: list[int]):
    """SentencePiece BPE (Gemma's) as a `tokenizers` BPE: spaces are "▁", unknown characters
    fall back to their bytes (<0xE2> ...), and merges are rebuilt from the vocabulary, which
    stores none: every split of a token into two tokens, earlier tokens first (Gemma's order is
    its tokens' order, not their scores), as transformers rebuilds them."""
    import tokenizers
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    # a whitespace token with spaces is stored as spaces; its pieces are spelled "▁"
    spelled = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(spelled)}
    merges = []
    for token in spelled:
        pairs = [(token[:c], token[c:]) for c in range(1, len(token))]
        pairs = [p for p in pairs if p[0] in vocab and p[1] in vocab]
        # ties (one token, several splits): longer left pieces first
        merges.extend(sorted(pairs, key=lambda p: (-len(p[0]), -len(p[1]))))
    unknown = next((t for t, k in zip(spelled, token_types, strict=True) if k == 2), None)
    backend = tokenizers.Tokenizer(
        models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True, unk_token=unknown)
    )
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return backend


def tokenizer_from_gguf(file: GGUFFile):
    """Rebuild the tokenizer stored in GGUF metadata as a `tokenizers` BPE (byte-level, or
    SentencePiece's with byte fallback)."""
    import tokenizers
    from tokenizers import decoders, models

    kind = file.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise CheckpointError(
            f"{file.path}: tokenizer type {kind!r} is not supported yet; supported: 'gpt2' "
            "(byte-level BPE) and 'llama' (SentencePiece BPE)"
        )
    tokens = file.get("tokenizer.ggml.tokens")
    token_types = file.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if kind == "llama":
        backend = _sentencepiece_backend(tokens, token_types)
    else:
        merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges", [])]
        backend = tokenizers.Tokenizer(
            models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
        )
        pre = file.get("tokenizer.ggml.pre", "default")
        if pre not in _SPLITS and pre not in _DIGITS_THEN_GPT2:
            warnings.warn(
                f"{file.path}: pre-tokenizer {pre!r} is not known to lmforge; using GPT-2's "
                "split, so token ids may differ from the model's own tokenizer",
                stacklevel=2,
            )
        backend.pre_tokenizer = pre_tokenizer_for(pre)
        backend.decoder = decoders.ByteLevel()
    control, user_defined = 3, 4
    known = backend.get_vocab()  # (a Gemma whitespace token is matched by its "▁" spelling)
    backend.add_special_tokens(
        [
            tokenizers.AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, token_types, strict=True)
            if k == control and t in known
        ]
    )
    backend.add_tokens(
        [
            tokenizers.AddedToken(t, normalized=False)
            for t, k in zip(tokens, token_types, strict=True)
            if k == user_defined and t in known
        ]
    )
    eos = file.get("tokenizer.ggml.eos_token_id")
    eot = file.get("tokenizer.ggml.eot_token_id")
    return Tokenizer(
        backend,
        bos_id=file.get("tokenizer.ggml.bos_token_id"),
        eos_ids=[i for i in (eos, eot) if i is not None],
        pad_id=file.get("tokenizer.ggml.padding_token_id"),
        add_bos=bool(file.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=file.get("tokenizer.chat_template"),
    )
