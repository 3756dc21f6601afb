"""Load a checkpoint of any supported format into our modules: GGUF files (through the converted
cache), Hugging Face directories, lmforge bundles and LoRA adapter directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from lmforge.checkpoints import cache
from lmforge.checkpoints.adapters import ADAPTER_CONFIG, apply_adapter, read_adapter_settings
from lmforge.checkpoints.bundle import load_lmforge_model
from lmforge.checkpoints.gguf import (
    GGUFFile,
    config_from_gguf,
    tokenizer_from_gguf,
    weights_from_gguf,
)
from lmforge.checkpoints.hf import (
    config_from_hf,
    fuse_projections,
    load_state_dict_into,
    read_hf_config,
    read_hf_weights,
    rename_hf_tensors,
)
from lmforge.checkpoints.marian import model_from_marian
from lmforge.checkpoints.resolve import resolve
from lmforge.errors import CheckpointError
from lmforge.models.gpt import GPT
from lmforge.models.quantized import check_mode, prepare_quantized, quantize_model, retie
from lmforge.paths import read_json
from lmforge.tokenizers import Tokenizer


@dataclass
class Checkpoint:
    """A loaded model with its tokenizer, and where it came from."""

    model: torch.nn.Module  # GPT, RNNLM or TransformerLM
    tokenizer: Tokenizer
    source: Path
    generation_defaults: dict


def load_checkpoint(
    name_or_path: str | Path,
    dtype: torch.dtype = torch.float32,
    quantize: str = "none",
    group_size: int = 32,
) -> Checkpoint:
    """Load a GGUF file or a Hugging Face directory into our GPT and Tokenizer.

    quantize: "none" keeps `dtype`; "bf16", "int8", "int4" (see `lmforge.models.quantized`) compute in
    bfloat16 with weights of that type; `group_size` is int4's group of input columns.
    """
    check_mode(quantize, group_size)
    path = resolve(name_or_path)
    if path.is_dir() and (path / ADAPTER_CONFIG).exists():
        if quantize != "none":
            raise CheckpointError(f"{path}: a LoRA adapter runs unquantised; merge it first")
        settings = read_adapter_settings(path)
        base = load_checkpoint(settings["base_model"], dtype=dtype)
        apply_adapter(base.model, path, settings)
        return Checkpoint(base.model, Tokenizer.from_hf_directory(path), path, {})
    if path.is_dir():
        return _load_hf_directory(path, dtype, quantize, group_size)
    if path.suffix == ".gguf" or _starts_with(path, b"GGUF"):
        return _load_gguf(path, dtype, quantize, group_size)
    raise CheckpointError(f"{path}: expected a .gguf file or a Hugging Face model directory")


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic


def _build(
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
        model.inv_freq = model.rope_frequencies()
    return model.eval()


class _SkipInit(TorchFunctionMode):
    """Skip the random initialisation layers run when built, in this scope only: loaded weights
    replace it anyway, and `torch.nn.init` on the meta device imports torch's compiler stack
    (about a second of start-up)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def _finish(model: GPT, dtype: torch.dtype, quantize: str, group_size: int) -> GPT:
    """Quantise (or cast to `dtype` when not quantising) a float model."""
    if quantize == "none":
        return model.to(dtype)
    return quantize_model(model, quantize, group_size)


def _load_gguf(path: Path, dtype: torch.dtype, quantize: str, group_size: int) -> Checkpoint:
    variant = cache.variant(quantize, group_size)
    entry = cache.entry_for(path, variant)
    cached = cache.load_converted(entry) if entry is not None else None
    if cached is not None:
        config, tensors, tokenizer = cached
        model = _build(config, tensors, str(path), quantize, group_size)
        return Checkpoint(model if quantize != "none" else model.to(dtype), tokenizer, path, {})
    float_entry = cache.entry_for(path, cache.variant("none", group_size))
    cached = cache.load_converted(float_entry) if float_entry not in (None, entry) else None
    if cached is not None:  # quantise from the cached float conversion: no GGUF parsing
        config, tensors, tokenizer = cached
        model = _build(config, tensors, str(path))
    else:
        file = GGUFFile(path)
        config = config_from_gguf(file)
        model = _build(config, weights_from_gguf(file, config), str(path))
        tokenizer = tokenizer_from_gguf(file)
    model = _finish(model, torch.float32, quantize, group_size)
    if entry is not None:
        cache.save_converted(entry, model, tokenizer)
    return Checkpoint(model.to(dtype) if quantize == "none" else model, tokenizer, path, {})


def _load_hf_directory(
    directory: Path, dtype: torch.dtype, quantize: str, group_size: int
) -> Checkpoint:
    hf_config = read_hf_config(directory)
    gen_path = directory / "generation_config.json"
    generation = read_json(gen_path) if gen_path.exists() else {}
    if not isinstance(generation, dict):
        raise CheckpointError(f"{gen_path}: expected a JSON object of generation settings")
    if str(hf_config.get("model_type", "")).startswith("lmforge-"):
        model = load_lmforge_model(hf_config, directory)
        if quantize != "none":
            raise CheckpointError(
                f"{directory}: quantize={quantize!r} applies to GPT models only; this is a "
                f"{type(model).__name__}"
            )
        tokenizer = Tokenizer.from_hf_directory(directory, generation)
        return Checkpoint(model.to(dtype), tokenizer, directory, generation)
    if hf_config.get("model_type") == "marian":
        if quantize != "none":
            raise CheckpointError(f"{directory}: quantize={quantize!r} applies to GPT models only")
        model = model_from_marian(
            hf_config, read_hf_weights(directory), str(directory / "config.json")
        )
        tokenizer = Tokenizer.from_hf_directory(directory, generation)
        return Checkpoint(model.to(dtype), tokenizer, directory, generation)
    config = config_from_hf(hf_config, str(directory / "config.json"))
    config.extra.update(
        source_format="huggingface",
        quantization=str(hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"),
    )
    tensors = rename_hf_tensors(config.extra["family"], read_hf_weights(directory), str(directory))
    model = _finish(_build(config, tensors, str(directory)), dtype, quantize, group_size)
    tokenizer = Tokenizer.from_hf_directory(directory, generation)
    return Checkpoint(model, tokenizer, directory, generation)
