"""Hugging Face checkpoints, read and written: `config.json` and weight names mapped onto our `GPT`
and back.

One table per supported family maps HF tensor names to ours, used both ways; `fuse_projections`
and `load_state_dict_into` are shared with GGUF loading, which has its own name table.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from lmforge.errors import CheckpointError
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.gpt_config import GEMMA3
from lmforge.models.quantized import head_reads_embedding, prepare_quantized, retie
from lmforge.paths import read_json
from lmforge.tokenizers import Tokenizer

SUPPORTED_ARCHITECTURES = ("gpt2", "llama", "gemma3_text")
# GPT-2 config "activation_function" -> our MLP kind
_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact"}


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> GPTConfig:
    """Translate a transformers `config.json` dict into a `GPTConfig`."""
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        activation = hf.get("activation_function", "gelu_new")
        if activation not in _GPT2_ACTIVATIONS:
            raise CheckpointError(
                f"{source}: GPT-2 activation_function {activation!r} is not supported; "
                f"supported: {sorted(_GPT2_ACTIVATIONS)}"
            )
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise CheckpointError(
                f"{source}: GPT-2 variants with scale_attn_by_inverse_layer_idx are not supported"
            )
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            d_model=hf["n_embd"],
            d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
            max_seq_len=hf["n_positions"],
            norm="layernorm",
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
            mlp=_GPT2_ACTIVATIONS.get(hf.get("activation_function", "gelu_new"), "unsupported"),
            position="learned",
            tie_embeddings=hf.get("tie_word_embeddings", True),
            extra={"family": "gpt2"},
        )
    if model_type == "llama":
        rope = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling") or (
            rope if rope.get("rope_type", "default") != "default" else None
        )
        n_head = hf["num_attention_heads"]
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            n_layer=hf["num_hidden_layers"],
            n_head=n_head,
            n_kv_head=hf.get("num_key_value_heads") or n_head,
            d_model=hf["hidden_size"],
            d_ff=hf["intermediate_size"],
            head_dim=hf.get("head_dim") or hf["hidden_size"] // n_head,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            norm="rmsnorm",
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            mlp="swiglu",
            position="rope",
            rope_theta=hf.get("rope_theta", rope.get("rope_theta", 10000.0)),
            rope_scaling=scaling,
            qkv_bias=hf.get("attention_bias", False),
            out_bias=hf.get("attention_bias", False),
            mlp_bias=hf.get("mlp_bias", False),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            extra={"family": "llama"},
        )
    if model_type == "gemma3_text":
        return _gemma3_config(hf, source)
    raise CheckpointError(
        f"{source}: architecture {model_type!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def _gemma3_config(hf: dict[str, Any], source: str) -> GPTConfig:
    """Gemma 3's text model: transformers 5's `rope_parameters` per layer type, or the older
    rope_theta / rope_local_base_freq / rope_scaling keys."""
    if hf.get("attention_bias"):
        raise CheckpointError(f"{source}: Gemma 3 with attention biases is not supported")
    if hf.get("use_bidirectional_attention"):
        raise CheckpointError(f"{source}: bidirectional Gemma 3 (an encoder) is not supported")
    if hf.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise CheckpointError(f"{source}: hidden_activation {hf['hidden_activation']!r}; "
                              "Gemma 3 is supported with gelu_pytorch_tanh")  # fmt: skip
    rope = hf.get("rope_parameters") or {}
    full = rope.get("full_attention") or {
        "rope_theta": hf.get("rope_theta", 1e6),
        **(hf.get("rope_scaling") or {}),
    }
    local = rope.get("sliding_attention") or {"rope_theta": hf.get("rope_local_base_freq", 1e4)}
    n_layer = hf["num_hidden_layers"]
    every = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
    layer_types = hf.get("layer_types") or [
        "full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n_layer)
    ]
    scaling = full if full.get("rope_type", "default") != "default" else None
    return GPTConfig(
        **GEMMA3,
        vocab_size=hf["vocab_size"],
        n_layer=n_layer,
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        head_dim=hf.get("head_dim", 256),
        max_seq_len=hf.get("max_position_embeddings", 32768),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=full["rope_theta"],
        rope_scaling=scaling,
        rope_local_theta=local["rope_theta"],
        tie_embeddings=hf.get("tie_word_embeddings", True),
        sliding_window=hf.get("sliding_window", 512),
        layer_types=list(layer_types),
        query_scale=hf.get("query_pre_attn_scalar", 256) ** -0.5,
        # (transformers' Gemma 3 reads attn_logit_softcapping but never applies it: Gemma 2's)
        final_softcap=hf.get("final_logit_softcapping"),
        extra={"family": "gemma3"},
    )


# HF name (after stripping the "transformer."/"model." prefix) -> our name.
_GPT2_NAMES = {
    "wte.weight": "embed.weight",
    "wpe.weight": "pos_embed.weight",
    "ln_f.weight": "norm.weight",
    "ln_f.bias": "norm.bias",
    "h.{i}.ln_1.{p}": "blocks.{i}.attn_norm.{p}",
    "h.{i}.ln_2.{p}": "blocks.{i}.mlp_norm.{p}",
    "h.{i}.attn.c_attn.{p}": "blocks.{i}.attn.qkv.{p}",
    "h.{i}.attn.c_proj.{p}": "blocks.{i}.attn.out.{p}",
    "h.{i}.mlp.c_fc.{p}": "blocks.{i}.mlp.up.{p}",
    "h.{i}.mlp.c_proj.{p}": "blocks.{i}.mlp.down.{p}",
}
_LLAMA_NAMES = {
    "embed_tokens.weight": "embed.weight",
    "norm.weight": "norm.weight",
    "layers.{i}.input_layernorm.weight": "blocks.{i}.attn_norm.weight",
    "layers.{i}.post_attention_layernorm.weight": "blocks.{i}.mlp_norm.weight",
    "layers.{i}.self_attn.q_proj.{p}": "blocks.{i}.attn.q.{p}",
    "layers.{i}.self_attn.k_proj.{p}": "blocks.{i}.attn.k.{p}",
    "layers.{i}.self_attn.v_proj.{p}": "blocks.{i}.attn.v.{p}",
    "layers.{i}.self_attn.o_proj.{p}": "blocks.{i}.attn.out.{p}",
    "layers.{i}.mlp.gate_proj.{p}": "blocks.{i}.mlp.gate.{p}",
    "layers.{i}.mlp.up_proj.{p}": "blocks.{i}.mlp.up.{p}",
    "layers.{i}.mlp.down_proj.{p}": "blocks.{i}.mlp.down.{p}",
}
_GEMMA3_NAMES = {
    "embed_tokens.weight": "embed.weight",
    "norm.weight": "norm.weight",
    "layers.{i}.input_layernorm.weight": "blocks.{i}.attn_norm.weight",
    "layers.{i}.post_attention_layernorm.weight": "blocks.{i}.attn_post_norm.weight",
    "layers.{i}.pre_feedforward_layernorm.weight": "blocks.{i}.mlp_norm.weight",
    "layers.{i}.post_feedforward_layernorm.weight": "blocks.{i}.mlp_post_norm.weight",
    "layers.{i}.self_attn.q_proj.{p}": "blocks.{i}.attn.q.{p}",
    "layers.{i}.self_attn.k_proj.{p}": "blocks.{i}.attn.k.{p}",
    "layers.{i}.self_attn.v_proj.{p}": "blocks.{i}.attn.v.{p}",
    "layers.{i}.self_attn.o_proj.{p}": "blocks.{i}.attn.out.{p}",
    "layers.{i}.self_attn.q_norm.weight": "blocks.{i}.attn.q_norm.weight",
    "layers.{i}.self_attn.k_norm.weight": "blocks.{i}.attn.k_norm.weight",
    "layers.{i}.mlp.gate_proj.{p}": "blocks.{i}.mlp.gate.{p}",
    "layers.{i}.mlp.up_proj.{p}": "blocks.{i}.mlp.up.{p}",
    "layers.{i}.mlp.down_proj.{p}": "blocks.{i}.mlp.down.{p}",
}
_IGNORED = re.compile(r"(^|\.)(attn\.bias|attn\.masked_bias|rotary_emb\.inv_freq)$")


def name_regex(pattern: str) -> re.Pattern:
    """ "h.{i}.attn.c_attn.{p}" -> a regex capturing the layer `i` and `p` (weight or bias)."""
    regex = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)")
    return re.compile(regex.replace(r"\{p\}", r"(?P<p>weight|bias)") + "$")


_TABLES = {"gpt2": _GPT2_NAMES, "llama": _LLAMA_NAMES, "gemma3": _GEMMA3_NAMES}
# HF name -> ours (loading), and ours -> HF name (saving a bundle)
_RULES = {f: [(name_regex(h), o) for h, o in t.items()] for f, t in _TABLES.items()}
_INVERSE_RULES = {f: [(name_regex(o), h) for h, o in t.items()] for f, t in _TABLES.items()}


# Reading -------------------------------------------------------------------------------------


def rename_hf_tensors(
    family: str, tensors: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """HF weight names -> our names (q/k/v still separate for Llama; see `fuse_projections`)."""
    renamed: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name in ("lm_head.weight", "output.weight"):
            renamed["lm_head.weight"] = tensor
            continue
        short = re.sub(r"^(transformer|model)\.", "", name)
        if _IGNORED.search(short):
            continue
        for regex, target in _RULES[family]:
            match = regex.match(short)
            if match:
                renamed[target.format(**match.groupdict())] = tensor
                break
        else:
            raise CheckpointError(f"{source}: unexpected tensor {name!r} for a {family} model")
    if family == "gpt2":  # GPT-2 stores linear weights as Conv1D (in, out)
        for name in list(renamed):
            if re.search(r"\.(qkv|out|up|down)\.weight$", name):
                renamed[name] = renamed[name].t()
    return renamed


def fuse_projections(tensors: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """Concatenate separate q/k/v projections into the fused `attn.qkv` layer, and SwiGLU's
    gate/up into `mlp.gate_up`, the layouts our modules use."""
    fused = {"attn": ("qkv", "qkv"), "mlp": ("gate_up", ("gate", "up"))}
    for i in range(n_layer):
        for module, (target, sources) in fused.items():
            for p in ("weight", "bias"):
                parts = [tensors.pop(f"blocks.{i}.{module}.{x}.{p}", None) for x in sources]
                if all(t is not None for t in parts):
                    tensors[f"blocks.{i}.{module}.{target}.{p}"] = torch.cat(parts, dim=0)
    return tensors


def load_state_dict_into(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str
) -> None:
    """Copy tensors into the model, checking that names and shapes match exactly."""
    tied = head_reads_embedding(model)  # its tensors are the embedding's: none to load
    if tied:
        tensors = {k: v for k, v in tensors.items() if not k.startswith("lm_head.")}
    expected = {
        k: v for k, v in model.state_dict().items() if not (tied and k.startswith("lm_head."))
    }
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{source}: tensors do not match the architecture; missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors, strict=not tied, assign=True)


def build_gpt(
    config,
    tensors: dict[str, torch.Tensor],
    source: str,
    saved_quantize: str = "none",
    group_size: int = 32,
) -> GPT:
    """Build the model on the meta device and adopt the loaded tensors as its parameters (no copy).

    saved_quantize: the mode `tensors` were saved in (a quantised cache entry), so the model gets
    matching empty quantised layers before it adopts them."""
    with torch.device("meta"), _SkipInit():
        model = GPT(config)
    prepare_quantized(model, saved_quantize, group_size)
    if any(".attn.q." in name or ".mlp.gate." in name for name in tensors):
        tensors = fuse_projections(tensors, config.n_layer)
    load_state_dict_into(model, tensors, source)
    if config.tie_embeddings:
        retie(model)
    if config.position == "rope":
        model.set_rope_frequencies()
    return model.eval()


class _SkipInit(TorchFunctionMode):
    """Skip the random initialisation layers run when built, in this scope only: loaded weights
    replace it anyway, and `torch.nn.init` on the meta device imports torch's compiler stack
    (about a second of start-up)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def load_saved_weights(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str, tied: str | None
) -> None:
    """Load a model saved under our own names, checking that the names match exactly; `tied`
    names the output head stored as the embedding (absent from `tensors`)."""
    expected = {k for k in model.state_dict() if k != tied}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match config.json; missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.load_state_dict(tensors, strict=tied is None)


def read_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory: safetensors (single or sharded) or pytorch_model.bin."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    bin_file = directory / "pytorch_model.bin"
    if single.exists():
        return read_safetensors(single)
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map; is it a safetensors index?")
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = directory / shard
            if not shard_path.exists():
                raise CheckpointError(f"{index}: lists shard {shard!r}, which is missing")
            tensors.update(read_safetensors(shard_path))
        return tensors
    if bin_file.exists():
        return read_pickled_weights(bin_file)
    raise CheckpointError(
        f"{directory}: no weights found; expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); is it damaged?"
        ) from None


def read_pickled_weights(path: Path) -> dict[str, torch.Tensor]:
    """A `pytorch_model.bin`, read with `weights_only=True`: tensors only, never code."""
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: the file is damaged, or its pickle holds objects that could run code "
            "when loaded. Do not load a file you do not trust with weights_only=False; if you trust "
            "it, convert it once to safetensors (torch.load it, then safetensors.torch.save_file)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, empty file, ...
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({exc})") from None
    if not isinstance(tensors, dict) or not all(
        isinstance(t, torch.Tensor) for t in tensors.values()
    ):
        raise CheckpointError(f"{path}: expected a dict of tensor name -> tensor")
    return tensors


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.exists():
        raise CheckpointError(
            f"{directory}: no config.json; is this a Hugging Face model directory?"
        )
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object of model settings")
    return config


# Writing: the same names and layouts the other way --------------------------------------------


def hf_family(config: GPTConfig) -> str | None:
    """ "gpt2", "llama" or "gemma3" when the config is exactly expressible as that HF
    architecture."""
    gemma = (config.embed_scale, config.norm_offset, config.qk_norm, config.post_norms)
    if all(gemma) and config.mlp == "geglu" and config.position == "rope":
        return "gemma3"
    if any(gemma) or config.layer_types or config.attn_softcap or config.final_softcap:
        return None
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
    if family == "gemma3":
        return _gemma3_hf_config(config, ids)
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        **_decoder_sizes(config),
        "rope_theta": config.rope_theta,
        "rope_scaling": config.rope_scaling,
        "attention_bias": config.qkv_bias,
        "mlp_bias": config.mlp_bias,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        **ids,
    }


def _decoder_sizes(config: GPTConfig) -> dict[str, Any]:
    """The size keys Llama's and Gemma 3's config.json share."""
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
    }


def _gemma3_hf_config(config: GPTConfig, ids: dict[str, Any]) -> dict[str, Any]:
    full = {"rope_type": "default", "rope_theta": config.rope_theta, **(config.rope_scaling or {})}
    local = {"rope_type": "default", "rope_theta": config.rope_local_theta or config.rope_theta}
    return {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        **_decoder_sizes(config),
        "rope_parameters": {"full_attention": full, "sliding_attention": local},
        "sliding_window": config.sliding_window,
        "layer_types": config.layer_types or ["full_attention"] * config.n_layer,
        "query_pre_attn_scalar": _whole((config.query_scale or config.head_dim**-0.5) ** -2),
        "attn_logit_softcapping": config.attn_softcap,
        "final_logit_softcapping": config.final_softcap,
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        **ids,
    }


def _whole(value: float) -> float | int:
    """An int when `value` is one up to rounding (transformers checks the type)."""
    return round(value) if abs(value - round(value)) < 1e-6 else value


_PREFIX = {"gpt2": "transformer.", "llama": "model.", "gemma3": "model."}


def hf_tensors(model: GPT, family: str) -> dict[str, torch.Tensor]:
    """Our state dict under HF names: q/k/v and gate/up split again, GPT-2's Conv1D transposed."""
    config = model.config
    ours: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if family != "gpt2" and ".attn.qkv." in name:
            sizes = [config.n_head * config.head_dim] + [config.n_kv_head * config.head_dim] * 2
            for part, piece in zip("qkv", tensor.split(sizes, dim=0), strict=True):
                ours[name.replace(".qkv.", f".{part}.")] = piece
        elif family != "gpt2" and ".mlp.gate_up." in name:
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
        for regex, target in _INVERSE_RULES[family]:
            match = regex.match(name)
            if match:
                if family == "gpt2" and re.search(r"\.(qkv|out|up|down)\.weight$", name):
                    tensor = tensor.t()
                hf[_PREFIX[family] + target.format(**match.groupdict())] = tensor
                break
        else:
            raise CheckpointError(f"no Hugging Face name for tensor {name!r} ({family})")
    return hf
