"""An OpenAI-compatible HTTP API over one lmforge model, and the playground page.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (JSON or
server-sent events with `stream: true`), GET / (the playground), GET /v1/lmforge/info.
Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the status an
OpenAI client expects, and never take the server down.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from importlib.resources import files
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmforge.errors import ConfigError
from lmforge.generation.search import start_token
from lmforge.serve.batcher import DONE, Batcher, Job, QueueFull

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


class APIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kinds = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}
        kind = kinds.get(
            self.status, "invalid_request_error" if self.status < 500 else "server_error"
        )
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    """Parameters shared by both routes; top_k, min_p and repetition_penalty are lmforge's."""

    model: str
    max_tokens: int | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    max_completion_tokens: int | None = None


class Settings(BaseModel):
    """Server limits."""

    model_id: str
    api_key: str | None = None
    max_tokens: int = 2048  # per request
    max_n: int = 8
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 300.0
    max_batch: int = 8  # rows generated together
    max_queue: int = 64
    cache_len: int = 2048  # KV cache slots per row (at most the model's context)


def create_app(lm, settings: Settings, background_worker: bool = True) -> FastAPI:
    """The ASGI app serving `lm` (an `lmforge.LM`) under the name `settings.model_id`.

    The model runs in a worker thread, or, with `background_worker=False`, wherever the caller
    runs `app.state.batcher.work_forever()` (`lmforge serve` uses its main thread)."""
    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None)
    batcher = Batcher(
        lm, settings.max_batch, settings.max_queue, settings.cache_len, background_worker
    )
    app.state.batcher = batcher
    created = int(time.time())
    context = batcher.cache_len  # prompt + max_tokens of one request must fit its cache row

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(404)
    async def not_found(request: Request, _):
        return APIError(
            404, f"no route {request.method} {request.url.path}", code="not_found"
        ).response()

    @app.exception_handler(405)
    async def wrong_method(request: Request, _):
        return APIError(405, f"{request.method} is not allowed on {request.url.path}").response()

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        if header != f"Bearer {settings.api_key}":
            raise APIError(
                401,
                "missing or invalid API key (Authorization: Bearer KEY)",
                code="invalid_api_key",
            )

    def check_size(size: int) -> None:
        if size > settings.max_body_bytes:
            raise APIError(
                413, f"request body over {settings.max_body_bytes} bytes", code="request_too_large"
            )

    async def parse(request: Request, schema: type[BaseModel]):
        authorize(request)
        declared = request.headers.get("content-length", "")
        check_size(int(declared) if declared.isdigit() else 0)  # refuse before reading, if declared
        body = await request.body()
        check_size(len(body))
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
        try:
            parsed = schema.model_validate(data)
        except ValidationError as exc:
            error = exc.errors()[0]
            param = ".".join(str(p) for p in error["loc"]) or None
            raise APIError(
                400, f"{param}: {error['msg']}", param=param, code="invalid_parameter"
            ) from None
        if parsed.model != settings.model_id:
            raise APIError(404, f"model {parsed.model!r} does not exist; this server has {settings.model_id!r}",
                           param="model", code="model_not_found")  # fmt: skip
        return parsed

    def options_for(req: _Sampling, max_tokens: int, top_logprobs: int) -> dict[str, Any]:
        if req.n > settings.max_n:
            raise APIError(
                400, f"n={req.n} is over this server's limit of {settings.max_n}", param="n"
            )
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        if len(stop) > 4 or not all(stop):
            raise APIError(400, "stop: up to 4 non-empty strings", param="stop")
        bias = {}
        for key, value in (req.logit_bias or {}).items():
            if (
                not key.isdigit()
                or int(key) >= lm.model.config.vocab_size
                or not -100 <= value <= 100
            ):
                raise APIError(400, f"logit_bias: {key!r}: {value} must map a token id to [-100, 100]",
                               param="logit_bias")  # fmt: skip
            bias[int(key)] = value
        options = {
            "max_new_tokens": max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p if req.top_p < 1 else None,
            "top_k": req.top_k,
            "min_p": req.min_p,
            "repetition_penalty": req.repetition_penalty,
            "presence_penalty": req.presence_penalty,
            "frequency_penalty": req.frequency_penalty,
            "logit_bias": bias,
            "stop": stop,
            "seed": req.seed,
            "top_logprobs": top_logprobs,
        }
        options = {k: v for k, v in options.items() if v is not None}
        try:
            lm.config(**options)
        except ConfigError as exc:
            raise APIError(400, str(exc), code="invalid_parameter") from None
        return options

    def check_length(prompts: list[list[int]], max_tokens: int | None, param: str) -> int:
        longest = max(len(p) for p in prompts)
        if max_tokens is None:
            max_tokens = min(settings.max_tokens, context - longest)
        if max_tokens < 0:
            raise APIError(400, f"max_tokens={max_tokens} must be >= 0", param="max_tokens")
        if max_tokens > settings.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {settings.max_tokens}",
                           param="max_tokens")  # fmt: skip
        if longest + max_tokens > context:
            raise APIError(400, f"the prompt has {longest} tokens and max_tokens is {max_tokens}, over the "
                           f"model's context of {context} tokens", param=param,
                           code="context_length_exceeded")  # fmt: skip
        return max_tokens

    async def run(prompts: list[list[int]], options: dict[str, Any]) -> Job:
        if len(prompts) > settings.max_batch:  # a job's rows are generated together
            raise APIError(400, f"{len(prompts)} sequences (prompts x n) are over this server's batch "
                           f"of {settings.max_batch}", param="n")  # fmt: skip
        job = Job(
            prompts,
            options,
            asyncio.get_running_loop(),
            time.monotonic() + settings.request_timeout_s,
        )
        try:
            batcher.submit(job)
        except QueueFull as exc:
            raise APIError(429, f"server busy: {exc}; retry later", code="queue_full") from None
        return job

    async def events(job: Job):
        """(choice, StreamEvent) pairs of a job until it is done; cancels it if abandoned."""
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
            job.cancelled.set()  # a disconnected client frees its rows at once

    def token_text(token: int) -> str:
        return lm.tokenizer.decode([token])

    def completion_logprobs(event, offset: int) -> dict:
        top = {token_text(t): lp for t, lp in (event.top_logprobs or {}).items()}
        return {"tokens": [token_text(event.token_id)], "token_logprobs": [event.logprob],
                "top_logprobs": [top], "text_offset": [offset]}  # fmt: skip

    def chat_logprobs(event) -> dict:
        def entry(token: int, logprob: float) -> dict:
            text = token_text(token)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        tops = [entry(t, lp) for t, lp in (event.top_logprobs or {}).items()]
        return {"content": [{**entry(event.token_id, event.logprob), "top_logprobs": tops}]}

    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip

    def sse(payload: dict | str) -> str:
        return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"

    async def stream_response(job: Job, chunk, final_usage) -> StreamingResponse:
        async def body():
            try:
                async for choice, event in events(job):
                    yield sse(chunk(choice, event))
                if final_usage is not None:
                    yield sse(final_usage())
            except APIError as exc:
                yield sse({"error": {"message": exc.message, "type": "server_error", "param": None,
                                     "code": exc.code}})  # fmt: skip
            yield sse("[DONE]")

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id, **batcher.load()}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        card = {
            "id": settings.model_id,
            "object": "model",
            "created": created,
            "owned_by": "lmforge",
        }
        return {"object": "list", "data": [card]}

    @app.get("/v1/lmforge/info")
    async def info():
        return {"id": settings.model_id, "context": context, "max_tokens": settings.max_tokens,
                **{k: str(v) for k, v in lm.info().items()}}  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return (files("lmforge.serve") / "static" / "playground.html").read_text(encoding="utf-8")

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        if isinstance(req.prompt, list) and req.prompt and isinstance(req.prompt[0], int):
            texts = [req.prompt]
        else:
            texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not texts:
            raise APIError(
                400,
                "prompt: give a string, a list of strings or a list of token ids",
                param="prompt",
            )
        try:
            encoded = [t if isinstance(t, list) else lm.tokenizer.encode(t) for t in texts]
            encoded = [lm.encode(ids) for ids in encoded]  # checks token ids against the vocabulary
            encoded = [ids or [start_token(lm.tokenizer, i)] for i, ids in enumerate(encoded)]
        except ConfigError as exc:
            raise APIError(400, str(exc), param="prompt") from None
        max_tokens = check_length(
            encoded, 16 if req.max_tokens is None else req.max_tokens, "prompt"
        )
        options = options_for(req, max_tokens, req.logprobs or 0)
        prompts = [ids for ids in encoded for _ in range(req.n)]
        echoes = [
            (t if isinstance(t, str) else lm.tokenizer.decode(t)) if req.echo else "" for t in texts
        ]
        job = await run(prompts, options)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        counts = [0] * len(prompts)

        def chunk(choice: int, event) -> dict:
            first = counts[choice] == 0
            counts[choice] += 1
            text = (echoes[choice // req.n] if first else "") + event.text
            wanted = req.logprobs is not None and event.token_id is not None
            logprobs = completion_logprobs(event, 0) if wanted else None
            return {"id": rid, "object": "text_completion", "created": now, "model": settings.model_id,
                    "choices": [{"index": choice, "text": text, "logprobs": logprobs,
                                 "finish_reason": FINISH_REASONS.get(event.finish_reason)}]}  # fmt: skip

        prompt_tokens = sum(len(ids) for ids in encoded)
        if req.stream:
            include = req.stream_options is not None and req.stream_options.include_usage
            final = (lambda: {"id": rid, "object": "text_completion", "created": now, "model": settings.model_id,
                              "choices": [], "usage": usage(prompt_tokens, sum(counts))}) if include else None  # fmt: skip
            return await stream_response(job, chunk, final)
        texts_out = list(echoes[i // req.n] for i in range(len(prompts)))
        lps: list[dict | None] = [None] * len(prompts)
        reasons = ["length"] * len(prompts)
        async for choice, event in events(job):
            counts[choice] += event.token_id is not None
            texts_out[choice] += event.text
            if req.logprobs is not None and event.token_id is not None:
                piece = completion_logprobs(event, len(texts_out[choice]) - len(event.text))
                if lps[choice] is None:
                    lps[choice] = piece
                else:
                    for key in piece:
                        lps[choice][key] += piece[key]
            if event.finish_reason:
                reasons[choice] = FINISH_REASONS[event.finish_reason]
        choices = [{"index": i, "text": texts_out[i], "logprobs": lps[i], "finish_reason": reasons[i]}
                   for i in range(len(prompts))]  # fmt: skip
        return {"id": rid, "object": "text_completion", "created": now, "model": settings.model_id,
                "choices": choices, "usage": usage(prompt_tokens, sum(counts))}  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await parse(request, ChatRequest)
        if not lm.tokenizer.chat_template:
            raise APIError(400, "this model has no chat template; use /v1/completions", param="messages",
                           code="no_chat_template")  # fmt: skip
        messages = [{"role": m.role, "content": m.content if isinstance(m.content, str)
                     else "".join(p.text for p in m.content)} for m in req.messages]  # fmt: skip
        try:
            ids = lm.chat_prompt(messages)
        except Exception as exc:  # noqa: BLE001 - a template may reject a conversation
            raise APIError(
                400, f"messages: the chat template rejected them: {exc}", param="messages"
            ) from None
        limit = (
            req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        )
        max_tokens = check_length([ids], limit, "messages")
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        options = options_for(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else 0)
        job = await run([ids] * req.n, options)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        counts = [0] * req.n

        def chunk(choice: int, event) -> dict:
            delta = (
                {"role": "assistant", "content": event.text}
                if counts[choice] == 0
                else {"content": event.text}
            )
            counts[choice] += event.token_id is not None
            logprobs = chat_logprobs(event) if req.logprobs and event.token_id is not None else None
            return {"id": rid, "object": "chat.completion.chunk", "created": now, "model": settings.model_id,
                    "choices": [{"index": choice, "delta": delta, "logprobs": logprobs,
                                 "finish_reason": FINISH_REASONS.get(event.finish_reason)}]}  # fmt: skip

        if req.stream:
            include = req.stream_options is not None and req.stream_options.include_usage
            final = (lambda: {"id": rid, "object": "chat.completion.chunk", "created": now,
                              "model": settings.model_id, "choices": [],
                              "usage": usage(len(ids), sum(counts))}) if include else None  # fmt: skip
            return await stream_response(job, chunk, final)
        texts = [""] * req.n
        contents: list[list] = [[] for _ in range(req.n)]
        reasons = ["length"] * req.n
        async for choice, event in events(job):
            counts[choice] += event.token_id is not None
            texts[choice] += event.text
            if req.logprobs and event.token_id is not None:
                contents[choice] += chat_logprobs(event)["content"]
            if event.finish_reason:
                reasons[choice] = FINISH_REASONS[event.finish_reason]
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                    "logprobs": {"content": contents[i]} if req.logprobs else None,
                    "finish_reason": reasons[i]} for i in range(req.n)]  # fmt: skip
        return {"id": rid, "object": "chat.completion", "created": now, "model": settings.model_id,
                "choices": choices, "usage": usage(len(ids), sum(counts))}  # fmt: skip

    return app
