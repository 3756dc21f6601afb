"""Load a checkpoint of any supported format into our modules: GGUF files (through the converted
cache), Hugging Face directories, lmforge bundles and LoRA adapter directories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.checkpoints import cache
from lmforge.checkpoints.adapters import ADAPTER_CONFIG, apply_adapter, read_adapter_settings
from lmforge.checkpoints.bundle import load_lmforge_model
from lmforge.checkpoints.classifier import classifier_from_files, is_classifier
from lmforge.checkpoints.gguf import (
    GGUFFile,
    config_from_gguf,
    tokenizer_from_gguf,
    weights_from_gguf,
)
from lmforge.checkpoints.hf import (
    build_gpt,
    config_from_hf,
    read_hf_config,
    read_hf_weights,
    rename_hf_tensors,
)
from lmforge.checkpoints.marian import model_from_marian
from lmforge.checkpoints.resolve import resolve
from lmforge.errors import CheckpointError
from lmforge.models.gpt import GPT
from lmforge.models.quantized import check_mode, quantize_model
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
        model = build_gpt(config, tensors, str(path), quantize, group_size)
        return Checkpoint(model if quantize != "none" else model.to(dtype), tokenizer, path, {})
    float_entry = cache.entry_for(path, cache.variant("none", group_size))
    cached = cache.load_converted(float_entry) if float_entry not in (None, entry) else None
    if cached is not None:  # quantise from the cached float conversion: no GGUF parsing
        config, tensors, tokenizer = cached
        model = build_gpt(config, tensors, str(path))
    else:
        file = GGUFFile(path)
        config = config_from_gguf(file)
        model = build_gpt(config, weights_from_gguf(file, config), str(path))
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
    if is_classifier(hf_config):
        if quantize != "none":
            raise CheckpointError(f"{directory}: quantize={quantize!r} applies to GPT models only")
        source = str(directory / "config.json")
        model = classifier_from_files(hf_config, read_hf_weights(directory), source)
        tokenizer = Tokenizer.from_hf_directory(directory, generation)
        return Checkpoint(model.to(dtype), tokenizer, directory, generation)
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
    model = _finish(build_gpt(config, tensors, str(directory)), dtype, quantize, group_size)
    tokenizer = Tokenizer.from_hf_directory(directory, generation)
    return Checkpoint(model, tokenizer, directory, generation)
