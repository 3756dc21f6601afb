"""Our GPT and tokenizer written as a GGUF file that llama.cpp (and Ollama, LM Studio) runs.

The `gguf` package writes the file (`GGUFWriter`) and the quantised blocks (`gguf.quants`); the
name tables, the q/k row permutation and the pre-tokenizer names are `gguf`'s reader's, used the
other way. What is written is what the model computes with (`float_state_dict`: quantised layers
dequantised, LoRA updates added), requantised into the requested ggml type. A tensor the model
loaded from a GGUF file and did not change is taken from that file instead: its own bytes when
the type is the file's (so an unchanged Q4_1 model exports bit-exactly), its exact values
otherwise.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmforge.checkpoints.gguf import (
    WRITE_RULES,
    GGUFFile,
    permute_rope_rows,
    pre_tokenizer_for,
    rename,
)
from lmforge.checkpoints.hf import hf_family
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.gpt import GPT
from lmforge.models.quantized import float_state_dict, quantized_mode
from lmforge.tokenizers import Tokenizer

GGUF_TYPES = ("auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")
# The precision class a model runs in -> the ggml type "auto" writes it as
_TYPE_FOR_MODE = {"none": "f32", "bf16": "bf16", "int8": "q8_0", "int4": "q4_1"}
# llama.cpp's Q4 files keep the token embedding and output head at 8 bits: a 4-bit head costs
# visibly more quality than the rest of the model
_FOUR_BIT = ("q4_0", "q4_1")
_TOKEN_TYPES = {"normal": 1, "control": 3, "user_defined": 4, "unused": 5}
# Our fused projections -> the separate ones llama.cpp's llama architecture has
_SPLIT = {
    ".attn.qkv.": (".attn.q.", ".attn.k.", ".attn.v."),
    ".mlp.gate_up.": (".mlp.gate.", ".mlp.up."),
}
# Pre-tokenizer names llama.cpp knows, tried in this order against a tokenizer's own
_PRE_NAMES = ("gpt-2", "smollm", "llama-bpe", "qwen2")


@dataclass
class GGUFExport:
    """What `export_gguf` wrote: where, as what, and what it did to get there."""

    path: Path
    architecture: str
    file_type: str
    tensor_types: dict[str, int]  # ggml type name -> tensors of it
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in self.tensor_types.items())
        lines = [
            f"wrote {self.path} ({self.architecture}, {self.file_type}; tensors: {types}) "
            f"in {self.seconds:.1f} s"
        ]
        return "\n".join(lines + [f"  {note}" for note in self.notes])


def export_gguf(
    model: nn.Module,
    tokenizer: Tokenizer,
    path: str | Path,
    type: str = "auto",
    force: bool = False,
    source: str | Path | None = None,
    name: str | None = None,
) -> GGUFExport:
    """Write `model` and `tokenizer` to the GGUF file `path`.

    type: the ggml type of the 2-D weights: "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", or
    "auto" (the type of the GGUF file the model came from, else its precision's: float32 -> f32,
    bf16 -> bf16, int8 -> q8_0, int4 -> q4_1). Norms and biases stay F32. source: the file the
    model was loaded from; unchanged tensors are taken from it when it is a GGUF file. The file
    appears at `path` only when complete; an existing one is replaced only with `force`."""
    started = time.perf_counter()
    if type not in GGUF_TYPES:
        raise ConfigError(f"GGUF type {type!r} is not supported; expected one of {GGUF_TYPES}")
    path = Path(path)
    if path.exists() and not force:
        raise CheckpointError(f"{path} exists; pass --force (force=True) to replace it")
    architecture = gguf_architecture(model)
    config = model.config
    source_file = _source_gguf(source)
    mode = quantized_mode(model)
    if type == "auto":
        type = _auto_type(source_file, mode)
    notes: list[str] = []
    layers, unchanged = _unchanged(source_file, source, mode, model) if source_file else (set(), {})
    # what the model computes with, for the layers it changed (the others come from the file;
    # a tied head is not written)
    skip = layers | ({"lm_head"} if config.tie_embeddings else set())
    tensors = gguf_tensors(float_state_dict(model, skip), config, architecture)
    if mode in ("int8", "int4") and any(values.ndim == 2 for values in tensors.values()):
        notes.append(f"{mode} weights were dequantised and requantised into ggml blocks")

    import gguf

    writer_type = {t.name.lower(): t for t in gguf.GGMLQuantizationType}
    planned, copied, fallback = [], 0, []
    for tensor_name, values in {**unchanged, **tensors}.items():
        original = unchanged.get(tensor_name)
        shape = values.shape if original is None else _shape(original)
        qtype = writer_type[_tensor_type(tensor_name, len(shape), type)]
        if len(shape) == 2 and shape[1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            fallback.append(f"{tensor_name}: {shape[1]}")
            qtype = gguf.GGMLQuantizationType.F16
        if original is not None and original.tensor_type == qtype:
            planned.append((tensor_name, np.asarray(original.data), qtype))
            copied += 1
            continue
        if original is not None:  # the file's exact values, not the runtime's rounding
            values = _dequantised(original, shape)
        planned.append((tensor_name, gguf.quants.quantize(values, qtype), qtype))
    if copied:
        notes.append(f"{copied} unchanged tensors copied bit-exactly from {source}")
    if type in _FOUR_BIT:
        notes.append("token embedding and output head kept Q8_0, as llama.cpp's Q4 files do")
    if fallback:
        notes.append(
            f"{len(fallback)} tensors written F16: their rows ({fallback[0]}) are not a "
            "multiple of the block size"
        )

    def write(target: Path) -> None:
        writer = gguf.GGUFWriter(target, architecture)
        _write_metadata(writer, config, architecture, type, source_file, name)
        _write_tokenizer(writer, tokenizer, config.vocab_size, source_file)
        for tensor_name, data, qtype in planned:
            writer.add_tensor(tensor_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    _write_atomically(path, write)
    counts: dict[str, int] = {}
    for _, _, qtype in planned:
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    seconds = time.perf_counter() - started
    return GGUFExport(path, architecture, type.upper(), counts, notes, seconds)


def gguf_architecture(model: nn.Module) -> str:
    """llama.cpp's architecture for `model`: "llama" or "gpt2", or an error saying what to do."""
    family = hf_family(model.config) if isinstance(model, GPT) else None
    if family == "gemma3":
        raise ConfigError(
            "GGUF export covers the llama and gpt2 architectures; a Gemma 3 model exports as a "
            "bundle (`lmforge export MODEL --format hf`), which transformers loads"
        )
    if family is None:
        kind = type(model).__name__
        raise ConfigError(
            f"a {kind} has no llama.cpp architecture, so it cannot be written as GGUF; it exports "
            "as a bundle (`lmforge export MODEL --format hf`, the directory `lmforge train` "
            "writes). GGUF takes GPT models of the llama and gpt2 families (`--family`)"
        )
    if family == "llama" and model.config.qkv_bias:
        raise ConfigError("llama.cpp's llama architecture has no attention biases; this model has")
    scaling = model.config.rope_scaling
    if scaling and scaling.get("rope_type", scaling.get("type")) != "linear":
        raise ConfigError(
            f"RoPE scaling {scaling.get('rope_type')!r} is not written to GGUF; "
            "supported: none, 'linear'"
        )
    return family


def gguf_tensors(
    floats: dict[str, torch.Tensor], config, architecture: str
) -> dict[str, np.ndarray]:
    """Our float32 weights under GGUF names and in llama.cpp's layouts: Llama's q/k/v and
    gate/up split, q/k rows permuted; GPT-2's missing biases as zeros; a tied head omitted.
    `floats` may hold some layers only (the others are taken from the source file)."""
    ours = dict(floats)
    if config.tie_embeddings:
        ours.pop("lm_head.weight", None)
    for i in range(config.n_layer):
        block = f"blocks.{i}"
        if architecture == "llama":
            if f"{block}.attn.qkv.weight" in ours:
                qkv = ours.pop(f"{block}.attn.qkv.weight")
                sizes = [config.n_head * config.head_dim] + [config.n_kv_head * config.head_dim] * 2
                q, k, v = qkv.split(sizes, dim=0)
                ours[f"{block}.attn.q.weight"] = permute_rope_rows(q, config.n_head)
                ours[f"{block}.attn.k.weight"] = permute_rope_rows(k, config.n_kv_head)
                ours[f"{block}.attn.v.weight"] = v
            if f"{block}.mlp.gate_up.weight" in ours:
                gate, up = ours.pop(f"{block}.mlp.gate_up.weight").chunk(2, dim=0)
                ours[f"{block}.mlp.gate.weight"], ours[f"{block}.mlp.up.weight"] = gate, up
        else:  # llama.cpp's gpt2 graph adds every bias
            for part in ("attn_norm", "attn.qkv", "attn.out", "mlp_norm", "mlp.up", "mlp.down"):
                _zero_bias(ours, f"{block}.{part}")
    if architecture == "gpt2":
        _zero_bias(ours, "norm")
    out = {}
    for our_name, tensor in ours.items():
        gguf_name = rename(our_name, WRITE_RULES[architecture])
        if gguf_name is None:
            raise CheckpointError(f"no GGUF name for tensor {our_name!r} ({architecture})")
        out[gguf_name] = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    return out


def _zero_bias(ours: dict[str, torch.Tensor], layer: str) -> None:
    """A zero bias for a layer written without one (llama.cpp's gpt2 graph adds them all)."""
    weight = ours.get(f"{layer}.weight")
    if weight is not None:
        ours.setdefault(f"{layer}.bias", torch.zeros(weight.shape[0]))


def _tensor_type(name: str, ndim: int, type: str) -> str:
    if ndim == 1:
        return "f32"
    if type in _FOUR_BIT and name in ("token_embd.weight", "output.weight"):
        return "q8_0"
    return type


def _source_gguf(source: str | Path | None) -> GGUFFile | None:
    if source is None or not Path(source).is_file():
        return None
    with open(source, "rb") as f:
        return GGUFFile(Path(source)) if f.read(4) == b"GGUF" else None


def _auto_type(source_file: GGUFFile | None, mode: str) -> str:
    if source_file is not None and source_file.weight_type.lower() in GGUF_TYPES:
        return source_file.weight_type.lower()
    return _TYPE_FOR_MODE[mode]


def _unchanged(source_file: GGUFFile, source, mode: str, model) -> tuple[set[str], dict]:
    """The layers the model did not change since it was loaded (those whose stored tensors equal
    what loading `source` again gives, at the same precision and group size; compared as stored,
    int4 codes packed), and their GGUF tensors in the source file, by name."""
    from lmforge.checkpoints.load import load_checkpoint

    group = next((m.group_size for m in model.modules() if hasattr(m, "group_size")), 32)
    reference = load_checkpoint(source, quantize=mode, group_size=group).model
    if source_file.arch != gguf_architecture(reference):
        return set(), {}
    ours, theirs = model.state_dict(), reference.state_dict()
    changed = {
        name.rpartition(".")[0]
        for name, tensor in ours.items()
        if name not in theirs
        or theirs[name].shape != tensor.shape
        or theirs[name].dtype != tensor.dtype
        or not torch.equal(theirs[name], tensor)
    }
    in_file = {t.name: t for t in source_file.reader.tensors}
    layers, tensors = set(), {}
    for layer in {name.rpartition(".")[0] for name in ours} - changed:
        weights = hasattr(model.get_submodule(layer), "float_weight") or f"{layer}.weight" in ours
        parts = ["weight"] * weights + ["bias"] * (f"{layer}.bias" in ours)
        names = [n for part in parts for n in _gguf_names(f"{layer}.{part}", source_file.arch)]
        if names and all(n in in_file for n in names):
            layers.add(layer)
            tensors.update((n, in_file[n]) for n in names)
    return layers, tensors


def _gguf_names(name: str, architecture: str) -> list[str]:
    """The GGUF tensors our tensor `name` is written as (Llama's fused ones split)."""
    if architecture == "llama":
        for fused, parts in _SPLIT.items():
            if fused in name:
                return [rename(name.replace(fused, p), WRITE_RULES[architecture]) for p in parts]
    found = rename(name, WRITE_RULES[architecture])
    return [found] if found else []


def _shape(tensor) -> tuple[int, ...]:
    """A GGUF tensor's shape as PyTorch orders it (ggml lists the row length first)."""
    return tuple(int(d) for d in reversed(tensor.shape))


def _dequantised(tensor, shape: tuple[int, ...]) -> np.ndarray:
    from gguf import quants

    return np.asarray(quants.dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(shape)


def _write_metadata(writer, config, architecture: str, type: str, source_file, name) -> None:
    import gguf

    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    }
    source_name = source_file.get("general.name") if source_file else None
    writer.add_name(name or source_name or "lmforge model")
    if source_file is not None:
        _copy_provenance(writer, source_file)
    writer.add_file_type(file_types[type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_block_count(config.n_layer)
    writer.add_head_count(config.n_head)
    if architecture == "gpt2":
        writer.add_layer_norm_eps(config.norm_eps)
        return
    writer.add_head_count_kv(config.n_kv_head)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_vocab_size(config.vocab_size)
    if config.head_dim * config.n_head != config.d_model:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    if config.rope_scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_scaling["factor"])


# general.* keys that describe the export itself, not the model it came from
_OWN_KEYS = ("general.architecture", "general.name", "general.file_type", "general.alignment")


def _copy_provenance(writer, source_file: GGUFFile) -> None:
    """The source file's description (licence, organisation, base model, languages ...)."""
    import gguf

    for key, value in source_file.reader.fields.items():
        if not key.startswith("general.") or key in _OWN_KEYS or "quantization" in key:
            continue
        kind = value.types[0]
        sub_type = value.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value.contents(), kind, sub_type=sub_type)


def _write_tokenizer(writer, tokenizer: Tokenizer, vocab_size: int, source_file) -> None:
    """Byte-level BPE as llama.cpp's "gpt2" vocabulary: tokens, their types, merges, the
    pre-tokenizer's name, special ids and the chat template."""
    backend = tokenizer.backend
    saved = json.loads(backend.to_str())
    model, decoder = saved["model"], saved.get("decoder") or {}
    if model["type"] != "BPE" or decoder.get("type") != "ByteLevel":
        kind = model["type"] if model["type"] != "BPE" else "character"
        raise ConfigError(
            f"llama.cpp reads byte-level BPE vocabularies; this tokenizer is a {kind} one. "
            "Train the model with `--tokenizer bpe` to export it as GGUF"
        )
    vocab = backend.get_vocab(with_added_tokens=True)
    if len(vocab) > vocab_size:
        raise CheckpointError(
            f"the tokenizer has {len(vocab)} tokens but the model's embedding only {vocab_size}"
        )
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [_TOKEN_TYPES["unused"]] * vocab_size
    for token, i in vocab.items():
        tokens[i], types[i] = token, _TOKEN_TYPES["normal"]
    for i, added in backend.get_added_tokens_decoder().items():
        types[i] = _TOKEN_TYPES["control" if added.special else "user_defined"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_name(backend, source_file))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if tokenizer.bos_id is not None:
        writer.add_bos_token_id(tokenizer.bos_id)
    if tokenizer.eos_ids:
        writer.add_eos_token_id(tokenizer.eos_ids[0])
    if len(tokenizer.eos_ids) > 1:
        writer.add_eot_token_id(tokenizer.eos_ids[1])
    if tokenizer.pad_id is not None:
        writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_add_bos_token(bool(tokenizer.add_bos))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _pre_name(backend, source_file) -> str:
    """The `tokenizer.ggml.pre` name whose pre-tokenizer is this tokenizer's: the source file's
    own name when it still fits, else the first of llama.cpp's names that does."""

    def state(pre_tokenizer):  # its settings, less the one that changes offsets only
        def strip(value):
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items() if k != "trim_offsets"}
            return [strip(v) for v in value] if isinstance(value, list) else value

        return strip(json.loads(pre_tokenizer.__getstate__()))

    ours = state(backend.pre_tokenizer) if backend.pre_tokenizer is not None else None
    first = source_file.get("tokenizer.ggml.pre") if source_file else None
    for name in ([first] if first else []) + list(_PRE_NAMES):
        if ours == state(pre_tokenizer_for(name)):
            return name
    raise ConfigError(
        "the tokenizer's pre-tokenizer matches none llama.cpp knows "
        f"({', '.join(_PRE_NAMES)}), so llama.cpp would split text differently"
    )


def _write_atomically(path: Path, write) -> None:
    """`write(temporary)` beside `path`, then rename it into place: never a half file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        write(partial)
        with open(partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
