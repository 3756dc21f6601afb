"""Serving an encoder-decoder: a request's sources (one per choice) are translated together by the
generation engine, one request after another, in the worker thread that owns the model.

It has the continuous batcher's interface (`submit`, `work_forever`, `stop`, `load`), so the
routes, streaming, cancellation and timeouts are the same; what it lacks is joining requests
into one running batch (each request's choices are batched; requests queue).
"""

from __future__ import annotations

import threading
import time

import torch

from lmforge.generation.config import GenerationConfig
from lmforge.generation.seq2seq import stream_translations
from lmforge.serve.batcher import DONE, Job, JobQueue


class TranslationWorker(JobQueue):
    """Runs translation jobs on `lm` in one worker thread, a job at a time."""

    def __init__(self, lm, max_batch: int = 8, max_queue: int = 64, background: bool = True):
        super().__init__(max_queue)
        self.lm, self.model, self.max_batch = lm, lm.model, max_batch
        self.cache_len = lm.model.config.max_seq_len  # the longest source, and target
        self.running = 0
        self.steps = self.row_steps = 0
        if background:
            threading.Thread(
                target=self.work_forever, name="lmforge-translate", daemon=True
            ).start()

    def load(self) -> dict[str, int]:
        return {
            "waiting": len(self.waiting),
            "generating": self.running,
            "steps": self.steps,
            "row_steps": self.row_steps,
            "shifts": 0,
        }

    def work_forever(self) -> None:
        with torch.inference_mode():
            while True:
                with self.condition:
                    while not self.waiting and not self.stopped:
                        self.condition.wait()
                    if self.stopped:
                        return
                    job = self.waiting.popleft()
                    self.running = len(job.prompts)
                try:
                    self._run(job)
                except Exception as exc:  # noqa: BLE001 - a failure goes to the request
                    job.put(exc)
                finally:
                    self.running = 0

    def _run(self, job: Job) -> None:
        if job.cancelled.is_set():
            return
        eos = self.model.config.eos_id
        sources = [list(ids) + [eos] for ids in job.prompts]
        config = GenerationConfig.from_options(**job.options)
        events = stream_translations(self.model, self.lm.tokenizer, sources, config)
        try:
            for event in events:
                if job.cancelled.is_set():
                    return
                if time.monotonic() > job.deadline:
                    job.put(TimeoutError("the request ran past the server's --timeout"))
                    return
                self.row_steps += 1
                job.put((event.index, event))
            self.steps += 1
            job.put(DONE)
        finally:
            events.close()
