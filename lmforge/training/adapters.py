"""LoRA adapters on disk: `adapter_model.safetensors` + `adapter_config.json` (rank, alpha,
targets and the base model), beside the tokenizer files, so `lmforge.load(DIR)` rebuilds the
base model and applies the adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.errors import CheckpointError
from lmforge.tokenizers import Tokenizer
from lmforge.training.checkpointing import write_atomically

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def save_adapter(model: nn.Module, config, tokenizer: Tokenizer, directory: Path) -> None:
    from safetensors.torch import save

    from lmforge.checkpoints import resolve
    from lmforge.training.lora import lora_state_dict

    tensors = {k: v.detach().cpu().contiguous() for k, v in lora_state_dict(model).items()}
    data = save(tensors, metadata={"format": "pt"})
    settings = {
        "base_model": str(resolve(config.init_from).resolve()),
        "rank": config.lora_rank,
        "alpha": config.lora_alpha,
        "targets": list(config.lora_targets),
    }
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory)
    write_atomically(directory / ADAPTER_WEIGHTS, lambda f: f.write(data))
    text = json.dumps(settings, indent=1).encode()
    write_atomically(directory / ADAPTER_CONFIG, lambda f: f.write(text))


def load_adapter_bundle(directory: Path, **load_options) -> tuple[nn.Module, Any]:
    """The base model (a Checkpoint) with the directory's adapter applied (not merged)."""
    from safetensors.torch import load_file

    from lmforge.checkpoints import load_checkpoint
    from lmforge.training.lora import apply_lora

    settings = json.loads((directory / ADAPTER_CONFIG).read_text())
    base = settings.get("base_model")
    if not base or not Path(base).exists():
        raise CheckpointError(
            f"{directory}/{ADAPTER_CONFIG}: its base model {base!r} is not there; the adapter "
            "needs the model it was trained on"
        )
    checkpoint = load_checkpoint(base, **load_options)
    apply_lora(checkpoint.model, settings["targets"], settings["rank"], settings["alpha"])
    tensors = load_file(directory / ADAPTER_WEIGHTS)
    missing, unexpected = checkpoint.model.load_state_dict(tensors, strict=False)
    adapter_missing = [k for k in missing if ".lora_" in k]
    if unexpected or adapter_missing:
        raise CheckpointError(
            f"{directory}: the adapter does not fit its base model (missing "
            f"{adapter_missing[:3]}, unexpected {unexpected[:3]})"
        )
    checkpoint.model.eval()
    checkpoint.tokenizer = Tokenizer.from_hf_directory(directory)
    checkpoint.source = directory
    return checkpoint
