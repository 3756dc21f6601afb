"""The Hugging Face Marian layout for lmforge's Transformer encoder-decoder, read and written with one
name table.

Why Marian: of transformers' encoder-decoders it is the one whose layout is the original
Transformer's, as `Seq2SeqTransformer` builds it: sinusoidal (not learned) positions, embeddings
scaled by sqrt(d_model), post-norm layers with no embedding norm and no final norm, biases on
every projection, and one matrix shared by both embeddings and the output layer. BART adds an
embedding LayerNorm and learned positions; T5 drops biases and uses relative positions. A Marian
checkpoint loads in `MarianMTModel`, runs in `pipeline("translation")`, and converts with
CTranslate2's `ct2-transformers-converter`.
"""

from __future__ import annotations

from typing import Any

import torch

from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer, marian_positions
from lmforge.tokenizers import Tokenizer

# our layer part -> Marian's, per stack; attention weights are split/joined q, k, v
_ENCODER = {
    "self_attn.out_proj": "self_attn.out_proj",
    "norm1": "self_attn_layer_norm",
    "linear1": "fc1",
    "linear2": "fc2",
    "norm2": "final_layer_norm",
}
_DECODER = {
    "self_attn.out_proj": "self_attn.out_proj",
    "norm1": "self_attn_layer_norm",
    "multihead_attn.out_proj": "encoder_attn.out_proj",
    "norm2": "encoder_attn_layer_norm",
    "linear1": "fc1",
    "linear2": "fc2",
    "norm3": "final_layer_norm",
}
_ATTENTION = {"self_attn": "self_attn", "multihead_attn": "encoder_attn"}


def can_write(model) -> bool:
    """Whether `model` has Marian's layout (a post-norm Transformer encoder-decoder)."""
    return isinstance(model, Seq2SeqTransformer) and not model.config.norm_first


def marian_config(config: Seq2SeqConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    """config.json for `MarianMTModel`."""
    return {
        "model_type": "marian",
        "architectures": ["MarianMTModel"],
        "is_encoder_decoder": True,
        "vocab_size": config.vocab_size,
        "decoder_vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "encoder_layers": config.n_layer,
        "decoder_layers": config.n_decoder_layer,
        "encoder_attention_heads": config.n_head,
        "decoder_attention_heads": config.n_head,
        "encoder_ffn_dim": config.d_ff,
        "decoder_ffn_dim": config.d_ff,
        "activation_function": config.activation,
        "dropout": config.dropout,
        "attention_dropout": config.dropout,
        "activation_dropout": config.dropout,
        "max_position_embeddings": config.max_seq_len,
        "scale_embedding": True,
        "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True,
        "pad_token_id": config.pad_id,
        "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.start_id,
        "forced_eos_token_id": None,
        "bos_token_id": tokenizer.bos_id,
    }


def marian_generation_config(config: Seq2SeqConfig) -> dict[str, Any]:
    """generation_config.json: transformers' default would stop at 20 tokens."""
    return {
        "decoder_start_token_id": config.start_id,
        "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id,
        "max_length": config.max_seq_len,
        "num_beams": 1,
        "suppress_tokens": [config.pad_id],  # padding is never a prediction
    }


def marian_tensors(model: Seq2SeqTransformer) -> dict[str, torch.Tensor]:
    """Our weights under Marian's names (shared embedding stored once, as `model.shared`)."""
    c = model.config
    state = model.state_dict()
    out = {
        "model.shared.weight": state["embed.weight"],
        "final_logits_bias": torch.zeros(1, c.vocab_size, dtype=state["embed.weight"].dtype),
    }
    positions = marian_positions(c.max_seq_len, c.d_model).to(state["embed.weight"].dtype)
    for stack, parts, count in (
        ("encoder", _ENCODER, c.n_layer),
        ("decoder", _DECODER, c.n_decoder_layer),
    ):
        out[f"model.{stack}.embed_positions.weight"] = positions.clone()
        for i in range(count):
            ours, theirs = f"transformer.{stack}.layers.{i}.", f"model.{stack}.layers.{i}."
            for part, name in parts.items():
                for kind in ("weight", "bias"):
                    out[f"{theirs}{name}.{kind}"] = state[f"{ours}{part}.{kind}"]
            for part, name in _ATTENTION.items():
                if f"{ours}{part}.in_proj_weight" not in state:
                    continue
                weights = state[f"{ours}{part}.in_proj_weight"].chunk(3)
                biases = state[f"{ours}{part}.in_proj_bias"].chunk(3)
                for proj, w, b in zip(("q", "k", "v"), weights, biases, strict=True):
                    out[f"{theirs}{name}.{proj}_proj.weight"] = w
                    out[f"{theirs}{name}.{proj}_proj.bias"] = b
    return out


def config_from_marian(hf: dict[str, Any], source: str) -> Seq2SeqConfig:
    """Our config for a Marian config.json (one shared vocabulary, equal encoder/decoder widths)."""
    try:
        if hf.get("decoder_vocab_size", hf["vocab_size"]) != hf["vocab_size"]:
            raise CheckpointError(
                f"{source}: separate source and target vocabularies are not supported"
            )
        if hf.get("normalize_before") or hf.get("add_final_layer_norm"):
            raise CheckpointError(f"{source}: a pre-norm Marian model is not supported")
        if (
            hf["encoder_attention_heads"] != hf["decoder_attention_heads"]
            or hf["encoder_ffn_dim"] != hf["decoder_ffn_dim"]
        ):
            raise CheckpointError(
                f"{source}: encoder and decoder of different widths are not supported"
            )
        return Seq2SeqConfig(
            vocab_size=hf["vocab_size"],
            kind="transformer",
            d_model=hf["d_model"],
            n_head=hf["encoder_attention_heads"],
            n_layer=hf["encoder_layers"],
            n_decoder_layer=hf["decoder_layers"],
            d_ff=hf["encoder_ffn_dim"],
            dropout=hf.get("dropout", 0.1),
            activation=hf.get("activation_function", "relu"),
            max_seq_len=hf.get("max_position_embeddings", 512),
            pad_id=hf["pad_token_id"],
            start_id=hf.get("decoder_start_token_id", hf["pad_token_id"]),
            eos_id=hf["eos_token_id"],
            extra={"source_format": "huggingface-marian"},
        )
    except KeyError as exc:
        raise CheckpointError(f"{source}: a Marian config.json needs {exc}") from None
    except ConfigError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def model_from_marian(
    hf: dict[str, Any], tensors: dict[str, torch.Tensor], source: str
) -> Seq2SeqTransformer:
    """A `Seq2SeqTransformer` holding a Marian checkpoint's weights."""
    config = config_from_marian(hf, source)
    model = Seq2SeqTransformer(config)
    expected = marian_tensors(model)
    wanted = {k for k in expected if ".embed_positions." not in k and k != "final_logits_bias"}
    missing = sorted(wanted - set(tensors))
    if missing:
        raise CheckpointError(
            f"{source}: not a Marian checkpoint of this shape; missing {missing[:5]}"
        )
    bias = tensors.get("final_logits_bias")
    if bias is not None and bool(bias.abs().max() > 0):
        raise CheckpointError(f"{source}: a non-zero final_logits_bias is not supported")
    ours = {}
    names = {v: k for k, v in _flat_names(config).items()}
    for theirs, ours_name in names.items():
        ours[ours_name] = tensors[theirs]
    for stack, count in (("encoder", config.n_layer), ("decoder", config.n_decoder_layer)):
        for i in range(count):
            for part, name in _ATTENTION.items():
                if stack == "encoder" and part == "multihead_attn":
                    continue
                prefix = f"model.{stack}.layers.{i}.{name}"
                ours[f"transformer.{stack}.layers.{i}.{part}.in_proj_weight"] = torch.cat(
                    [tensors[f"{prefix}.{p}_proj.weight"] for p in "qkv"]
                )
                ours[f"transformer.{stack}.layers.{i}.{part}.in_proj_bias"] = torch.cat(
                    [tensors[f"{prefix}.{p}_proj.bias"] for p in "qkv"]
                )
    ours["embed.weight"] = tensors["model.shared.weight"]
    ours["lm_head.weight"] = ours["embed.weight"]
    model.load_state_dict(ours)
    return model.eval()


def _flat_names(config: Seq2SeqConfig) -> dict[str, str]:
    """Our name -> Marian's, for every tensor that maps one to one."""
    names = {}
    for stack, parts, count in (
        ("encoder", _ENCODER, config.n_layer),
        ("decoder", _DECODER, config.n_decoder_layer),
    ):
        for i in range(count):
            for part, name in parts.items():
                for kind in ("weight", "bias"):
                    names[f"transformer.{stack}.layers.{i}.{part}.{kind}"] = (
                        f"model.{stack}.layers.{i}.{name}.{kind}"
                    )
    return names
