"""POST /v1/completions: text (or token ids) in, continuations out."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request

from lmforge.errors import ConfigError
from lmforge.generation.search import start_token
from lmforge.serve.openai import FINISH_REASONS, OpenAIService, usage
from lmforge.serve.schemas import APIError, CompletionRequest
from lmforge.serve.tools import response_format_options


def router(service: OpenAIService) -> APIRouter:
    routes = APIRouter()
    lm, model_id = service.lm, service.settings.model_id

    @routes.post("/v1/completions")
    async def completions(request: Request):
        req = await service.parse(request, CompletionRequest)
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
            encoded = [lm.encode(t) for t in texts]  # token ids are checked against the vocabulary
            encoded = [ids or [start_token(lm.tokenizer, i)] for i, ids in enumerate(encoded)]
        except ConfigError as exc:
            raise APIError(400, str(exc), param="prompt") from None
        max_tokens = service.check_length(
            encoded, 16 if req.max_tokens is None else req.max_tokens, "prompt"
        )
        options = service.options_for(req, max_tokens, req.logprobs or 0)
        structured = response_format_options(req.response_format)
        try:
            lm.config(**structured)
        except ConfigError as exc:
            raise APIError(400, f"response_format: {exc}", param="response_format") from None
        options.update(structured)
        prompts = [ids for ids in encoded for _ in range(req.n)]
        echoes = [
            (t if isinstance(t, str) else lm.tokenizer.decode(t)) if req.echo else "" for t in texts
        ]
        job = await service.submit(prompts, options)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": now, "model": model_id}
        prompt_tokens = sum(len(ids) for ids in encoded)

        if req.stream:
            counts = [0] * len(prompts)

            def chunk(choice: int, event) -> list[dict]:
                echo = echoes[choice // req.n] if counts[choice] == 0 else ""
                counts[choice] += 1
                wanted = (
                    req.logprobs is not None
                    and event.token_id is not None
                    and event.finish_reason != "eos"
                )
                choice_body = {
                    "index": choice,
                    "text": echo + event.text,
                    "logprobs": service.completion_logprobs([event]) if wanted else None,
                    "finish_reason": FINISH_REASONS.get(event.finish_reason),
                }
                return [{**head, "choices": [choice_body]}]

            include = req.stream_options is not None and req.stream_options.include_usage
            final = (
                (lambda: {**head, "choices": [], "usage": usage(prompt_tokens, sum(counts))})
                if include
                else None
            )
            return service.stream(job, chunk, final)

        results = await service.collect(job, request, len(prompts))
        choices = []
        for i, result in enumerate(results):
            echo = echoes[i // req.n]
            wanted = req.logprobs is not None and result.events
            logprobs = service.completion_logprobs(result.events, len(echo)) if wanted else None
            choices.append(
                {
                    "index": i,
                    "text": echo + result.text,
                    "logprobs": logprobs,
                    "finish_reason": result.finish_reason,
                }
            )
        completion_tokens = sum(len(r.events) for r in results)
        return {**head, "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}

    return routes
