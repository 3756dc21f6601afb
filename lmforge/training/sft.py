"""Instruction and chat fine-tuning (SFT) through the one trainer: a pretrained model (full or
LoRA) learns the assistant's turns of conversations rendered with its chat template, the loss on
the assistant's tokens only (`lmforge.data.chat`). The result is a bundle (or an adapter) that
`lmforge chat` and `lmforge serve` run with the same template."""

from __future__ import annotations

import sys
from typing import Any

import torch

from lmforge.data.chat import Example, ExampleBatches, example_batch, read_conversations, render
from lmforge.errors import ConfigError
from lmforge.training.build import build_model, build_tokenizer
from lmforge.training.objectives import causal_lm_loss
from lmforge.training.trainer import Trainer, _autocast


def _fit(examples: list[Example], limit: int) -> tuple[list[Example], int, int]:
    """Examples cut to `limit` tokens; how many were cut, and how many left with nothing of the
    assistant's (dropped)."""
    kept, cut, empty = [], 0, 0
    for example in examples:
        if len(example.ids) > limit:
            example, cut = Example(example.ids[:limit], example.mask[:limit]), cut + 1
        if not any(example.mask[1:]):
            empty += 1
            continue
        kept.append(example)
    return kept, cut, empty


class SFTTrainer(Trainer):
    """The trainer, fed conversations."""

    def _prepare_data(self) -> None:
        c = self.config
        if not c.init_from:
            raise ConfigError("task='sft' fine-tunes a pretrained model: pass init_from (--model)")
        data = read_conversations(c.data)
        self.tokenizer = self._tokenizer(lambda: build_tokenizer(c, []))
        examples = [
            render(self.tokenizer, messages, plain)
            for messages, plain in zip(data.items, data.plain, strict=True)
        ]
        if c.val_data is not None:
            held = read_conversations(c.val_data)
            val = [
                render(self.tokenizer, m, p) for m, p in zip(held.items, held.plain, strict=True)
            ]
        elif c.val_fraction > 0 and len(examples) > 1:
            order = torch.randperm(
                len(examples), generator=torch.Generator().manual_seed(c.seed)
            ).tolist()
            count = max(1, int(len(examples) * c.val_fraction))
            val = [examples[i] for i in sorted(order[:count])]
            examples = [examples[i] for i in sorted(order[count:])]
        else:
            val = []
        examples, cut, empty = _fit(examples, c.block_size + 1)
        if not examples:
            raise ConfigError(
                f"{c.data}: no conversation keeps an assistant token within block_size="
                f"{c.block_size}; raise --block-size"
            )
        self.val_examples = _fit(val, c.block_size + 1)[0]
        self.model = build_model(c, self.tokenizer).to(self.dist.device)
        self.stateful = False
        if self.dist.is_main and self.state is None:
            notes = [f"{len(examples)} training conversations"]
            if self.val_examples:
                notes.append(f"{len(self.val_examples)} validation conversations")
            if data.skipped:
                notes.append(f"{data.skipped} skipped (the last turn is not the assistant's)")
            if cut:
                notes.append(f"{cut} cut to {c.block_size + 1} tokens")
            if empty:
                notes.append(f"{empty} left out (no assistant token within the limit)")
            print("; ".join(notes), file=sys.stderr)
        self.batches = ExampleBatches(examples, c.batch_size, self.tokenizer.pad_id, c.seed)
        self.trained_tokens = 0

    def _batch_loss(self) -> torch.Tensor:
        (inputs, targets), _ = self.batches.next()
        if self.dist.active:
            inputs, targets = self.dist.shard(inputs), self.dist.shard(targets)
        self.trained_tokens += int((targets != -100).sum())
        device = self.dist.device
        logits, _ = self.runner(inputs.to(device))
        return causal_lm_loss(logits, targets.to(device), self.config.label_smoothing or 0.0)

    def _tokens_seen(self) -> int:
        return self.trained_tokens

    @torch.no_grad()
    def _validate(self) -> tuple[dict[str, Any], float | None]:
        """Mean loss per assistant token of the validation conversations."""
        if not self.val_examples:
            return {}, None
        self.model.eval()
        total, count, device = 0.0, 0, self.dist.device
        try:
            for start in range(0, len(self.val_examples), self.config.batch_size):
                chunk = self.val_examples[start : start + self.config.batch_size]
                inputs, targets = example_batch(chunk, self.tokenizer.pad_id)
                with _autocast(self.config.precision, device):
                    logits, _ = self.model(inputs.to(device))
                tokens = int((targets != -100).sum())
                total += float(causal_lm_loss(logits, targets.to(device))) * tokens
                count += tokens
        finally:
            self.model.train()
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_ppl": float(torch.tensor(loss).exp())}, -loss

    def _snapshot(self) -> dict[str, Any]:
        return {**super()._snapshot(), "trained_tokens": self.trained_tokens}

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        self.trained_tokens = state.get("trained_tokens", 0)
