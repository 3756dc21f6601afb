"""Sequence classifiers as bundles, written and read.

A classifier on a GPT-2 or Llama trunk reading the last token is written as transformers'
`GPT2ForSequenceClassification` / `LlamaForSequenceClassification` (the trunk under its HF names,
no LM head, the label head as `score.weight`, `id2label`), so `pipeline("text-classification")`
runs the bundle with the same logits; transformers finds the last real token by the padding id,
which the bundle's `pad_token_id` names. Any other classifier keeps our names under the model type
"lmforge-classifier", its trunk's type and config beside the labels and pooling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lmforge.checkpoints.hf import (
    build_gpt,
    config_from_hf,
    hf_config,
    hf_family,
    hf_tensors,
    load_saved_weights,
    rename_hf_tensors,
)
from lmforge.errors import CheckpointError
from lmforge.models.gpt import GPT
from lmforge.models.heads import SequenceClassifier
from lmforge.models.presets import MODEL_TYPES, model_type
from lmforge.tokenizers import Tokenizer

MODEL_TYPE = "lmforge-classifier"
_HF_CLASSES = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification"}


def _hf_family(model: SequenceClassifier) -> str | None:
    if isinstance(model.trunk, GPT) and model.pooling == "last":
        return hf_family(model.trunk.config)
    return None


def classifier_files(
    model: SequenceClassifier, tokenizer: Tokenizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The bundle's config.json and tensors for `model`."""
    family = _hf_family(model)
    head = {"score.weight": model.score.weight}
    if family is not None:
        config = hf_config(model.trunk.config, family, tokenizer)
        config.update(
            architectures=[_HF_CLASSES[family]],
            num_labels=len(model.labels),
            id2label={str(i): name for i, name in enumerate(model.labels)},
            label2id={name: i for i, name in enumerate(model.labels)},
            pad_token_id=tokenizer.pad_id,
            problem_type="single_label_classification",
        )
        tensors = {
            k: v for k, v in hf_tensors(model.trunk, family).items() if k != "lm_head.weight"
        }
        return config, {**tensors, **head}
    trunk = model.trunk
    config = {
        "model_type": MODEL_TYPE,
        "lmforge_config": {
            "trunk_type": model_type(trunk),
            "trunk": trunk.config.to_dict(),
            **model.head_config(),
        },
    }
    tensors = dict(model.state_dict())
    if getattr(trunk.config, "tie_embeddings", False):
        tensors.pop("trunk.lm_head.weight", None)
    return config, tensors


def is_classifier(saved: dict[str, Any]) -> bool:
    """Whether a config.json describes a sequence classifier lmforge reads."""
    architectures = saved.get("architectures") or []
    return saved.get("model_type") == MODEL_TYPE or any(
        str(a).endswith("ForSequenceClassification") for a in architectures
    )


def classifier_from_files(
    saved: dict[str, Any], tensors: dict[str, torch.Tensor], source: str
) -> SequenceClassifier:
    """Rebuild a classifier from its config.json (`saved`) and tensors."""
    if saved.get("model_type") == MODEL_TYPE:
        settings = saved.get("lmforge_config") or {}
        kind = settings.get("trunk_type")
        if kind not in MODEL_TYPES:
            raise CheckpointError(f"{source}: unknown trunk type {kind!r}")
        config_cls, model_cls = MODEL_TYPES[kind]
        trunk = model_cls(config_cls.from_dict(settings["trunk"]))
        model = SequenceClassifier(trunk, settings["labels"], settings.get("pooling", "last"))
        tied = "trunk.lm_head.weight" if getattr(trunk.config, "tie_embeddings", False) else None
        load_saved_weights(model, tensors, source, tied)
        return model.eval()
    if saved.get("model_type") not in _HF_CLASSES:
        raise CheckpointError(
            f"{source}: a {saved.get('model_type')!r} sequence classifier is not supported; "
            f"supported: {sorted(_HF_CLASSES)}"
        )
    config = config_from_hf(saved, source)
    config.tie_embeddings = True  # the classifier has no LM head; the trunk reads none
    config.extra.update(source_format="huggingface")
    id2label = saved.get("id2label") or {}
    labels = [
        id2label.get(str(i), f"LABEL_{i}") for i in range(saved.get("num_labels", len(id2label)))
    ]
    if "score.weight" not in tensors:
        raise CheckpointError(f"{source}: no score.weight (the classification head)")
    score = tensors.pop("score.weight")
    trunk_tensors = rename_hf_tensors(config.extra["family"], tensors, source)
    trunk = build_gpt(config, trunk_tensors, source)
    model = SequenceClassifier(trunk, labels, "last")
    if tuple(score.shape) != tuple(model.score.weight.shape):
        raise CheckpointError(
            f"{source}: score.weight has shape {tuple(score.shape)}, expected "
            f"{tuple(model.score.weight.shape)}"
        )
    model.score.weight = nn.Parameter(score.to(model.score.weight.dtype))
    return model.eval()
