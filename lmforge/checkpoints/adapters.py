"""LoRA adapters on disk: `adapter_model.safetensors` + `adapter_config.json` (rank, alpha,
targets and the base model), beside the tokenizer files, so `lmforge.load(DIR)` rebuilds the
base model and applies the adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from lmforge.checkpoints.hf import read_safetensors
from lmforge.errors import CheckpointError
from lmforge.models.lora import apply_lora, lora_state_dict
from lmforge.paths import read_json, write_atomically
from lmforge.tokenizers import Tokenizer

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def save_adapter(
    model: nn.Module,
    base_model: Path,
    rank: int,
    alpha: float,
    targets: list[str],
    tokenizer: Tokenizer,
    directory: Path,
) -> None:
    """Write `model`'s LoRA weights and settings (the base model's resolved path among them)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in lora_state_dict(model).items()}
    data = save(tensors, metadata={"format": "pt"})
    settings = {
        "base_model": str(Path(base_model).resolve()),
        "rank": rank,
        "alpha": alpha,
        "targets": list(targets),
    }
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(directory)
    write_atomically(directory / ADAPTER_WEIGHTS, lambda f: f.write(data))
    text = json.dumps(settings, indent=1).encode()
    write_atomically(directory / ADAPTER_CONFIG, lambda f: f.write(text))


def read_adapter_settings(directory: Path) -> dict[str, Any]:
    """The adapter's settings, with a clear error when its base model is not there."""
    path = directory / ADAPTER_CONFIG
    settings = read_json(path)
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: expected a JSON object of adapter settings")
    missing = [k for k in ("base_model", "rank", "alpha", "targets") if k not in settings]
    if missing:
        raise CheckpointError(f"{path}: not an lmforge adapter config (missing {missing})")
    base = settings["base_model"]
    if not base or not Path(base).exists():
        raise CheckpointError(
            f"{path}: its base model {base!r} is not there; the adapter needs the model it was "
            "trained on"
        )
    return settings


def apply_adapter(model: nn.Module, directory: Path, settings: dict[str, Any]) -> None:
    """Wrap `model`'s target layers with LoRA and load the directory's adapter weights (not merged)."""
    tensors = read_safetensors(directory / ADAPTER_WEIGHTS)
    apply_lora(model, settings["targets"], settings["rank"], settings["alpha"])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    adapter_missing = [k for k in missing if ".lora_" in k]
    if unexpected or adapter_missing:
        raise CheckpointError(
            f"{directory}: the adapter does not fit its base model (missing "
            f"{adapter_missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.eval()
