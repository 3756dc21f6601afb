"""An OpenAI-compatible HTTP API over one lmforge model, and the playground page.

Routes: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions (JSON or
server-sent events with `stream: true`), POST /v1/embeddings, GET / (the playground),
GET /v1/lmforge/info. A translation model (encoder-decoder) translates the prompt of
/v1/completions. Word vectors serve /v1/embeddings alone (`create_vectors_app`).
Errors use OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with the status an
OpenAI client expects, and never take the server down.
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from lmforge.serve.batcher import Batcher
from lmforge.serve.openai import OpenAIService
from lmforge.serve.routes import chat, completions, embeddings, models
from lmforge.serve.schemas import APIError, Settings
from lmforge.serve.translations import TranslationWorker

__all__ = ["Settings", "create_app", "create_vectors_app"]


def create_app(lm, settings: Settings, background_worker: bool = True) -> FastAPI:
    """The ASGI app serving `lm` (an `lmforge.LM`) under the name `settings.model_id`.

    The model runs in a worker thread, or, with `background_worker=False`, wherever the caller
    runs `app.state.batcher.work_forever()` (`lmforge serve` uses its main thread)."""
    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None)
    if lm.encoder_decoder:  # a translation model: /v1/completions translates its prompt
        batcher = TranslationWorker(lm, settings.max_batch, settings.max_queue, background_worker)
    else:
        batcher = Batcher(
            lm, settings.max_batch, settings.max_queue, settings.cache_len, background_worker
        )
    app.state.batcher = batcher
    service = OpenAIService(lm, settings, batcher)
    for module in (models, completions, chat):
        app.include_router(module.router(service))
    embedder = None if lm.encoder_decoder else embeddings.ModelEmbedder(lm, service.context)
    app.include_router(embeddings.router(service, embedder))
    _answer_errors(app)
    return app


def create_vectors_app(vectors, settings: Settings) -> FastAPI:
    """An embeddings-only API over word vectors (`KeyedVectors`): /health, /v1/models and
    /v1/embeddings, each text embedded as the mean of its known words' vectors."""
    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None)
    service = OpenAIService(None, settings, None)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id}

    @app.get("/v1/models")
    async def listing(request: Request):
        service.authorize(request)
        card = {"id": settings.model_id, "object": "model", "created": service.created}
        return {"object": "list", "data": [{**card, "owned_by": "lmforge"}]}

    app.include_router(embeddings.router(service, embeddings.WordVectorEmbedder(vectors)))
    _answer_errors(app)
    return app


def _answer_errors(app: FastAPI) -> None:
    """Every error in OpenAI's shape, with the status an OpenAI client expects."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(404)
    async def not_found(request: Request, _):
        message = f"no route {request.method} {request.url.path}"
        return APIError(404, message, code="not_found").response()

    @app.exception_handler(405)
    async def wrong_method(request: Request, _):
        return APIError(405, f"{request.method} is not allowed on {request.url.path}").response()
