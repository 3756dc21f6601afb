"""Bundles: a trained model as a directory that lmforge (and, for GPT-2 and Llama, transformers)
loads: `config.json`, `model.safetensors`, `tokenizer.json` (+ its config) and
`generation_config.json`.

A GPT in the GPT-2 or Llama layout is written as a genuine Hugging Face checkpoint (their config
keys and weight names), so `AutoModelForCausalLM.from_pretrained(bundle)` gives the same logits
(a classifier on one: `AutoModelForSequenceClassification`, see `classifier`);
a post-norm Transformer encoder-decoder is written as a Marian one (`MarianMTModel`).
Other models (RNN, nn.Transformer LM, GPTs mixing the two families) keep our names and a
`model_type` of "lmforge-...". Every file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.checkpoints import marian
from lmforge.checkpoints.classifier import classifier_files
from lmforge.checkpoints.hf import (
    hf_config,
    hf_family,
    hf_tensors,
    load_saved_weights,
    read_hf_weights,
)
from lmforge.checkpoints.marian import marian_config, marian_generation_config, marian_tensors
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.gpt import GPT
from lmforge.models.heads import SequenceClassifier
from lmforge.models.presets import MODEL_TYPES, model_type
from lmforge.models.quantized import quantized_mode
from lmforge.tokenizers import Tokenizer


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

    if quantized_mode(model) != "none":
        raise ConfigError("a quantised model cannot be saved as a bundle; load it unquantised")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    family = hf_family(model.config) if isinstance(model, GPT) else None
    tokenizer_extra: dict[str, Any] = {}
    if isinstance(model, SequenceClassifier):
        config, tensors = classifier_files(model, tokenizer)
    elif family is not None:
        config = hf_config(model.config, family, tokenizer)
        tensors = hf_tensors(model, family)
    elif marian.can_write(model):
        config = marian_config(model.config, tokenizer)
        tensors = marian_tensors(model)
        generation = {**marian_generation_config(model.config), **(generation or {})}
        # transformers' fast tokenizer, not Marian's SentencePiece one; byte-level BPE never
        # needs an unknown token, but CTranslate2 wants one named
        eos = tokenizer.token(model.config.eos_id)
        tokenizer_extra = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": eos}
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
        if tokenizer_extra:
            path = staging / "tokenizer_config.json"
            path.write_text(
                json.dumps({**json.loads(path.read_text()), **tokenizer_extra}, indent=1)
            )
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

    kind = saved.get("model_type")
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"{directory}/config.json: unknown model_type {kind!r}")
    config_cls, model_cls = MODEL_TYPES[kind]
    try:
        config = config_cls.from_dict(saved["lmforge_config"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory}/config.json: invalid lmforge_config ({exc})") from exc
    model = model_cls(config)
    tied = "lm_head.weight" if getattr(config, "tie_embeddings", False) else None
    load_saved_weights(model, read_hf_weights(directory), str(directory), tied)
    return model.eval()
