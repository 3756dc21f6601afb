"""POST /v1/chat/completions: a conversation in, the assistant's reply out."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request

from lmforge.serve.openai import FINISH_REASONS, OpenAIService, usage
from lmforge.serve.schemas import APIError, ChatRequest
from lmforge.serve.tools import ReplyStream, plan_chat, read_reply


def router(service: OpenAIService) -> APIRouter:
    routes = APIRouter()
    lm, model_id = service.lm, service.settings.model_id

    @routes.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await service.parse(request, ChatRequest)
        if lm.encoder_decoder:
            raise APIError(
                400,
                "this is a translation model and cannot chat; POST the text to translate to "
                "/v1/completions",
                param="messages",
                code="not_a_chat_model",
            )
        if not lm.tokenizer.chat_template:
            raise APIError(
                400,
                "this model has no chat template; use /v1/completions",
                param="messages",
                code="no_chat_template",
            )
        plan = plan_chat(req, lm.tokenizer.chat_template, lm.config)
        try:
            ids = lm.chat_prompt(plan.messages, plan.tool_list)
        except Exception as exc:  # noqa: BLE001 - a template may reject a conversation
            raise APIError(
                400, f"messages: the chat template rejected them: {exc}", param="messages"
            ) from None
        limit = (
            req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        )
        max_tokens = service.check_length([ids], limit, "messages")
        if req.top_logprobs and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        options = service.options_for(
            req, max_tokens, (req.top_logprobs or 0) if req.logprobs else 0
        )
        options.update(plan.options)
        job = await service.submit([ids] * req.n, options)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        if req.stream:
            head = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_id}
            counts = [0] * req.n

            replies = [ReplyStream(plan.tools) for _ in range(req.n)] if plan.tools else []

            def chunk(choice: int, event) -> list[dict]:
                first = counts[choice] == 0
                counts[choice] += event.token_id is not None
                if plan.tools:
                    reason = FINISH_REASONS.get(event.finish_reason)
                    bodies = replies[choice].bodies(choice, event.text, reason)
                    return [{**head, "choices": [body]} for body in bodies]
                delta = (
                    {"role": "assistant", "content": event.text}
                    if first
                    else {"content": event.text}
                )
                wanted = (
                    req.logprobs and event.token_id is not None and event.finish_reason != "eos"
                )
                choice_body = {
                    "index": choice,
                    "delta": delta,
                    "logprobs": service.chat_logprobs([event]) if wanted else None,
                    "finish_reason": FINISH_REASONS.get(event.finish_reason),
                }
                return [{**head, "choices": [choice_body]}]

            include = req.stream_options is not None and req.stream_options.include_usage
            final = (
                (lambda: {**head, "choices": [], "usage": usage(len(ids), sum(counts))})
                if include
                else None
            )
            return service.stream(job, chunk, final)

        results = await service.collect(job, request, req.n)
        choices = []
        for i, result in enumerate(results):
            message, reason = reply_message(result.text, result.finish_reason, plan.tools)
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": service.chat_logprobs(result.events) if req.logprobs else None,
                    "finish_reason": reason,
                }
            )
        completion_tokens = sum(len(r.events) for r in results)
        return {
            "id": rid,
            "object": "chat.completion",
            "created": now,
            "model": model_id,
            "choices": choices,
            "usage": usage(len(ids), completion_tokens),
        }

    return routes


def reply_message(text: str, finish_reason: str, tools: str | None) -> tuple[dict, str]:
    """The assistant message of a finished choice and its finish reason: a reply in a tool
    format becomes `tool_calls` (finish reason "tool_calls") or content; a reply cut short
    stays the text it is, with finish reason "length"."""
    if not tools or finish_reason == "length":
        return {"role": "assistant", "content": text}, finish_reason
    content, calls = read_reply(text, tools)
    if not calls:
        return {"role": "assistant", "content": content}, finish_reason
    return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
