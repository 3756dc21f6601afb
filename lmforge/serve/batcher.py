"""Continuous batching: every request joins the running batch at the next decode step.

One worker thread owns the model and `max_batch` rows of model state (`lmforge.serve.rows`).
For a GPT, the rows are one KV cache sharing a slot timeline: each decode step writes slot
`cache.length` of every row. A new request is prefilled on its own and its keys/values are
copied into a free row so that its prompt ends at the current slot (earlier slots of that row
are masked out); if the prompt is longer than the timeline so far, the timeline is shifted
right first. It is shifted left past slots no running row uses when it reaches the end of the
cache, and as soon as those slots are over half of it: a step attends over the whole timeline,
and letting finished requests' slots pile up cut 8-client throughput by a quarter. Recurrent
models keep a hidden state per row instead, and cache-free models
re-run each row's window. Each row keeps its own positions, decoding options, random generator
and stop rules, so requests with different options share one forward pass. A row whose client
is gone is freed at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

import torch

from lmforge.generation.config import eos_ids
from lmforge.generation.processors import build_processors
from lmforge.generation.sampling import choose_next, history_of, seeded_generator
from lmforge.generation.stream import StreamEvent, TextAssembler, token_event
from lmforge.serve.rows import row_store

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
    config: object
    processors: list
    generator: torch.Generator | None
    assembler: TextAssembler
    eos: set[int]
    logits: torch.Tensor | None = None  # scores for its next token
    generated: int = 0


class JobQueue:
    """The requests waiting for a model's worker thread, and the way to stop that worker."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.condition = threading.Condition()
        self.stopped = False

    def submit(self, job: Job) -> None:
        with self.condition:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting")
            self.waiting.append(job)
            self.condition.notify()

    def stop(self) -> None:
        """End `work_forever` at its next turn (the server that fed it has shut down)."""
        with self.condition:
            self.stopped = True
            self.condition.notify()


class Batcher(JobQueue):
    """Runs jobs on `lm` in one worker thread, up to `max_batch` rows at a time."""

    def __init__(
        self,
        lm,
        max_batch: int = 8,
        max_queue: int = 64,
        cache_len: int = 2048,
        background: bool = True,
    ):
        super().__init__(max_queue)
        self.lm, self.model, self.max_batch = lm, lm.model, max_batch
        self.store = row_store(self.model, max_batch, cache_len)
        self.rows: list[Row | None] = [None] * max_batch
        self.outbox = Outbox()
        self.steps = 0  # decode steps run, and the rows they served: how much batching happened
        self.row_steps = 0
        if background:
            threading.Thread(target=self.work_forever, name="lmforge-batcher", daemon=True).start()

    @property
    def cache_len(self) -> int:
        return self.store.capacity

    def load(self) -> dict[str, int]:
        return {
            "waiting": len(self.waiting),
            "generating": sum(row is not None for row in self.rows),
            "steps": self.steps,
            "row_steps": self.row_steps,
            "shifts": self.store.shifts,
        }

    # The worker ---------------------------------------------------------------------------

    def work_forever(self) -> None:
        """The worker loop. Run it in the thread that loaded the model when you can: PyTorch's
        OpenMP teams of two threads contend, and a second thread decoded ~40% slower here."""
        with torch.inference_mode():
            while not self.stopped:
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
            while not self.waiting and not any(self.rows) and not self.stopped:
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
        logits = self.store.prefill(index, prompt)
        self.rows[index] = Row(
            job=job,
            choice=choice,
            tokens=list(prompt),
            prompt_len=len(prompt),
            config=config,
            processors=build_processors(config, self.model.config.vocab_size, self.lm.tokenizer),
            generator=seeded_generator(seed, self.store.device),
            assembler=TextAssembler(self.lm.tokenizer, config.stop),
            eos=eos_ids(self.lm.tokenizer, config),
            logits=logits.float(),
        )

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
            config, max_new = row.config, row.config.max_new_tokens
            if max_new == 0:
                self._finish(index, StreamEvent(row.choice, None, None, "", None, "length"))
                continue
            history = (
                history_of(row.tokens, row.prompt_len, self.store.device)
                if row.processors
                else None
            )
            choice = choose_next(row.logits[None], config, row.processors, history, row.generator)
            token = choice.tokens[0]
            row.tokens.append(token)
            row.generated += 1
            top = choice.top[0] if choice.top else None
            event = token_event(
                row.choice,
                token,
                choice.logprobs[0],
                top,
                row.assembler,
                row.eos,
                last=row.generated == max_new,
            )
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
        self.store.free(index)

    def _forward(self) -> None:
        """One decode step: every running row's newest token, in one batch."""
        active = [i for i, row in enumerate(self.rows) if row is not None]
        if not active:
            return
        histories = {i: self.rows[i].tokens for i in active}
        logits = self.store.step(histories, self.lm.tokenizer.pad_id or 0)
        for i in active:
            self.rows[i].logits = logits[i].float()
        self.steps += 1
        self.row_steps += len(active)
