"""One trainer for every lmforge model: from scratch or from a pretrained model, alone or under
`torchrun`, stopped and resumed at any step with exactly the same result.

A run directory holds the best model so far as a bundle (`lmforge generate --model DIR` loads
it), `checkpoints/last.pt` (everything needed to resume), `metrics.csv` and `loss.png`.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.checkpoints import resolve
from lmforge.checkpoints.adapters import save_adapter
from lmforge.checkpoints.bundle import save_bundle
from lmforge.data.batches import RandomWindows, Streams
from lmforge.data.corpus import Corpus
from lmforge.data.tokens import split_tokens, tokenize_corpus, tokenizer_digest
from lmforge.errors import CheckpointError, ConfigError
from lmforge.evaluation.perplexity import score_chunks
from lmforge.models.lora import lora_state_dict, merge_lora
from lmforge.models.presets import model_from_config
from lmforge.models.rnn import RNNState
from lmforge.paths import remove_stale_temporaries
from lmforge.tokenizers import Tokenizer
from lmforge.training import checkpointing
from lmforge.training.allocator import keep_freed_memory
from lmforge.training.build import build_model, build_tokenizer, make_optimizer
from lmforge.training.config import TrainConfig
from lmforge.training.distributed import setup, teardown
from lmforge.training.objectives import causal_lm_loss
from lmforge.training.reporting import (
    LossPlot,
    MetricsFile,
    ProgressBar,
    Reporter,
    StepCallback,
    TensorBoard,
)
from lmforge.training.schedule import make_scheduler

CHECKPOINTS = "checkpoints"


@dataclass
class TrainResult:
    out: Path
    step: int
    train_losses: list[float]  # one per optimizer step, from step 0
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float | None = None
    stopped_early: bool = False
    # Each training step's time this session (no evaluation, no saving; fewer steps than
    # `step` after a resume).
    step_seconds: list[float] = field(default_factory=list)

    @property
    def train_seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def steps_run(self) -> int:
        return len(self.step_seconds)

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.train_seconds / max(1, self.steps_run)

    @property
    def median_ms_per_step(self) -> float:
        """The typical step, unmoved by a slow stretch of a shared machine."""
        return 1000 * statistics.median(self.step_seconds) if self.step_seconds else 0.0


def _autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()  # (entering even a disabled autocast costs time every step)


class Trainer:
    """Runs (or resumes) one training run into the directory `out`."""

    def __init__(
        self,
        config: TrainConfig,
        out: str | Path,
        resume: bool = False,
        on_step: Callable[[int, float], None] | None = None,
        changes: Iterable[str] | None = None,
    ):
        self.out = Path(out)
        self.on_step = on_step  # called with (step, loss) after each step, outside its timing
        self.checkpoints = self.out / CHECKPOINTS
        for directory in (self.out, self.checkpoints):  # what a killed run was writing
            if directory.is_dir():
                remove_stale_temporaries(directory)
        self.dist = setup(config.batch_size)
        self.state = checkpointing.load_latest_state(self.checkpoints) if resume else None
        if self.state is None and (self.checkpoints / checkpointing.LAST).exists():
            raise ConfigError(
                f"--out {self.out} already holds a run; pass --resume to continue it or choose "
                "another --out"
            )
        if self.state is not None:
            saved = TrainConfig.from_dict(self.state["config"], f"{self.checkpoints}")
            config, said = saved.resumed_with(config, changes)
            if said and self.dist.is_main:
                step = self.state["step"]
                print(
                    f"resuming {self.out} at step {step} with " + ", ".join(said), file=sys.stderr
                )
        self.config = config
        self._prepare_data()
        self.model.train()
        if config.fsdp:
            self._shard(self.model)
        self.optimizer = make_optimizer(self.model, config)
        self.lr_scale = 1.0  # the "plateau" schedule divides it by 4 when validation stalls
        self.scheduler = make_scheduler(self.optimizer, config, lambda: self.lr_scale)
        self.step, self.train_losses, self.evaluations = 0, [], []
        self.best_val, self.best_score, self.bad_evals, self.hidden = None, None, 0, None
        if self.state is not None:
            self._restore(self.state)
        self.runner = self._wrap(self.model)

    # --- set-up --------------------------------------------------------------------------------

    def _prepare_data(self) -> None:
        """The task's part of the set-up: text, tokenizer, model and batches (a language model
        here: a corpus read in windows or, for recurrent models, in parallel streams)."""
        config = self.config
        self.corpus = Corpus(config.data, config.jsonl_field)
        self.tokenizer = self._tokenizer(lambda: build_tokenizer(config, self.corpus.texts()))
        tokens = tokenize_corpus(self.corpus, self.tokenizer)
        self.splits = split_tokens(tokens, config.val_fraction, config.test_fraction)
        self.model = build_model(config, self.tokenizer).to(self.dist.device)
        self.stateful = self.model.stateful
        batches_cls = Streams if self.stateful else RandomWindows
        args = (self.splits.train, config.block_size, config.batch_size)
        self.batches = batches_cls(*args) if self.stateful else batches_cls(*args, config.seed)

    def _tokenizer(self, build: Callable[[], Tokenizer]) -> Tokenizer:
        """The resumed run's tokenizer (checked against its checkpoint), or a new one saved."""
        if self.state is not None:
            tokenizer = Tokenizer.from_hf_directory(self.out)
            if tokenizer_digest(tokenizer) != self.state["tokenizer_digest"]:
                raise CheckpointError(
                    f"{self.out}/tokenizer.json does not match the tokenizer of the checkpoint "
                    "being resumed (it was changed or replaced); restore it or start a new run"
                )
            return tokenizer
        tokenizer = build()
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            tokenizer.save(self.out)
        return tokenizer

    def _shard(self, model: nn.Module) -> None:
        """FSDP (PyTorch's `fully_shard`): each process keeps 1/N of every parameter, gradient and
        optimizer state; each transformer block gathers its weights just for its own compute."""
        from torch.distributed.fsdp import fully_shard

        if not self.dist.active:
            raise ConfigError("fsdp=True shards across processes: launch with torchrun")
        if self.config.lora_rank:
            raise ConfigError("fsdp=True with LoRA is not supported; use DDP (drop --fsdp)")
        for block in getattr(model, "blocks", ()):
            fully_shard(block)
        fully_shard(model)

    def _wrap(self, model: nn.Module) -> nn.Module:
        runner = model
        if self.dist.active and not self.config.fsdp:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            runner = DistributedDataParallel(model, device_ids=device_ids)
        if self.config.compile:
            # The graphs call their kernels from C++ rather than Python: a faster step at the
            # same compile time.
            runner = torch.compile(runner, options={"cpp_wrapper": True})
        return runner

    def _restore(self, state: dict[str, Any]) -> None:
        if self.config.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, state["model"], options=options)
            set_optimizer_state_dict(
                self.model, self.optimizer, state["optimizer"], options=options
            )
            missing, unexpected = [], []
        else:
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if unexpected or trainable & set(missing):
            raise CheckpointError(
                f"{self.checkpoints}: the checkpoint's weights do not fit this model "
                f"(missing {sorted(trainable & set(missing))[:3]}, unexpected {unexpected[:3]})"
            )
        if not self.config.fsdp:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step = state["step"]
        self.train_losses = list(state["train_losses"])
        self.evaluations = list(state["evaluations"])
        self.best_val, self.bad_evals = state["best_val"], state["bad_evals"]
        # runs saved before best_score kept the best model by validation loss
        self.best_score = state.get("best_score", None if self.best_val is None else -self.best_val)
        self.lr_scale = state["lr_scale"]
        hidden = state.get("hidden")
        if hidden is not None:
            rows = lambda t: self.dist.shard(t.transpose(0, 1)).transpose(0, 1).contiguous()  # noqa: E731
            parts = (
                tuple(rows(t) for t in hidden)
                if isinstance(hidden, (list, tuple))
                else rows(hidden)
            )
            self.hidden = RNNState(parts)

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config = self.config
        keep_freed_memory()  # each step's activations reuse the last step's pages
        reporters = self._reporters()
        stopped_early, train_seconds, first_tokens = False, 0.0, self._tokens_seen()
        step_seconds: list[float] = []
        try:
            while self.step < config.steps:
                started = time.perf_counter()
                loss = self._train_step()
                self.train_losses.append(loss)
                self.step += 1
                step_seconds.append(time.perf_counter() - started)
                train_seconds += step_seconds[-1]
                speed = (self._tokens_seen() - first_tokens) / max(train_seconds, 1e-9)
                if self.step % config.log_interval == 0 or self.step == config.steps:
                    lr = self.scheduler.get_last_lr()[0]
                    for reporter in reporters:
                        reporter.on_log(self.step, loss, lr, speed)
                out_of_time = self._out_of_time(train_seconds)
                if (
                    self.step % config.eval_interval == 0
                    or self.step == config.steps
                    or out_of_time
                ):
                    stopped_early = self._evaluate_and_save(speed, reporters)
                for reporter in reporters:
                    reporter.on_step(self.step, loss)
                if stopped_early or out_of_time:
                    break
        finally:
            for reporter in reporters:
                reporter.close()
        result = TrainResult(
            self.out,
            self.step,
            list(self.train_losses),
            list(self.evaluations),
            self.best_val,
            stopped_early,
            step_seconds,
        )
        teardown()
        return result

    def _out_of_time(self, train_seconds: float) -> bool:
        """Whether this session's training time reached `max_minutes` (every process agrees:
        one that is out of time stops them all)."""
        limit = self.config.max_minutes
        if limit is None:
            return False
        return self.dist.mean(float(train_seconds >= 60 * limit)) > 0

    def _reporters(self) -> list[Reporter]:
        """The progress bar and the run directory's files (one process writes them), and the
        caller's `on_step` (every process)."""
        reporters: list[Reporter] = []
        config = self.config
        if self.dist.is_main:
            reporters += [
                ProgressBar(config.steps, self.step, config.arch),
                MetricsFile(self.out),
                LossPlot(self.out, f"{config.arch} on {config.data}"),
            ]
            if config.tensorboard:
                reporters.append(TensorBoard(self.out))
        if self.on_step is not None:
            reporters.append(StepCallback(self.on_step))
        return reporters

    def _train_step(self) -> float:
        config, dist = self.config, self.dist
        total = 0.0
        for micro in range(config.grad_accum):
            sync = micro == config.grad_accum - 1 or not dist.active
            context = contextlib.nullcontext()
            if config.fsdp:
                self.model.set_requires_gradient_sync(sync)
            elif not sync:
                context = self.runner.no_sync()
            with context, _autocast(config.precision, dist.device):
                loss = self._batch_loss()
                (loss / config.grad_accum).backward()
            total += loss.item() / config.grad_accum
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return dist.mean(total)

    def _batch_loss(self) -> torch.Tensor:
        """The loss of the next (micro-)batch: next-token cross-entropy over a window, recurrent
        models carrying their state from the previous chunk."""
        x, y, new_epoch = self.batches.next()
        x, y = self.dist.shard(x).to(self.dist.device), self.dist.shard(y).to(self.dist.device)
        if self.stateful:
            if new_epoch or self.hidden is None:
                self.hidden = self.model.new_cache(x.shape[0])
            logits, self.hidden = self.runner(x, self.hidden)
            self.hidden.detach()
        else:
            logits, _ = self.runner(x)
        return causal_lm_loss(logits, y, self.config.label_smoothing or 0.0)

    def _validate(self) -> tuple[dict[str, Any], float | None]:
        """Validation figures for the record, and the score the best model is kept by (higher
        is better; None: no validation data): here minus the validation loss."""
        if len(self.splits.val) <= 1:
            return {}, None
        with _autocast(self.config.precision, self.dist.device):
            score = score_chunks(
                self.model,
                self.splits.val,
                self.tokenizer,
                self.config.block_size,
                max_tokens=self.config.eval_tokens,
            )
        figures = dict(
            val_loss=score.loss,
            val_ppl=score.perplexity,
            val_bpc=score.bits_per_character,
            val_bpb=score.bits_per_byte,
        )
        return figures, -score.loss

    def _tokens_seen(self) -> int:
        """Training tokens so far (the record's `tokens`)."""
        c = self.config
        return self.step * c.batch_size * c.block_size * c.grad_accum

    def _evaluate_and_save(self, speed: float, reporters: list[Reporter]) -> bool:
        """Score the validation split, keep the best model, checkpoint; True to stop early."""
        config = self.config
        record: dict[str, Any] = {
            "step": self.step,
            "tokens": self._tokens_seen(),
            "train_loss": sum(self.train_losses[-config.log_interval :])
            / len(self.train_losses[-config.log_interval :]),
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_s": speed,
        }
        improved = True
        figures, score = self._validate()
        record.update(figures)
        if score is not None:
            improved = self.best_score is None or score > self.best_score
            if improved:
                self.best_score, self.bad_evals = score, 0
                self.best_val = figures.get("val_loss")
            else:
                self.bad_evals += 1
                if config.schedule == "plateau":
                    self._anneal()
        self.evaluations.append(record)
        stop = config.patience is not None and self.bad_evals >= config.patience
        state = self._snapshot()  # every process takes part (gathers shards and hidden states)
        if self.dist.is_main:
            if improved:
                self.save_model(self.out, state["model"])
            checkpointing.save_state(state, self.checkpoints)
            for reporter in reporters:
                reporter.on_evaluation(self.evaluations, self.train_losses)
            if stop:
                print(
                    f"early stopping at step {self.step}: no improvement in "
                    f"{config.patience} evaluations",
                    file=sys.stderr,
                )
        self.dist.barrier()
        return stop

    def _anneal(self) -> None:
        """Divide the learning rate by 4 from the next step on (the "plateau" schedule)."""
        self.lr_scale /= 4.0
        step = self.scheduler.last_epoch
        for group, base, factor in zip(
            self.optimizer.param_groups,
            self.scheduler.base_lrs,
            self.scheduler.lr_lambdas,
            strict=True,
        ):
            group["lr"] = base * factor(step)

    # --- outputs -------------------------------------------------------------------------------

    def save_model(
        self, directory: Path, full_state: dict[str, torch.Tensor] | None = None
    ) -> None:
        """The model as a bundle (with LoRA: the adapter alone, or merged if asked). A sharded
        model is saved from `full_state`, its gathered state dict, through an unsharded copy."""

        extra = {"train": self.config.to_dict(), "step": self.step}
        if self.config.lora_rank and not self.config.merge_lora:
            c = self.config
            base = resolve(c.init_from)
            save_adapter(
                self.model,
                base,
                c.lora_rank,
                c.lora_alpha,
                c.lora_targets,
                self.tokenizer,
                directory,
            )
            return
        model = self.model
        if self.config.fsdp:
            import copy

            model = model_from_config(copy.deepcopy(self.model.config))
            model.load_state_dict(full_state)
        if self.config.lora_rank:
            import copy

            model = merge_lora(copy.deepcopy(model))
        save_bundle(model, self.tokenizer, directory, extra_config=extra)

    def _weights_and_optimizer(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.config.fsdp:  # gather the shards into full (CPU) state dicts
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return (
                get_model_state_dict(self.model, options=options),
                get_optimizer_state_dict(self.model, self.optimizer, options=options),
            )
        if self.config.lora_rank:  # the frozen base is rebuilt from init_from on resume
            return lora_state_dict(self.model), self.optimizer.state_dict()
        return self.model.state_dict(), self.optimizer.state_dict()

    def _snapshot(self) -> dict[str, Any]:
        """Everything a resume needs. Collective: every process must call it."""
        hidden = None
        if self.hidden is not None:
            gather = lambda t: self.dist.gather_rows(t, dim=1)  # noqa: E731
            h = self.hidden.hidden
            hidden = tuple(gather(t) for t in h) if isinstance(h, tuple) else gather(h)
        weights, optimizer = self._weights_and_optimizer()
        return {
            "step": self.step,
            "config": self.config.to_dict(),
            "tokenizer_digest": tokenizer_digest(self.tokenizer),
            "model": weights,
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "data": self.batches.state_dict(),
            "hidden": hidden,
            "train_losses": self.train_losses,
            "evaluations": self.evaluations,
            "best_val": self.best_val,
            "best_score": self.best_score,
            "bad_evals": self.bad_evals,
            "lr_scale": self.lr_scale,
        }
