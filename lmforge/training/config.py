"""Every setting of a training run in one dataclass, validated up front (read from flags, YAML or
JSON), and saved with each checkpoint so a resumed run is the same run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lmforge.device import bf16_matmul_is_fast
from lmforge.errors import ConfigError
from lmforge.paths import read_json

SEQ2SEQ_ARCHS = ("seq2seq", "seq2seq-gru")

# Settings left at None: (a language model's default, a translation run's default). Translation's
# are the recipe of benchmarks/translate_multi30k.py; "auto" precision is bf16 autocast where the
# CPU multiplies bfloat16 fast, else fp32.
KIND_DEFAULTS = {
    "lr": (1e-3, 7e-4),
    "min_lr": (1e-4, 1e-5),
    "warmup": (100, 400),
    "weight_decay": (0.1, 0.01),
    "beta2": (0.99, 0.98),
    "precision": ("fp32", "auto"),
    "steps": (2000, None),  # translation: set from `epochs`
    "epochs": (None, 11),
}


def finetune_defaults(lora: bool, task: str = "lm") -> dict[str, Any]:
    """Settings a fine-tuning run starts from (`lmforge finetune`, `lmforge.finetune`): short,
    gentle runs, a higher rate for LoRA's adapters than for every weight, conversations longer
    than text windows."""
    return dict(
        block_size=512 if task == "sft" else 256,
        batch_size=4,
        steps=100,
        warmup=10,
        eval_interval=50,
        lr=2e-4 if lora else 5e-5,
        min_lr=0.0,
        weight_decay=0.0,
    )


# What a run is: its data, tokenizer and model. A resumed run may change anything else.
RUN_DEFINING = frozenset(
    [
        "data",
        "jsonl_field",
        "target",
        "pair_fields",
        "val_data",
        "val_target",
        "truncate",
        "tokenizer",
        "vocab_size",
        "byte_fallback",
        "lowercase",
        "min_frequency",
        "max_vocab",
        "val_fraction",
        "test_fraction",
        "task",
        "text_column",
        "label_column",
        "labels",
        "pooling",
        "arch",
        "preset",
        "family",
        "n_layer",
        "n_head",
        "n_embd",
        "hidden_size",
        "d_ff",
        "dropout",
        "tie_embeddings",
        "bias",
        "nonlinearity",
        "block_size",
        "embeddings",
        "freeze_embeddings",
        "batch_size",
        "grad_accum",
        "seed",
        "init_from",
        "lora_rank",
        "lora_alpha",
        "lora_targets",
        "fsdp",
    ]
)


@dataclass
class TrainConfig:
    # what to train on
    data: str = "shakespeare"
    jsonl_field: str = "text"  # the JSONL field holding the text
    # char | word | bpe | a pretrained model name or path (None: char, or bpe for translation)
    tokenizer: str | None = None
    vocab_size: int = 8192  # bpe
    byte_fallback: bool = True  # char: unseen characters become UTF-8 byte tokens, not <unk>
    lowercase: bool = False  # word
    min_frequency: int = 1  # word
    max_vocab: int | None = None  # word
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    # translation (arch seq2seq / seq2seq-gru): `data` holds the source side
    target: str | None = None  # the target side, line-aligned with `data` (or a .tsv/.jsonl data)
    pair_fields: list[str] = field(default_factory=lambda: ["source", "target"])  # JSONL keys
    val_data: str | None = None  # held-out pairs (default: val_fraction of the training pairs)
    val_target: str | None = None
    batch_tokens: int = 4096  # source + target tokens in a batch, padding included
    truncate: bool = False  # cut pairs longer than block_size instead of leaving them out
    eval_bleu: int = 500  # validation sentences translated for BLEU at each evaluation (0: none)
    # classification (task "classification"): `data` (and `val_data`) hold labelled rows
    # lm | classification | sft (chat/instruction data, loss on the assistant's tokens);
    # translation is arch seq2seq / seq2seq-gru
    task: str = "lm"
    text_column: str | None = None  # None: the one column besides the label's
    label_column: str = "label"
    labels: list[str] | None = None  # label names in order (None: the values found, sorted)
    pooling: str = "last"  # the classifier reads the last real token's state, or the mean
    class_weights: str = "none"  # none | balanced (weights inverse to class frequency)
    # the model (None: the architecture's default; see lmforge.models.presets)
    arch: str = "gpt"
    preset: str | None = None
    family: str = "gpt2"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    hidden_size: int | None = None
    d_ff: int | None = None
    dropout: float | None = None
    tie_embeddings: bool | None = None
    bias: bool | None = None  # gpt: biases in linear and LayerNorm layers (None: family default)
    nonlinearity: str = "tanh"  # rnn: tanh or relu
    # context of a training window (bptt for recurrent models); translation: the longest
    # sentence in tokens, EOS included (None: 64, or 128 for translation)
    block_size: int | None = None
    embeddings: str | None = None  # word vectors (word2vec/GloVe file) for the input embedding
    freeze_embeddings: bool = False
    # optimisation
    batch_size: int = 12  # global: split across processes
    grad_accum: int = 1
    steps: int | None = None
    # stop (evaluating and saving first) once this session has trained this long, even before
    # `steps`; the schedule still spans `steps`
    max_minutes: float | None = None
    epochs: int | None = None  # translation: passes over the pairs (sets steps)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float | None = None  # None here and below: KIND_DEFAULTS
    min_lr: float | None = None
    schedule: str = "cosine"  # cosine | linear | constant | plateau (lr / 4 when val stalls)
    warmup: int | None = None
    weight_decay: float | None = None
    beta1: float = 0.9
    beta2: float | None = None
    grad_clip: float = 1.0  # 0 turns clipping off
    label_smoothing: float | None = None  # None: 0.1 for translation, 0 for language models
    precision: str | None = None  # fp32 | bf16 (autocast) | auto (bf16 where fast)
    compile: bool = False
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state
    # evaluation, checkpoints, logging
    eval_interval: int = 250
    eval_tokens: int | None = None  # cap on validation tokens per evaluation (None: all)
    patience: int | None = None  # early stopping: evaluations without improvement
    log_interval: int = 10
    tensorboard: bool = False
    seed: int = 1337
    # fine-tuning
    init_from: str | None = None  # a pretrained model to start from
    lora_rank: int = 0  # > 0: train low-rank adapters only
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv", "out"])
    merge_lora: bool = False

    def __post_init__(self) -> None:
        translation = self.arch in SEQ2SEQ_ARCHS
        if self.block_size is None:  # classification, sft: the longest text kept, in tokens
            self.block_size = {"classification": 128, "sft": 512}.get(
                self.task, 128 if translation else 64
            )
        if self.tokenizer is None:
            self.tokenizer = "bpe" if translation else "char"
        self._fill_defaults(translation)
        positive = [
            "block_size",
            "batch_tokens",
            "batch_size",
            "grad_accum",
            "eval_interval",
            "log_interval",
            "vocab_size",
            "min_frequency",
        ]
        positive += [
            n
            for n in (
                "n_layer",
                "n_head",
                "n_embd",
                "hidden_size",
                "d_ff",
                "eval_tokens",
                "patience",
                "max_vocab",
                "steps",
                "epochs",
            )
            if getattr(self, n) is not None
        ]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}={value!r}; expected a positive integer")
        if not self.lr > 0:
            raise ConfigError(f"lr={self.lr}; the learning rate must be > 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(f"min_lr={self.min_lr}; expected 0 <= min_lr <= lr={self.lr}")
        if self.warmup < 0:
            raise ConfigError(f"warmup={self.warmup}; expected >= 0 steps")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ConfigError(f"max_minutes={self.max_minutes}; expected a positive number")
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank={self.lora_rank}; expected >= 0 (0: no LoRA)")
        if self.freeze_embeddings and not self.embeddings:
            raise ConfigError("freeze_embeddings needs embeddings (a word-vector file)")
        if self.freeze_embeddings and self.tie_embeddings is not False:
            raise ConfigError(
                "freeze_embeddings with tied embeddings would freeze the output layer too; "
                "pass tie_embeddings=False (--no-tie-embeddings)"
            )
        if self.lora_rank and not self.init_from:
            raise ConfigError("LoRA adapts a pretrained model: pass init_from (--model)")
        if (
            self.n_embd
            and self.n_head
            and self.arch in ("gpt", "transformer")
            and self.n_embd % self.n_head
        ):
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        choices = {
            "optimizer": ("adamw", "sgd"),
            "schedule": ("cosine", "linear", "constant", "plateau", "inverse_sqrt"),
            "precision": ("fp32", "bf16"),
            "arch": ("rnn", "lstm", "gru", "transformer", "gpt", *SEQ2SEQ_ARCHS),
            "nonlinearity": ("tanh", "relu"),
            "task": ("lm", "classification", "sft"),
            "pooling": ("last", "mean"),
            "class_weights": ("none", "balanced"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing={self.label_smoothing}; expected 0 <= value < 1")
        if self.eval_bleu < 0:
            raise ConfigError(f"eval_bleu={self.eval_bleu}; expected >= 0 (0: no BLEU)")
        if len(self.pair_fields) != 2:
            raise ConfigError(f"pair_fields={self.pair_fields}; expected a source and a target key")
        if (self.val_data is None) != (self.val_target is None) and self.target is not None:
            raise ConfigError(
                "val_data and val_target go together (the held-out source and target)"
            )
        if self.epochs is not None and not translation:
            raise ConfigError("epochs is for translation runs; a language model trains for steps")
        if self.task != "lm" and (translation or self.target is not None):
            raise ConfigError(
                f"task={self.task!r} works on a language model; arch={self.arch!r} and target "
                "are for translation"
            )
        if self.task == "sft" and not self.init_from:
            raise ConfigError("task='sft' fine-tunes a pretrained model: pass init_from (--model)")
        if translation:
            if self.init_from or self.lora_rank or self.embeddings:
                raise ConfigError(
                    f"arch={self.arch!r} trains a translation model from scratch; init_from, LoRA "
                    "and word embeddings are for language models"
                )
            if self.tokenizer != "bpe":
                raise ConfigError(
                    f"tokenizer={self.tokenizer!r}: a translation model trains a joint BPE "
                    "tokenizer on both sides (tokenizer='bpe', the default for it)"
                )
        elif self.target is not None:
            raise ConfigError(
                f"target={self.target!r} is for translation; pass arch='seq2seq' or "
                "'seq2seq-gru' (--arch), or drop the target"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _fill_defaults(self, translation: bool) -> None:
        """Settings left at None get the defaults of their kind of run (`KIND_DEFAULTS`)."""
        for name, defaults in KIND_DEFAULTS.items():
            if getattr(self, name) is None and not (name == "epochs" and self.steps):
                setattr(self, name, defaults[translation])
        if self.precision == "auto":
            self.precision = "bf16" if bf16_matmul_is_fast() else "fp32"

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def resumed_with(
        self, requested: TrainConfig, changes: Iterable[str] | None = None
    ) -> tuple[TrainConfig, list[str]]:
        """This saved run's settings, continued with the `changes` the caller asks for (setting
        names whose value `requested` holds; None: every setting where `requested` differs), and
        one line per change. The settings that define the model and its data cannot change."""
        names = [f.name for f in fields(self)] if changes is None else list(changes)
        values, said = asdict(self), []
        for name in names:
            old, new = values[name], getattr(requested, name)
            if old == new:
                continue
            if name in RUN_DEFINING:
                raise ConfigError(
                    f"{name}={new!r}: a resumed run keeps the {name} it was started with "
                    f"({old!r}); start a new run (another --out) to change it"
                )
            values[name] = new
            said.append(f"{name} {old!r} -> {new!r}")
        return TrainConfig(**values), said

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        """Settings from a YAML or JSON file; `overrides` (e.g. command-line flags) win."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            try:
                values = yaml.safe_load(path.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                raise ConfigError(f"{path}: not readable YAML ({exc})") from None
        else:
            values = read_json(path, ConfigError)
        if not isinstance(values, dict):
            raise ConfigError(
                f"{path}: expected a mapping of setting: value (the file is {'empty' if values is None else type(values).__name__})"
            )
        return cls.from_dict({**values, **overrides}, str(path))
