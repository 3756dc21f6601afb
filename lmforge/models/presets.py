"""Build any lmforge architecture from a name and a few hyper-parameters.

`build_model("gpt", vocab_size, block_size, preset="micro")` gives a freshly initialised model;
options left as None take the architecture's (or preset's) default.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lmforge.errors import ConfigError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.gpt_config import GEMMA3
from lmforge.models.rnn import RNNLM, RNNConfig
from lmforge.models.seq2seq import Seq2SeqConfig, Seq2SeqGRU, Seq2SeqTransformer
from lmforge.models.transformer import TransformerConfig, TransformerLM

ARCHITECTURES = ("rnn", "lstm", "gru", "transformer", "gpt", "seq2seq", "seq2seq-gru")
# name -> (n_layer, n_head, n_embd). "micro" is nanoGPT's CPU setting, "small" its Shakespeare one.
GPT_PRESETS = {
    "nano": (3, 3, 48),
    "micro": (4, 4, 128),
    "mini": (6, 6, 192),
    "small": (6, 6, 384),
    "gpt2": (12, 12, 768),
}
GPT_FAMILIES = ("gpt2", "llama", "gemma3")


def _family_config(
    family: str, n_embd: int, bias: bool | None, n_layer: int, block_size: int
) -> dict[str, Any]:
    """The parts that make a GPT a GPT-2 (LayerNorm, GELU, learned positions, biases, scaled
    residual init), a Llama (RMSNorm, SwiGLU, RoPE, no biases, transformers' flat init) or a
    Gemma 3 (Llama's, with GeGLU, (1 + w) norms, q/k norms and post-norms, scaled embeddings,
    and five sliding-window layers of a quarter of the context for each full one, the last layer
    full); all three export to transformers."""
    if family == "gpt2":
        # erf GELU as nanoGPT trains it (transformers' activation_function "gelu")
        has_bias = True if bias is None else bias
        return dict(
            norm="layernorm",
            mlp="gelu_exact",
            position="learned",
            qkv_bias=has_bias,
            out_bias=has_bias,
            mlp_bias=has_bias,
            norm_bias=has_bias,
            extra={"family": "gpt2"},
        )
    if family == "llama":
        if bias:
            raise ConfigError("bias=True: the llama family has no biases; use family='gpt2'")
        d_ff = -(-int(8 * n_embd / 3) // 32) * 32  # 8/3 d keeps SwiGLU's parameters at 4d's
        return dict(
            norm="rmsnorm",
            norm_eps=1e-5,
            mlp="swiglu",
            position="rope",
            d_ff=d_ff,
            qkv_bias=False,
            out_bias=False,
            mlp_bias=False,
            scaled_residual_init=False,
            extra={"family": "llama"},
        )
    if family == "gemma3":
        if bias:
            raise ConfigError("bias=True: the gemma3 family has no biases; use family='gpt2'")
        full = [(i + 1) % 6 == 0 or i == n_layer - 1 for i in range(n_layer)]
        return dict(
            **GEMMA3,
            norm_eps=1e-6,
            rope_theta=1e6,
            rope_local_theta=1e4,
            d_ff=4 * n_embd,
            sliding_window=max(block_size // 4, 1),
            layer_types=["full_attention" if f else "sliding_attention" for f in full],
            scaled_residual_init=False,
            extra={"family": "gemma3"},
        )
    raise ConfigError(f"family={family!r}; expected one of {GPT_FAMILIES}")


def model_config(
    arch: str,
    vocab_size: int,
    block_size: int,
    preset: str | None = None,
    family: str = "gpt2",
    n_layer: int | None = None,
    n_head: int | None = None,
    n_embd: int | None = None,
    hidden_size: int | None = None,
    d_ff: int | None = None,
    dropout: float | None = None,
    tie_embeddings: bool | None = None,
    bias: bool | None = None,
    nonlinearity: str = "tanh",
    special_ids: dict[str, int] | None = None,
):
    """The config dataclass of `arch` with these hyper-parameters (validated). Encoder-decoders
    take the tokenizer's `special_ids` (pad_id, start_id, eos_id)."""
    given = lambda value, default: default if value is None else value  # noqa: E731
    tie = given(tie_embeddings, True)
    if arch in ("seq2seq", "seq2seq-gru"):
        # seq2seq: bentrevett's Transformer (3 + 3 layers, d 256, 8 heads, FFN 512);
        # seq2seq-gru: his attention GRU (embeddings 256, GRUs of 512, dropout 0.5).
        transformer = arch == "seq2seq"
        return Seq2SeqConfig(
            vocab_size=vocab_size,
            kind="transformer" if transformer else "gru",
            d_model=given(n_embd, 256),
            n_head=given(n_head, 8),
            n_layer=given(n_layer, 3),
            d_ff=given(d_ff, 512),
            hidden_size=given(hidden_size, 512),
            dropout=given(dropout, 0.1 if transformer else 0.5),
            max_seq_len=block_size,
            **(special_ids or {}),
        )
    if arch in ("rnn", "lstm", "gru"):
        cell = {"rnn": f"rnn_{nonlinearity}", "lstm": "lstm", "gru": "gru"}[arch]
        size = given(n_embd, 200)
        return RNNConfig(
            vocab_size=vocab_size,
            cell=cell,
            d_model=size,
            hidden_size=given(hidden_size, size),
            n_layer=given(n_layer, 2),
            dropout=given(dropout, 0.2),
            tie_embeddings=tie,
        )
    if arch == "transformer":
        return TransformerConfig(
            vocab_size=vocab_size,
            d_model=given(n_embd, 256),
            n_head=given(n_head, 4),
            n_layer=given(n_layer, 4),
            d_ff=d_ff,
            dropout=given(dropout, 0.1),
            max_seq_len=block_size,
            tie_embeddings=tie,
        )
    if arch == "gpt":
        if preset is not None and preset not in GPT_PRESETS:
            raise ConfigError(f"preset={preset!r}; expected one of {sorted(GPT_PRESETS)}")
        layers, heads, width = GPT_PRESETS[preset or "micro"]
        width, layers = given(n_embd, width), given(n_layer, layers)
        settings = _family_config(family, width, bias, layers, block_size)
        if d_ff is not None:
            settings["d_ff"] = d_ff
        return GPTConfig(
            vocab_size=vocab_size,
            n_layer=layers,
            n_head=given(n_head, heads),
            d_model=width,
            max_seq_len=block_size,
            tie_embeddings=tie,
            dropout=given(dropout, 0.0),
            **settings,
        )
    raise ConfigError(f"arch={arch!r}; expected one of {ARCHITECTURES}")


# config.json "model_type" of our own bundles -> (config class, model class)
MODEL_TYPES = {
    "lmforge-rnn": (RNNConfig, RNNLM),
    "lmforge-transformer": (TransformerConfig, TransformerLM),
    "lmforge-gpt": (GPTConfig, GPT),
    "lmforge-seq2seq-transformer": (Seq2SeqConfig, Seq2SeqTransformer),
    "lmforge-seq2seq-gru": (Seq2SeqConfig, Seq2SeqGRU),
}


def model_from_config(config) -> nn.Module:
    """A freshly initialised model for a config dataclass."""
    if isinstance(config, GPTConfig):
        model = GPT(config)
        model.init_weights()
        return model
    if isinstance(config, RNNConfig):
        return RNNLM(config)
    if isinstance(config, TransformerConfig):
        return TransformerLM(config)
    if isinstance(config, Seq2SeqConfig):
        return Seq2SeqTransformer(config) if config.kind == "transformer" else Seq2SeqGRU(config)
    raise ConfigError(f"no model for config type {type(config).__name__}")


def build_model(arch: str, vocab_size: int, block_size: int, **options) -> nn.Module:
    """A freshly initialised model of `arch` (see `model_config` for the options)."""
    return model_from_config(model_config(arch, vocab_size, block_size, **options))


def model_type(model: nn.Module) -> str:
    """The config.json "model_type" lmforge writes for `model` when it is not an HF family."""
    for name, (_, cls) in MODEL_TYPES.items():
        if isinstance(model, cls):
            return name
    raise ConfigError(f"{type(model).__name__} is not an lmforge model")
