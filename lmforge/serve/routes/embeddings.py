"""POST /v1/embeddings: one vector per input, from a language model's hidden states (mean-pooled)
or from word vectors (each text's mean word vector)."""

from __future__ import annotations

import asyncio
import base64

import torch
from fastapi import APIRouter, Request

from lmforge.embeddings.texts import embed_ids, embed_with_word_vectors, text_ids
from lmforge.errors import ConfigError
from lmforge.serve.schemas import APIError, EmbeddingRequest

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class ModelEmbedder:
    """Texts or token ids -> vectors from a language model's states (at most `context` tokens)."""

    def __init__(self, lm, context: int):
        if lm.encoder_decoder:
            raise ConfigError("a translation model does not embed texts")
        self.lm, self.context = lm, context
        self.trunk = lm.model.trunk if lm.classifier else lm.model
        config = self.trunk.config
        self.width = getattr(config, "hidden_size", None) or config.d_model

    def __call__(self, items: list, truncate: bool) -> tuple[torch.Tensor, int]:
        vocab = self.trunk.config.vocab_size
        rows = text_ids(self.lm.tokenizer, items, self.context, vocab, truncate)
        return embed_ids(self.trunk, rows, self.lm.tokenizer.pad_id), sum(map(len, rows))


class WordVectorEmbedder:
    """Texts -> the mean of their known words' vectors (word2vec/GloVe)."""

    def __init__(self, vectors):
        self.vectors, self.width = vectors, vectors.dim

    def __call__(self, items: list, truncate: bool) -> tuple[torch.Tensor, int]:
        if not all(isinstance(item, str) for item in items):
            raise ConfigError("word vectors embed texts, not token ids")
        return embed_with_word_vectors(self.vectors, items), sum(len(t.split()) for t in items)


def router(service, embedder) -> APIRouter:
    """The route for `service` (request checks) answering with `embedder`'s vectors."""
    routes = APIRouter()
    one_at_a_time = asyncio.Lock()  # beside the batcher's thread, one embedding pass at a time

    @routes.post("/v1/embeddings")
    async def embeddings(request: Request):
        req = await service.parse(request, EmbeddingRequest)
        if embedder is None:
            raise APIError(400, "a translation model does not embed texts", param="model")
        if req.dimensions is not None and req.dimensions != embedder.width:
            raise APIError(
                400,
                f"dimensions: this model's embeddings have {embedder.width} dimensions and "
                "cannot be shortened",
                param="dimensions",
                code="unsupported_parameter",
            )
        single = isinstance(req.input, str) or (req.input and isinstance(req.input[0], int))
        items = [req.input] if single else req.input
        if not items or len(items) > MAX_INPUTS:
            raise APIError(400, f"input: give 1 to {MAX_INPUTS} inputs", param="input")
        async with one_at_a_time:
            try:
                vectors, tokens = await asyncio.to_thread(embedder, items, req.truncate)
            except ConfigError as exc:
                raise APIError(400, f"input: {exc}", param="input") from None
        data = []
        for i, vector in enumerate(vectors.numpy()):
            if req.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
                encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
            else:
                encoded = vector.tolist()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        return {
            "object": "list",
            "data": data,
            "model": service.settings.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return routes
