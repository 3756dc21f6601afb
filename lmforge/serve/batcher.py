"""Continuous batching: every request joins the running batch at the next decode step.

One worker thread owns the model and a KV cache with `max_batch` rows. All rows share one slot
timeline: each decode step writes slot `cache.length` of every row. A new request is prefilled
on its own and its keys/values are copied into a free row so that its prompt ends at the
current slot (earlier slots of that row are masked out); if the prompt is longer than the
timeline so far, the timeline is shifted right first. When the timeline reaches the end of the
cache it is shifted left past slots no running row uses. Each row keeps its own positions,
decoding options, random generator and stop rules, so requests with different options share
one forward pass. A row whose client is gone is freed at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

import torch

from lmforge.generation.processors import History, apply_processors, build_processors
from lmforge.generation.search import StreamEvent, _top, eos_ids, token_event
from lmforge.generation.stream import TextAssembler

DONE = object()  # the end-of-request marker on a job's event queue


class QueueFull(Exception):
    """The server has as many requests waiting as it accepts."""


@dataclass
class Job:
    """One HTTP request: its prompts (one per returned choice) and decoding options."""

    prompts: list[list[int]]
    options: dict
    loop: asyncio.AbstractEventLoop
    deadline: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished_rows: int = 0

    def put(self, item) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Outbox:
    """Items for jobs, handed to their event loops in one call per decode step: one wake-up of
    the HTTP thread per step instead of one per row keeps it off the model's cores."""

    def __init__(self):
        self.items: list[tuple[Job, object]] = []

    def put(self, job: Job, item) -> None:
        self.items.append((job, item))

    def flush(self) -> None:
        by_loop: dict = {}
        for job, item in self.items:
            by_loop.setdefault(job.loop, []).append((job, item))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)
        self.items = []


def _deliver(items) -> None:
    for job, item in items:
        job.events.put_nowait(item)


@dataclass
class Row:
    """One sequence being generated in row `index` of the shared cache."""

    job: Job
    choice: int
    tokens: list[int]
    prompt_len: int
    start: int  # the cache slot of its first prompt token
    config: object
    processors: list
    generator: torch.Generator | None
    assembler: TextAssembler
    eos: set[int]
    logits: torch.Tensor | None = None  # scores for its next token
    generated: int = 0


class Batcher:
    """Runs jobs on `lm` in one worker thread, up to `max_batch` rows at a time."""

    def __init__(
        self,
        lm,
        max_batch: int = 8,
        max_queue: int = 64,
        cache_len: int = 2048,
        background: bool = True,
    ):
        self.lm, self.model = lm, lm.model
        self.max_batch, self.max_queue = max_batch, max_queue
        self.cache = self.model.new_cache(max_batch, min(cache_len, self.model.max_seq_len))
        self.cache.valid.zero_()
        self.rows: list[Row | None] = [None] * max_batch
        self.outbox = Outbox()
        self.waiting: collections.deque[Job] = collections.deque()
        self.steps = 0  # decode steps run, and the rows they served: how much batching happened
        self.row_steps = 0
        self.shifts = 0  # timeline moves (a long prompt joined, or the cache end was reached)
        self.condition = threading.Condition()
        if background:
            threading.Thread(target=self.work_forever, name="lmforge-batcher", daemon=True).start()

    @property
    def cache_len(self) -> int:
        return self.cache.max_len

    def submit(self, job: Job) -> None:
        with self.condition:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(job)
            self.condition.notify()

    def load(self) -> dict[str, int]:
        return {
            "waiting": len(self.waiting),
            "generating": sum(row is not None for row in self.rows),
            "steps": self.steps,
            "row_steps": self.row_steps,
            "shifts": self.shifts,
        }

    # The worker ---------------------------------------------------------------------------

    def work_forever(self) -> None:
        """The worker loop. Run it in the thread that loaded the model when you can: PyTorch's
        OpenMP teams of two threads contend, and a second thread decoded ~40% slower here."""
        with torch.inference_mode():
            while True:
                self._admit()
                try:
                    self._choose_tokens()
                    self._forward()
                except Exception as exc:  # noqa: BLE001 - a failure goes to the requests, not the thread
                    for index, row in enumerate(self.rows):
                        if row is not None:
                            row.job.put(exc)
                            self._free(index)

    def _admit(self) -> None:
        """Move waiting jobs into free rows (waiting for work when there is none)."""
        with self.condition:
            while not self.waiting and not any(self.rows):
                self.condition.wait()
        while True:
            with self.condition:
                free = [i for i, row in enumerate(self.rows) if row is None]
                if not self.waiting or len(free) < len(self.waiting[0].prompts):
                    return
                job = self.waiting.popleft()
            if job.cancelled.is_set():
                continue
            try:
                for choice, prompt in enumerate(job.prompts):
                    self._prefill(free[choice], job, choice, prompt)
            except Exception as exc:  # noqa: BLE001
                job.put(exc)
                for index, row in enumerate(self.rows):
                    if row is not None and row.job is job:
                        self._free(index)

    def _prefill(self, index: int, job: Job, choice: int, prompt: list[int]) -> None:
        config = self.lm.config(**job.options)
        seed = None if config.seed is None else config.seed + choice
        alone = self.model.new_cache(1, len(prompt))
        logits, alone = self.model(torch.tensor([prompt]), alone, last_only=True)
        cache, length = self.cache, len(prompt)
        if length > cache.length:
            self._shift(length - cache.length)
        end = cache.length
        cache.k[:, index, :, end - length : end] = alone.k[:, 0]
        cache.v[:, index, :, end - length : end] = alone.v[:, 0]
        cache.valid[index] = False
        cache.valid[index, end - length : end] = True
        cache.has_padding = True
        self.rows[index] = Row(
            job=job,
            choice=choice,
            tokens=list(prompt),
            prompt_len=length,
            start=end - length,
            config=config,
            processors=build_processors(config, self.model.config.vocab_size),
            generator=None if seed is None else torch.Generator().manual_seed(seed),
            assembler=TextAssembler(self.lm.tokenizer, config.stop),
            eos=eos_ids(self.lm.tokenizer, config),
            logits=logits[0, -1].float(),
        )

    def _shift(self, offset: int) -> None:
        """Move the timeline `offset` slots right (> 0) or left (< 0), keeping every row."""
        cache, length = self.cache, self.cache.length
        self.shifts += 1
        if offset > 0:
            for t in (cache.k, cache.v):
                t[:, :, :, offset : offset + length] = t[:, :, :, :length].clone()
            cache.valid[:, offset : offset + length] = cache.valid[:, :length].clone()
            cache.valid[:, :offset] = False
        else:
            keep = length + offset
            for t in (cache.k, cache.v):
                t[:, :, :, :keep] = t[:, :, :, -offset:length].clone()
            cache.valid[:, :keep] = cache.valid[:, -offset:length].clone()
        cache.valid[:, length + offset :] = False
        cache.length = length + offset
        for row in self.rows:
            if row is not None:
                row.start += offset

    def _choose_tokens(self) -> None:
        """Pick and hand out every running row's next token; free the rows that finish."""
        for index, row in enumerate(self.rows):
            if row is None:
                continue
            job = row.job
            if job.cancelled.is_set():
                self._free(index)
                continue
            if time.monotonic() > job.deadline:
                job.cancelled.set()
                job.put(TimeoutError("the request took longer than the server's timeout"))
                self._free(index)
                continue
            config, log_probs = row.config, torch.log_softmax(row.logits, dim=-1)
            max_new = config.max_new_tokens
            if max_new == 0:
                self._finish(index, StreamEvent(row.choice, None, None, "", None, "length"))
                continue
            scores = row.logits[None]
            if row.processors:  # the history tensor is only built when a processor reads it
                history = torch.tensor([row.tokens])
                valid = torch.ones_like(history, dtype=torch.bool)
                scores = apply_processors(
                    row.processors, History(history, valid, row.prompt_len), scores
                )
            if config.sampling:
                probs = scores.softmax(dim=-1)
                token = int(torch.multinomial(probs, 1, generator=row.generator))
            else:
                token = int(scores.argmax())
            row.tokens.append(token)
            row.generated += 1
            top = _top(log_probs[None], config.top_logprobs)[0] if config.top_logprobs else None
            event = token_event(
                row.choice, token, float(log_probs[token]), top, row.assembler, row.eos,
                last=row.generated == max_new,
            )  # fmt: skip
            if event.finish_reason is None:
                self.outbox.put(job, (row.choice, event))
            else:
                self._finish(index, event)
        self.outbox.flush()

    def _finish(self, index: int, event: StreamEvent) -> None:
        job = self.rows[index].job
        self.outbox.put(job, (event.index, event))
        job.finished_rows += 1
        if job.finished_rows == len(job.prompts):
            self.outbox.put(job, DONE)
        self._free(index)

    def _free(self, index: int) -> None:
        self.rows[index] = None
        self.cache.valid[index] = False

    def _forward(self) -> None:
        """One decode step: every running row's newest token, in one batch."""
        active = [i for i, row in enumerate(self.rows) if row is not None]
        if not active:
            return
        cache = self.cache
        if cache.length == cache.max_len:  # shift left past slots no running row needs
            self._shift(-min(self.rows[i].start for i in active))
        busy = active[-1] + 1  # rows are taken lowest first, so [0, busy) holds every active one
        tokens = torch.full((busy, 1), self.lm.tokenizer.pad_id or 0, dtype=torch.long)
        positions = torch.zeros((busy, 1), dtype=torch.long)
        mask = torch.zeros((busy, 1), dtype=torch.bool)
        for i in active:
            row = self.rows[i]
            tokens[i, 0], positions[i, 0], mask[i, 0] = row.tokens[-1], len(row.tokens) - 1, True
        view = cache.first_rows(busy)
        logits, _ = self.model(tokens, view, positions, mask, last_only=True)
        cache.length = view.length
        for i in active:
            self.rows[i].logits = logits[i, -1].float()
        self.steps += 1
        self.row_steps += len(active)
