"""Training an encoder-decoder on parallel text, through the one trainer: its loop, schedules,
clipping, autocast, checkpoints, exact resume and torchrun are the trainer's; what differs is the
data (sentence pairs in batches of about `batch_tokens` tokens), the loss (label-smoothed
cross-entropy over target tokens, teacher forcing) and the evaluation (validation loss, and BLEU
of greedy translations of `eval_bleu` validation sentences; the best model is the best BLEU)."""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from lmforge.data.parallel import (
    EncodedPairs,
    PairBatch,
    ParallelText,
    TokenBatches,
    encode_pairs,
    make_batch,
    read_parallel,
)
from lmforge.evaluation.metrics import translation_scores
from lmforge.generation.config import GenerationConfig
from lmforge.generation.seq2seq import source_ids, translate_tokens
from lmforge.training.build import build_model, build_translation_tokenizer
from lmforge.training.objectives import seq2seq_loss
from lmforge.training.trainer import Trainer, _autocast

LABEL_SMOOTHING = 0.1  # the Transformer paper's


def _split(text: ParallelText, fraction: float, seed: int) -> tuple[ParallelText, ParallelText]:
    """A seeded random `fraction` of the pairs held out for validation."""
    order = torch.randperm(len(text), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[: max(1, int(len(text) * fraction))])
    keep = [i for i in range(len(text)) if i not in held]
    pick = lambda rows: ParallelText(  # noqa: E731
        [text.sources[i] for i in rows], [text.targets[i] for i in rows]
    )
    return pick(keep), pick(sorted(held))


class TranslationTrainer(Trainer):
    """The trainer, fed sentence pairs."""

    def _prepare_data(self) -> None:
        c = self.config
        fields = (c.pair_fields[0], c.pair_fields[1])
        train_text = read_parallel(c.data, c.target, fields)
        if c.val_data is not None:
            val_text = read_parallel(c.val_data, c.val_target, fields)
        elif c.val_fraction > 0:
            train_text, val_text = _split(train_text, c.val_fraction, c.seed)
        else:
            val_text = None
        self.tokenizer = self._tokenizer(
            lambda: build_translation_tokenizer(c, train_text.sources, train_text.targets)
        )
        self.model = build_model(c, self.tokenizer).to(self.dist.device)
        self.stateful, self.val_text = False, val_text
        m = self.model.config
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.train_pairs, dropped = encode_pairs(
            train_text, encode, m.eos_id, c.block_size, c.truncate
        )
        self.val_pairs: EncodedPairs | None = None
        self.val_batches: list[PairBatch] = []  # padded once, scored at every evaluation
        if val_text is not None:
            self.val_pairs, _ = encode_pairs(
                val_text, encode, m.eos_id, c.block_size, truncate=True, what="validation"
            )
            budget = max(c.batch_tokens, 2 * m.max_seq_len)
            grouped = TokenBatches(self.val_pairs, budget, m.pad_id, m.start_id, seed=0).batches
            self.val_batches = [
                make_batch(
                    [self.val_pairs.sources[i] for i in rows],
                    [self.val_pairs.targets[i] for i in rows],
                    m.pad_id,
                    m.start_id,
                )
                for rows in grouped
            ]
        if self.dist.is_main and self.state is None:
            print(
                f"{len(self.train_pairs)} training pairs"
                + (f", {len(val_text)} validation pairs" if val_text is not None else "")
                + (
                    f"; {train_text.skipped_empty} with an empty side skipped"
                    if train_text.skipped_empty
                    else ""
                )
                + (
                    f"; {dropped} longer than {c.block_size} tokens left out (--truncate cuts them instead)"
                    if dropped
                    else ""
                ),
                file=sys.stderr,
            )
        self.batches = TokenBatches(self.train_pairs, c.batch_tokens, m.pad_id, m.start_id, c.seed)
        if c.epochs is not None:
            c.steps = c.epochs * self.batches.steps_per_epoch
        self.target_tokens = 0

    def _batch_loss(self) -> torch.Tensor:
        batch, _ = self.batches.next()
        total, weight = batch.target_tokens, 1.0
        self.target_tokens += total
        if self.dist.active:  # this process's share of the rows
            bounds = torch.linspace(0, batch.source.shape[0], self.dist.world_size + 1).long()
            batch = batch.rows(slice(int(bounds[self.dist.rank]), int(bounds[self.dist.rank + 1])))
            # weighted by its share of the tokens, so that DDP's average of the processes'
            # gradients is the gradient of the whole batch's mean loss per token
            weight = batch.target_tokens * self.dist.world_size / total
        device = self.dist.device
        logits = self.runner(
            batch.source.to(device),
            batch.source_mask.to(device),
            batch.target_in.to(device),
            batch.target_mask.to(device),
        )
        smoothing = (
            LABEL_SMOOTHING if self.config.label_smoothing is None else self.config.label_smoothing
        )
        return weight * seq2seq_loss(
            logits, batch.target_out.to(device), batch.target_mask.to(device), smoothing
        )

    def _tokens_seen(self) -> int:
        return self.target_tokens

    @torch.no_grad()
    def _validate(self) -> tuple[dict[str, Any], float | None]:
        if self.val_pairs is None:
            return {}, None
        self.model.eval()
        try:
            figures = {"val_loss": self._validation_loss()}
            figures["val_ppl"] = math.exp(min(figures["val_loss"], 50.0))
            if self.config.eval_bleu:
                figures.update(self._validation_bleu())
        finally:
            self.model.train()
        score = figures["val_bleu"] if "val_bleu" in figures else -figures["val_loss"]
        return figures, score

    def _validation_loss(self) -> float:
        """Mean cross-entropy per target token over the validation pairs (no smoothing)."""
        total, tokens, device = 0.0, 0, self.dist.device
        for batch in self.val_batches:
            with _autocast(self.config.precision, device):
                logits = self.model(
                    batch.source.to(device),
                    batch.source_mask.to(device),
                    batch.target_in.to(device),
                    batch.target_mask.to(device),
                )
            count = batch.target_tokens
            loss = seq2seq_loss(logits, batch.target_out.to(device), batch.target_mask.to(device))
            total, tokens = total + float(loss) * count, tokens + count
        return total / max(tokens, 1)

    def _validation_bleu(self, batch_size: int = 64) -> dict[str, float]:
        """BLEU and chrF of greedy translations of the first `eval_bleu` validation sentences."""
        count = min(self.config.eval_bleu, len(self.val_text))
        texts, references = self.val_text.sources[:count], self.val_text.targets[:count]
        config = GenerationConfig(max_new_tokens=self.model.config.max_seq_len - 1)
        hypotheses = []
        for start in range(0, count, batch_size):
            sources = source_ids(
                self.model, self.tokenizer, texts[start : start + batch_size], truncate=True
            )
            hypotheses += [
                r.text.strip()
                for r in translate_tokens(self.model, self.tokenizer, sources, config)
            ]
        scores = translation_scores(hypotheses, references)
        return {"val_bleu": scores.bleu, "val_chrf": scores.chrf}

    def _snapshot(self) -> dict[str, Any]:
        return {**super()._snapshot(), "target_tokens": self.target_tokens}

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        self.target_tokens = state.get("target_tokens", 0)
