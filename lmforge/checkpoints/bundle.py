"""Bundles: a trained model as a directory that lmforge (and, for GPT-2 and Llama, transformers)
loads: `config.json`, `model.safetensors`, `tokenizer.json` (+ its config) and
`generation_config.json`.

A GPT in the GPT-2 or Llama layout is written as a genuine Hugging Face checkpoint (their config
keys and weight names), so `AutoModelForCausalLM.from_pretrained(bundle)` gives the same logits.
Other models (RNN, nn.Transformer LM, GPTs mixing the two families) keep our names and a
`model_type` of "lmforge-...". Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.checkpoints.hf import INVERSE_RULES
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.tokenizers import Tokenizer


def hf_family(config: GPTConfig) -> str | None:
    """ "gpt2" or "llama" when the config is exactly expressible as that HF architecture."""
    square = config.n_head * config.head_dim == config.d_model
    if (
        config.norm == "layernorm"
        and config.mlp in ("gelu", "gelu_exact")
        and config.position == "learned"
        and config.n_kv_head == config.n_head
        and square
    ):
        return "gpt2"  # missing biases are written as zeros: the same function
    if (
        config.norm == "rmsnorm"
        and config.mlp == "swiglu"
        and config.position == "rope"
        and config.qkv_bias == config.out_bias
    ):
        return "llama"
    return None


def hf_config(config: GPTConfig, family: str, tokenizer: Tokenizer) -> dict[str, Any]:
    """The `config.json` of the Hugging Face model that computes what `config` does (`family`
    from `hf_family`); `transformers.AutoConfig.for_model(**it)` reads it."""
    ids = {
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_ids[0] if tokenizer.eos_ids else None,
        "pad_token_id": tokenizer.pad_id,
    }
    if family == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": config.vocab_size,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_embd": config.d_model,
            "n_inner": config.d_ff,
            "n_positions": config.max_seq_len,
            "layer_norm_epsilon": config.norm_eps,
            "activation_function": "gelu_new" if config.mlp == "gelu" else "gelu",
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": 0.0,
            "tie_word_embeddings": config.tie_embeddings,
            **ids,
        }
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling,
        "attention_bias": config.qkv_bias,
        "mlp_bias": config.mlp_bias,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        **ids,
    }


_PREFIX = {"gpt2": "transformer.", "llama": "model."}


def _hf_tensors(model: GPT, family: str) -> dict[str, torch.Tensor]:
    """Our state dict under HF names: q/k/v and gate/up split again, GPT-2's Conv1D transposed."""
    config = model.config
    ours: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if family == "llama" and ".attn.qkv." in name:
            sizes = [config.n_head * config.head_dim] + [config.n_kv_head * config.head_dim] * 2
            for part, piece in zip("qkv", tensor.split(sizes, dim=0), strict=True):
                ours[name.replace(".qkv.", f".{part}.")] = piece
        elif family == "llama" and ".mlp.gate_up." in name:
            gate, up = tensor.chunk(2, dim=0)
            ours[name.replace(".gate_up.", ".gate.")] = gate
            ours[name.replace(".gate_up.", ".up.")] = up
        else:
            ours[name] = tensor
    if family == "gpt2":  # GPT-2 always has biases; a model trained without them gets zeros
        for name, tensor in list(ours.items()):
            if name.endswith(".weight") and (name.startswith("blocks.") or name == "norm.weight"):
                bias = name.removesuffix("weight") + "bias"
                ours.setdefault(bias, torch.zeros(tensor.shape[0], dtype=tensor.dtype))
    hf: dict[str, torch.Tensor] = {}
    for name, tensor in ours.items():
        if name == "lm_head.weight":
            if not config.tie_embeddings:
                hf["lm_head.weight"] = tensor
            continue
        for regex, target in INVERSE_RULES[family]:
            match = regex.match(name)
            if match:
                if family == "gpt2" and re.search(r"\.(qkv|out|up|down)\.weight$", name):
                    tensor = tensor.t()
                hf[_PREFIX[family] + target.format(**match.groupdict())] = tensor
                break
        else:
            raise CheckpointError(f"no Hugging Face name for tensor {name!r} ({family})")
    return hf


def _plain_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our own names; a tied output head is stored once (as the embedding)."""
    tensors = dict(model.state_dict())
    if getattr(model.config, "tie_embeddings", False):
        tensors.pop("lm_head.weight", None)
    return tensors


def save_bundle(
    model: nn.Module,
    tokenizer: Tokenizer,
    directory: str | Path,
    generation: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write `model` and `tokenizer` as a bundle in `directory`; returns the directory."""
    from safetensors.torch import save_file

    from lmforge.models.presets import model_type
    from lmforge.models.quantized import quantized_mode

    if quantized_mode(model) != "none":
        raise ConfigError("a quantised model cannot be saved as a bundle; load it unquantised")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    family = hf_family(model.config) if isinstance(model, GPT) else None
    if family is not None:
        config = hf_config(model.config, family, tokenizer)
        tensors = _hf_tensors(model, family)
    else:
        config = {"model_type": model_type(model), "lmforge_config": model.config.to_dict()}
        tensors = _plain_tensors(model)
    config["lmforge"] = {"class": type(model).__name__, **(extra_config or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".saving-"))
    try:
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        (staging / "config.json").write_text(json.dumps(config, indent=1))
        tokenizer.save(staging)
        if generation:
            path = staging / "generation_config.json"
            merged = {**json.loads(path.read_text()), **generation}
            path.write_text(json.dumps(merged, indent=1))
        umask = os.umask(0)
        os.umask(umask)
        for item in staging.iterdir():
            with open(item, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(item, 0o666 & ~umask)
            os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def load_lmforge_model(saved: dict[str, Any], directory: Path) -> nn.Module:
    """Rebuild a model saved with an "lmforge-..." model_type (`saved`: its config.json) and
    load its weights."""
    from lmforge.checkpoints.hf import read_hf_weights
    from lmforge.models.presets import MODEL_TYPES

    kind = saved.get("model_type")
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"{directory}/config.json: unknown model_type {kind!r}")
    config_cls, model_cls = MODEL_TYPES[kind]
    try:
        config = config_cls.from_dict(saved["lmforge_config"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory}/config.json: invalid lmforge_config ({exc})") from exc
    model = model_cls(config)
    tensors = read_hf_weights(directory)
    tied = getattr(config, "tie_embeddings", False)
    expected = {k for k in model.state_dict() if not (tied and k == "lm_head.weight")}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not match config.json; missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.load_state_dict(tensors, strict=not tied)
    return model.eval()
