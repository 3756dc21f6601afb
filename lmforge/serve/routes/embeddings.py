"""POST /v1/embeddings: one vector per input, from the model's hidden states (mean-pooled)."""

from __future__ import annotations

import asyncio
import base64

from fastapi import APIRouter, Request

from lmforge.embeddings.texts import embed_ids, text_ids
from lmforge.errors import ConfigError
from lmforge.serve.openai import OpenAIService
from lmforge.serve.schemas import APIError, EmbeddingRequest

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


def router(service: OpenAIService) -> APIRouter:
    routes = APIRouter()
    lm, model_id = service.lm, service.settings.model_id
    one_at_a_time = asyncio.Lock()  # beside the batcher's thread, one embedding pass at a time

    @routes.post("/v1/embeddings")
    async def embeddings(request: Request):
        req = await service.parse(request, EmbeddingRequest)
        if lm.encoder_decoder:
            raise APIError(400, "a translation model does not embed texts", param="model")
        trunk = lm.model.trunk if lm.classifier else lm.model
        width = getattr(trunk.config, "hidden_size", None) or trunk.config.d_model
        if req.dimensions is not None and req.dimensions != width:
            raise APIError(
                400,
                f"dimensions: this model's embeddings have {width} dimensions and cannot be "
                "shortened",
                param="dimensions",
                code="unsupported_parameter",
            )
        single = isinstance(req.input, str) or (req.input and isinstance(req.input[0], int))
        items = [req.input] if single else req.input
        if not items or len(items) > MAX_INPUTS:
            raise APIError(400, f"input: give 1 to {MAX_INPUTS} inputs", param="input")
        try:
            rows = text_ids(
                lm.tokenizer, items, service.context, trunk.config.vocab_size, req.truncate
            )
        except ConfigError as exc:
            raise APIError(400, f"input: {exc}", param="input") from None
        async with one_at_a_time:
            vectors = await asyncio.to_thread(embed_ids, trunk, rows, lm.tokenizer.pad_id)
        data = []
        for i, vector in enumerate(vectors.numpy()):
            if req.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
                encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                encoded = vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = sum(len(ids) for ids in rows)
        return {
            "object": "list",
            "data": data,
            "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return routes
