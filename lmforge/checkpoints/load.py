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
from lmforge.checkpoints.precision import Precision, asked, for_gguf, for_hf, not_quantised
from lmforge.checkpoints.resolve import resolve
from lmforge.errors import CheckpointError
from lmforge.models.gpt import GPT
from lmforge.models.quantized import check_mode, quantize_model
from lmforge.paths import read_json
from lmforge.tokenizers import Tokenizer


@dataclass
class Checkpoint:
    """A loaded model with its tokenizer, where it came from and the precision it runs in."""

    model: torch.nn.Module  # GPT, RNNLM or TransformerLM
    tokenizer: Tokenizer
    source: Path
    generation_defaults: dict
    precision: Precision


def load_checkpoint(
    name_or_path: str | Path,
    dtype: torch.dtype | None = None,
    quantize: str = "none",
    group_size: int = 32,
) -> Checkpoint:
    """Load a GGUF file or a Hugging Face directory into our GPT and Tokenizer.

    quantize: "none" keeps `dtype` (float32 when not given); "bf16", "int8", "int4" (see
    `lmforge.models.quantized`) compute in bfloat16 with weights of that type; "auto" keeps the
    precision class of the checkpoint's own weights (`lmforge.checkpoints.precision`), or `dtype`
    when one is given. `group_size` is int4's group of input columns.
    """
    if quantize != "auto":
        check_mode(quantize, group_size)
    if quantize == "auto" and dtype is not None:
        quantize, precision = "none", Precision("none", f"dtype={str(dtype)[6:]} given")
    else:
        precision = asked(quantize)
    dtype = dtype or torch.float32
    path = resolve(name_or_path)
    if path.is_dir() and (path / ADAPTER_CONFIG).exists():
        if quantize not in ("none", "auto"):
            raise CheckpointError(f"{path}: a LoRA adapter runs unquantised; merge it first")
        settings = read_adapter_settings(path)
        base = load_checkpoint(settings["base_model"], dtype=dtype)
        apply_adapter(base.model, path, settings)
        tokenizer = Tokenizer.from_hf_directory(path)
        if quantize == "auto":
            precision = not_quantised("LoRA adapter")
        return Checkpoint(base.model, tokenizer, path, {}, precision)
    if path.is_dir():
        return _load_hf_directory(path, dtype, quantize, group_size, precision)
    if path.suffix == ".gguf" or _starts_with(path, b"GGUF"):
        return _load_gguf(path, dtype, quantize, group_size, precision)
    raise CheckpointError(f"{path}: expected a .gguf file or a Hugging Face model directory")


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(magic)) == magic


def _finish(model: GPT, dtype: torch.dtype, quantize: str, group_size: int) -> GPT:
    """Quantise (or cast to `dtype` when not quantising) a float model."""
    if quantize == "none":
        return model.to(dtype)
    return quantize_model(model, quantize, group_size)


def _load_gguf(
    path: Path, dtype: torch.dtype, quantize: str, group_size: int, precision: Precision
) -> Checkpoint:
    file = None
    if quantize == "auto":  # the file's own precision class: from a converted entry, or parsed
        weight_type = cache.weight_type_of(path)
        if weight_type is None:
            file = GGUFFile(path)
            weight_type = file.weight_type
        precision = for_gguf(weight_type)
        quantize = precision.mode
    variant = cache.variant(quantize, group_size)
    entry = cache.entry_for(path, variant)
    cached = cache.load_converted(entry) if entry is not None else None
    if cached is not None:
        config, tensors, tokenizer = cached
        model = build_gpt(config, tensors, str(path), quantize, group_size)
        model = model if quantize != "none" else model.to(dtype)
        return Checkpoint(model, tokenizer, path, {}, precision)
    float_entry = cache.entry_for(path, cache.variant("none", group_size))
    cached = cache.load_converted(float_entry) if float_entry not in (None, entry) else None
    if cached is not None:  # quantise from the cached float conversion: no GGUF parsing
        config, tensors, tokenizer = cached
        model = build_gpt(config, tensors, str(path))
    else:
        file = file or GGUFFile(path)
        config = config_from_gguf(file)
        model = build_gpt(config, weights_from_gguf(file, config), str(path))
        tokenizer = tokenizer_from_gguf(file)
    model = _finish(model, torch.float32, quantize, group_size)
    if entry is not None:
        cache.save_converted(entry, model, tokenizer)
    model = model.to(dtype) if quantize == "none" else model
    return Checkpoint(model, tokenizer, path, {}, precision)


def _load_hf_directory(
    directory: Path, dtype: torch.dtype, quantize: str, group_size: int, precision: Precision
) -> Checkpoint:
    hf_config = read_hf_config(directory)
    gen_path = directory / "generation_config.json"
    generation = read_json(gen_path) if gen_path.exists() else {}
    if not isinstance(generation, dict):
        raise CheckpointError(f"{gen_path}: expected a JSON object of generation settings")
    if is_classifier(hf_config):
        source = str(directory / "config.json")
        model = classifier_from_files(hf_config, read_hf_weights(directory), source)
    elif str(hf_config.get("model_type", "")).startswith("lmforge-"):
        model = load_lmforge_model(hf_config, directory)
    elif hf_config.get("model_type") == "marian":
        source = str(directory / "config.json")
        model = model_from_marian(hf_config, read_hf_weights(directory), source)
    else:
        config = config_from_hf(hf_config, str(directory / "config.json"))
        config.extra.update(
            source_format="huggingface",
            quantization=str(hf_config.get("dtype") or hf_config.get("torch_dtype") or "float32"),
        )
        if quantize == "auto":
            precision = for_hf(hf_config)
            quantize = precision.mode
        tensors = rename_hf_tensors(
            config.extra["family"], read_hf_weights(directory), str(directory)
        )
        model = _finish(build_gpt(config, tensors, str(directory)), dtype, quantize, group_size)
        tokenizer = Tokenizer.from_hf_directory(directory, generation)
        return Checkpoint(model, tokenizer, directory, generation, precision)
    if quantize == "auto":  # classifiers, lmforge's own RNN/Transformer LMs, translation models
        precision = not_quantised(type(model).__name__)
    elif quantize != "none":
        raise CheckpointError(
            f"{directory}: quantize={quantize!r} applies to GPT models only; this is a "
            f"{type(model).__name__}"
        )
    tokenizer = Tokenizer.from_hf_directory(directory, generation)
    return Checkpoint(model.to(dtype), tokenizer, directory, generation, precision)
