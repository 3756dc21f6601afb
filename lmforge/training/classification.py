"""Training a sequence classifier through the one trainer: its loop, schedules, clipping,
autocast, checkpoints, exact resume and torchrun are the trainer's; what differs is the data
(labelled texts in batches of similar length), the model (a `SequenceClassifier` on a new or
pretrained trunk, fully trained or with LoRA adapters) and the evaluation (validation accuracy,
macro-F1 and the confusion matrix; the best model is the most accurate)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmforge.checkpoints.bundle import save_bundle
from lmforge.data.labelled import LabelBatches, LabelledText, check_classes, read_labelled
from lmforge.errors import ConfigError
from lmforge.evaluation.classification import (
    classification_scores,
    encode_texts,
    label_logits,
    plot_confusion,
)
from lmforge.models.heads import SequenceClassifier
from lmforge.models.lora import merge_lora
from lmforge.paths import write_atomically
from lmforge.training.build import build_model, build_tokenizer
from lmforge.training.trainer import Trainer, _autocast


def _held_out(data: LabelledText, fraction: float, seed: int) -> tuple[LabelledText, LabelledText]:
    """A seeded random `fraction` of the rows held out for validation."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[: max(1, int(len(data) * fraction))])
    pick = lambda rows: LabelledText(  # noqa: E731
        [data.texts[i] for i in rows], [data.labels[i] for i in rows], data.names
    )
    return pick([i for i in range(len(data)) if i not in held]), pick(sorted(held))


class ClassificationTrainer(Trainer):
    """The trainer, fed labelled texts."""

    def _prepare_data(self) -> None:
        c = self.config
        train = read_labelled(c.data, c.text_column, c.label_column, c.labels)
        check_classes(train, c.data)
        if c.val_data is not None:
            val = read_labelled(c.val_data, c.text_column, c.label_column, train.names)
        elif c.val_fraction > 0:
            train, val = _held_out(train, c.val_fraction, c.seed)
        else:
            val = None
        self.names, self.val = train.names, val
        self.tokenizer = self._tokenizer(lambda: build_tokenizer(c, train.texts))
        trunk = build_model(c, self.tokenizer)
        self.model = SequenceClassifier(trunk, self.names, c.pooling).to(self.dist.device)
        self.stateful = False
        ids, cut = encode_texts(self.tokenizer, train.texts, c.block_size)
        self.val_ids = encode_texts(self.tokenizer, val.texts, c.block_size)[0] if val else []
        counts = torch.bincount(torch.tensor(train.labels), minlength=len(self.names))
        self.class_weights = None
        if c.class_weights == "balanced":  # n / (classes * count), as scikit-learn's "balanced"
            self.class_weights = len(train) / (len(self.names) * counts.clamp(min=1).float())
        if self.dist.is_main and self.state is None:
            print(
                f"{len(train)} training texts ("
                + ", ".join(f"{n}: {int(k)}" for n, k in zip(self.names, counts, strict=True))
                + ")"
                + (f", {len(val)} validation texts" if val else "")
                + (f"; {cut} longer than {c.block_size} tokens cut to fit" if cut else ""),
                file=sys.stderr,
            )
        self.batches = LabelBatches(ids, train.labels, c.batch_size, self.tokenizer.pad_id, c.seed)
        self.texts_seen, self.last_scores = 0, None

    def _batch_loss(self) -> torch.Tensor:
        batch, _ = self.batches.next()
        self.texts_seen += batch.ids.shape[0]
        ids, mask, labels = batch.ids, batch.mask, batch.labels
        if self.dist.active:  # this process's share of the rows (the batch's texts are equal)
            ids, mask, labels = (self.dist.shard(t) for t in (ids, mask, labels))
        device = self.dist.device
        logits = self.runner(ids.to(device), mask.to(device))
        weight = None if self.class_weights is None else self.class_weights.to(device)
        return F.cross_entropy(
            logits.float(),
            labels.to(device),
            weight=weight,
            label_smoothing=self.config.label_smoothing or 0.0,
        )

    def _tokens_seen(self) -> int:
        return self.texts_seen

    @torch.no_grad()
    def _validate(self) -> tuple[dict[str, Any], float | None]:
        if not self.val:
            return {}, None
        self.model.eval()
        try:
            with _autocast(self.config.precision, self.dist.device):
                logits = label_logits(self.model, self.val_ids, self.tokenizer.pad_id)
        finally:
            self.model.train()
        loss = float(F.cross_entropy(logits, torch.tensor(self.val.labels)))
        scores = classification_scores(logits.argmax(dim=1).tolist(), self.val.labels, self.names)
        self.last_scores = scores
        figures = {
            "val_loss": loss,
            "val_accuracy": scores.accuracy,
            "val_macro_f1": scores.macro_f1,
        }
        return figures, scores.accuracy

    def save_model(
        self, directory: Path, full_state: dict[str, torch.Tensor] | None = None
    ) -> None:
        """The classifier as a bundle (LoRA adapters merged into the trunk), with the validation
        scores of this model and its confusion matrix beside it."""
        if self.config.fsdp:
            raise ConfigError("fsdp=True is for language models; train a classifier with DDP")
        model = self.model
        if self.config.lora_rank:
            model = copy.deepcopy(model)
            merge_lora(model)
        extra = {"train": self.config.to_dict(), "step": self.step}
        save_bundle(model, self.tokenizer, directory, extra_config=extra)
        if self.last_scores is not None:
            report = {"step": self.step, **self.last_scores.as_dict()}
            text = json.dumps(report, indent=1).encode()
            write_atomically(directory / "classification.json", lambda f: f.write(text))
            plot_confusion(self.last_scores, directory / "confusion.png", f"step {self.step}")

    def _weights_and_optimizer(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.config.lora_rank:  # the adapters and the head; the frozen trunk is rebuilt
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
            weights = {k: v for k, v in self.model.state_dict().items() if k in trainable}
            return weights, self.optimizer.state_dict()
        return super()._weights_and_optimizer()

    def _snapshot(self) -> dict[str, Any]:
        return {**super()._snapshot(), "texts_seen": self.texts_seen}

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        self.texts_seen = state.get("texts_seen", 0)
