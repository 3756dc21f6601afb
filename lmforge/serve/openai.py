"""The mapping between OpenAI's API and lmforge that both generation routes share: reading and
checking a request, turning it into generation options, queueing it on the batcher, following its
tokens (and its client: a client that leaves frees its rows), and OpenAI's pieces of a response
(logprobs, usage, server-sent events)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ValidationError

from lmforge.errors import ConfigError
from lmforge.generation.config import GenerationConfig
from lmforge.generation.stream import StreamEvent
from lmforge.serve.batcher import DONE, Batcher, Job, QueueFull
from lmforge.serve.schemas import (
    IGNORED_FIELDS,
    SERVER_EXTRAS,
    UNSUPPORTED_FIELDS,
    APIError,
    SamplingRequest,
    Settings,
)

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}
# GenerationConfig option -> the request field a client sets it with, to name it in errors
REQUEST_FIELDS = {
    f.name: f.metadata.get("openai", f.name) for f in dataclasses.fields(GenerationConfig)
}


@dataclass
class ChoiceResult:
    """One choice of a finished request: its text, the events of its tokens, why it ended."""

    text: str = ""
    events: list[StreamEvent] = field(default_factory=list)
    finish_reason: str = "length"


class OpenAIService:
    """One model behind OpenAI's request and response shapes."""

    def __init__(self, lm, settings: Settings, batcher: Batcher | None):
        """`lm` and `batcher` are None for an embeddings-only server (word vectors)."""
        self.lm, self.settings, self.batcher = lm, settings, batcher
        self.context = batcher.cache_len if batcher else 0  # a request's prompt + max_tokens
        self.created = int(time.time())

    # Requests -------------------------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        if self.settings.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {self.settings.api_key}":
            raise APIError(
                401,
                "missing or invalid API key (Authorization: Bearer KEY)",
                code="invalid_api_key",
            )

    def _check_size(self, size: int) -> None:
        limit = self.settings.max_body_bytes
        if size > limit:
            raise APIError(413, f"request body over {limit} bytes", code="request_too_large")

    async def parse(self, request: Request, schema: type[BaseModel]) -> Any:
        """The request body as `schema`, after the key, size, encoding and model checks."""
        self.authorize(request)
        declared = request.headers.get("content-length", "")
        self._check_size(int(declared) if declared.isdigit() else 0)  # before reading, if declared
        body = await request.body()
        self._check_size(len(body))
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise APIError(
                400, f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_utf8"
            ) from None
        except json.JSONDecodeError as exc:
            raise APIError(
                400, f"request body is not valid JSON: {exc}", code="invalid_json"
            ) from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object")
        data = self._known_fields(data)
        try:
            parsed = schema.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            param = ".".join(str(p) for p in error["loc"]) or None
            raise APIError(
                400, f"{param}: {error['msg']}", param=param, code="invalid_parameter"
            ) from None
        if parsed.model != self.settings.model_id:
            raise APIError(
                404,
                f"model {parsed.model!r} does not exist; this server has {self.settings.model_id!r}",
                param="model",
                code="model_not_found",
            )
        return parsed

    @staticmethod
    def _known_fields(data: dict[str, Any]) -> dict[str, Any]:
        """The body without nulls (null means the default, as OpenAI reads it) and without the
        fields that change nothing here; a field asking for what this server cannot do is a 400."""
        for name, feature in UNSUPPORTED_FIELDS.items():
            value = data.get(name)
            if value is not None and not (name == "modalities" and value == ["text"]):
                raise APIError(
                    400,
                    f"{name}: this server does not support {feature}",
                    param=name,
                    code="unsupported_parameter",
                )
        dropped = (*IGNORED_FIELDS, "modalities")  # modalities: ["text"] asks for what there is
        return {k: v for k, v in data.items() if v is not None and k not in dropped}

    def options_for(
        self, req: SamplingRequest, max_tokens: int, top_logprobs: int
    ) -> dict[str, Any]:
        """The generation options of a request, validated as `GenerationConfig` validates them."""
        if req.n > self.settings.max_n:
            raise APIError(
                400, f"n={req.n} is over this server's limit of {self.settings.max_n}", param="n"
            )
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        if len(stop) > 4 or not all(stop):
            raise APIError(400, "stop: up to 4 non-empty strings", param="stop")
        vocab_size = self.lm.model.config.vocab_size
        bias = {}
        for key, value in (req.logit_bias or {}).items():
            if not key.isdigit() or int(key) >= vocab_size or not -100 <= value <= 100:
                raise APIError(
                    400,
                    f"logit_bias: {key!r}: {value} must map a token id to [-100, 100]",
                    param="logit_bias",
                )
            bias[int(key)] = value
        options = {
            "max_new_tokens": max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p if req.top_p < 1 else None,
            **{f.name: getattr(req, f.name) for f in SERVER_EXTRAS},
            "presence_penalty": req.presence_penalty,
            "frequency_penalty": req.frequency_penalty,
            "logit_bias": bias,
            "stop": stop,
            "seed": req.seed,
            "top_logprobs": top_logprobs,
        }
        options = {k: v for k, v in options.items() if v is not None}
        try:
            self.lm.config(**options)
        except ConfigError as exc:
            param = REQUEST_FIELDS.get(exc.option, exc.option) if exc.option else None
            raise APIError(400, str(exc), param=param, code="invalid_parameter") from None
        return options

    def check_length(self, prompts: list[list[int]], max_tokens: int | None, param: str) -> int:
        """`max_tokens`, defaulted and checked against the server's limit and the context (for
        a translation model, the source and the translation each have the model's length)."""
        longest, limit = max(len(p) for p in prompts), self.settings.max_tokens
        if self.lm.encoder_decoder:
            if longest + 1 > self.context:  # the source ends in EOS
                raise APIError(
                    400,
                    f"the source has {longest} tokens; this model reads at most "
                    f"{self.context - 1} (and EOS)",
                    param=param,
                    code="context_length_exceeded",
                )
            longest = 1  # the target starts from one token

        if max_tokens is None:
            max_tokens = min(limit, self.context - longest)
        if max_tokens < 0:
            raise APIError(400, f"max_tokens={max_tokens} must be >= 0", param="max_tokens")
        if max_tokens > limit:
            raise APIError(
                400,
                f"max_tokens={max_tokens} is over this server's limit of {limit}",
                param="max_tokens",
            )
        if longest + max_tokens > self.context:
            raise APIError(
                400,
                f"the prompt has {longest} tokens and max_tokens is {max_tokens}, over the "
                f"model's context of {self.context} tokens",
                param=param,
                code="context_length_exceeded",
            )
        return max_tokens

    # Jobs -----------------------------------------------------------------------------------

    async def submit(self, prompts: list[list[int]], options: dict[str, Any]) -> Job:
        """Queue one job (a row per prompt) on the batcher."""
        if len(prompts) > self.settings.max_batch:  # a job's rows are generated together
            raise APIError(
                400,
                f"{len(prompts)} sequences (prompts x n) are over this server's batch of "
                f"{self.settings.max_batch}",
                param="n",
            )
        deadline = time.monotonic() + self.settings.request_timeout_s
        job = Job(prompts, options, asyncio.get_running_loop(), deadline)
        try:
            self.batcher.submit(job)
        except QueueFull as exc:
            raise APIError(429, f"server busy: {exc}; retry later", code="queue_full") from None
        return job

    async def events(self, job: Job) -> AsyncIterator[tuple[int, StreamEvent]]:
        """(choice, event) pairs of a job until it is done. However it stops (done, failed, or the
        consumer gone), the job is cancelled: its rows are freed at the next decode step."""
        try:
            while True:
                item = await job.events.get()
                if item is DONE:
                    return
                if isinstance(item, TimeoutError):
                    raise APIError(504, str(item), code="timeout")
                if isinstance(item, Exception):
                    raise APIError(500, f"generation failed: {item}", code="internal_error")
                yield item
        finally:
            job.cancelled.set()

    async def collect(self, job: Job, request: Request, n_choices: int) -> list[ChoiceResult]:
        """Run a job to the end for a non-streaming response, cancelling it as soon as the client
        disconnects (nothing else would notice: no response is written until the end)."""
        results = [ChoiceResult() for _ in range(n_choices)]
        watcher = asyncio.create_task(_cancel_when_gone(request, job))
        try:
            async for choice, event in self.events(job):
                result = results[choice]
                result.text += event.text
                if event.token_id is not None:
                    result.events.append(event)
                if event.finish_reason:
                    result.finish_reason = FINISH_REASONS[event.finish_reason]
        finally:
            watcher.cancel()
        return results

    def stream(
        self,
        job: Job,
        chunk: Callable[[int, StreamEvent], list[dict]],
        final: Callable[[], dict] | None,
    ) -> StreamingResponse:
        """Server-sent events: the chunks of each token, then `final` (usage), then [DONE]. A client
        that disconnects closes the generator, which cancels the job."""

        async def body():
            try:
                async for choice, event in self.events(job):
                    for piece in chunk(choice, event):
                        yield sse(piece)
                if final is not None:
                    yield sse(final())
            except APIError as exc:
                error = {"message": exc.message, "type": "server_error", "param": None}
                yield sse({"error": {**error, "code": exc.code}})
            yield sse("[DONE]")

        return StreamingResponse(body(), media_type="text/event-stream")

    # Response pieces ------------------------------------------------------------------------

    def token_text(self, token: int) -> str:
        """A token as text; one holding part of a UTF-8 character is written as OpenAI writes
        it, `bytes:` and its bytes escaped (so no two tokens share a `top_logprobs` key)."""
        data = self.lm.tokenizer.token_bytes(token)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in data)

    def completion_logprobs(self, events: list[StreamEvent], offset: int = 0) -> dict:
        """The legacy completions `logprobs` object for these tokens, text offsets from `offset`."""
        events = [e for e in events if e.finish_reason != "eos"]  # the end token is no text
        tokens, offsets, position = [], [], offset
        for event in events:
            tokens.append(self.token_text(event.token_id))
            offsets.append(position)
            position += len(event.text)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in events],
            "top_logprobs": [
                {self.token_text(t): lp for t, lp in (e.top_logprobs or {}).items()} for e in events
            ],
            "text_offset": offsets,
        }

    def chat_logprobs(self, events: list[StreamEvent]) -> dict:
        """The chat `logprobs` object: each token with its bytes and top alternatives."""

        def entry(token: int, logprob: float) -> dict:
            data = list(self.lm.tokenizer.token_bytes(token))
            return {"token": self.token_text(token), "logprob": logprob, "bytes": data}

        return {
            "content": [
                {
                    **entry(e.token_id, e.logprob),
                    "top_logprobs": [entry(t, lp) for t, lp in (e.top_logprobs or {}).items()],
                }
                for e in events
                if e.finish_reason != "eos"  # the end token is no text
            ]
        }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _cancel_when_gone(request: Request, job: Job) -> None:
    """Wait for the client to disconnect, then cancel its job. The body has been read, so the
    next ASGI message is the disconnect (servers send none while the response is pending)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancelled.set()
            return
