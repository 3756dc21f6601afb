"""Everything a run is built from: its tokenizer, its model (new, pretrained, with LoRA adapters or
word vectors) and its optimizer."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import AddedToken, processors
from torch import nn

from lmforge.checkpoints import load_checkpoint
from lmforge.embeddings.vectors import KeyedVectors, load_into_embedding
from lmforge.errors import ConfigError
from lmforge.models.lora import apply_lora
from lmforge.models.presets import build_model as build_architecture
from lmforge.tokenizers import Tokenizer
from lmforge.tokenizers.train import KINDS, train_tokenizer
from lmforge.training.config import SEQ2SEQ_ARCHS, TrainConfig

PAD = "<pad>"


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """nanoGPT's split: matrices and embeddings decay; biases and norm weights do not."""
    decay, no_decay = [], []
    for param in {id(p): p for p in model.parameters() if p.requires_grad}.values():
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":  # word_language_model's plain SGD
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)
    # The fused kernel updates every parameter in one pass (faster than the foreach one);
    # sharded (DTensor) parameters take the default implementation.
    return torch.optim.AdamW(
        parameter_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        fused=not config.fsdp,
    )


def build_tokenizer(config: TrainConfig, texts: Iterable[str]) -> Tokenizer:
    """Train the configured tokenizer on the training `texts`, or take a pretrained model's."""
    if config.init_from:
        if config.tokenizer not in ("char", config.init_from):
            raise ConfigError(
                "fine-tuning keeps the pretrained model's tokenizer; drop --tokenizer"
            )
        return load_checkpoint(config.init_from).tokenizer
    if config.tokenizer in KINDS:
        options: dict[str, Any] = {}
        if config.tokenizer == "word":
            options = dict(
                lowercase=config.lowercase,
                min_frequency=config.min_frequency,
                max_vocab=config.max_vocab,
            )
        elif config.tokenizer == "char":
            options = dict(byte_fallback=config.byte_fallback)
        elif config.tokenizer == "bpe":
            options = dict(vocab_size=config.vocab_size)
        return train_tokenizer(config.tokenizer, texts, **options)
    return load_checkpoint(config.tokenizer).tokenizer


def build_translation_tokenizer(config: TrainConfig, sources: list[str], targets: list[str]):
    """One byte-level BPE vocabulary learnt from both sides (shared embeddings need it).
    `<|endoftext|>` ends every sentence; `<pad>`, the last id as in Marian's vocabularies, pads
    batches and starts the decoder (from its all-zero embedding, as Marian does)."""
    tokenizer = train_tokenizer("bpe", [*sources, *targets], vocab_size=config.vocab_size - 1)
    tokenizer.backend.add_special_tokens([AddedToken(PAD, special=True, normalized=False)])
    tokenizer.pad_id = tokenizer.backend.token_to_id(PAD)
    # Hugging Face tokenizers loading the bundle end each source with EOS, as lmforge does
    eos = tokenizer.token(tokenizer.eos_ids[0])
    tokenizer.backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_ids[0])]
    )
    return tokenizer


def build_model(config: TrainConfig, tokenizer: Tokenizer) -> nn.Module:
    """A new model of `config.arch`, or the pretrained `init_from` (with LoRA adapters if asked)."""
    torch.manual_seed(config.seed)  # initial weights (and LoRA's A) are part of the run
    if config.init_from:
        model = load_checkpoint(config.init_from).model.float()
        model.config.max_seq_len = max(model.config.max_seq_len, config.block_size)
        if config.lora_rank:
            apply_lora(model, config.lora_targets, config.lora_rank, config.lora_alpha)
        return model
    model = build_architecture(
        config.arch,
        tokenizer.vocab_size,
        config.block_size,
        preset=config.preset,
        family=config.family,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_embd=config.n_embd,
        hidden_size=config.hidden_size,
        d_ff=config.d_ff,
        dropout=config.dropout,
        tie_embeddings=config.tie_embeddings,
        bias=config.bias,
        nonlinearity=config.nonlinearity,
        special_ids=_special_ids(tokenizer) if config.arch in SEQ2SEQ_ARCHS else None,
    )
    if config.embeddings:
        _load_embeddings(model, tokenizer, config)
    return model


def _special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    if not tokenizer.eos_ids:
        raise ConfigError("a translation model needs a tokenizer with an EOS token")
    return dict(pad_id=tokenizer.pad_id, start_id=tokenizer.pad_id, eos_id=tokenizer.eos_ids[0])


def _load_embeddings(model: nn.Module, tokenizer: Tokenizer, config: TrainConfig) -> None:
    """Initialise the input embedding from word vectors, row by row of the vocabulary."""
    vectors = KeyedVectors.load(config.embeddings)
    vocabulary = [tokenizer.token(i) or "" for i in range(tokenizer.vocab_size)]
    done, random = load_into_embedding(model.embed, vocabulary, vectors, config.freeze_embeddings)
    if done == 0:
        raise ConfigError(
            f"embeddings={config.embeddings}: no token of the vocabulary has a vector; the "
            "vectors need the tokenizer's words (a word-level tokenizer, same lower-casing)"
        )
    frozen = " (frozen)" if config.freeze_embeddings else ""
    print(
        f"embeddings: {done} of {len(vocabulary)} tokens initialised from {config.embeddings}"
        f"{frozen}, {random} random",
        file=sys.stderr,
    )
