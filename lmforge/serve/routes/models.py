"""GET /health, /v1/models, /v1/lmforge/info and the playground page at /."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from lmforge.serve.openai import OpenAIService


def router(service: OpenAIService) -> APIRouter:
    routes = APIRouter()
    settings = service.settings

    @routes.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_id, **service.batcher.load()}

    @routes.get("/v1/models")
    async def models(request: Request):
        service.authorize(request)
        card = {
            "id": settings.model_id,
            "object": "model",
            "created": service.created,
            "owned_by": "lmforge",
        }
        return {"object": "list", "data": [card]}

    @routes.get("/v1/lmforge/info")
    async def info():
        details = {k: str(v) for k, v in service.lm.info().items()}
        return {
            "id": settings.model_id,
            "context": service.context,
            "max_tokens": settings.max_tokens,
            **details,
        }

    @routes.get("/", response_class=HTMLResponse)
    async def playground():
        return (files("lmforge.serve") / "static" / "playground.html").read_text(encoding="utf-8")

    return routes
