"""`lmforge serve`: an OpenAI-compatible HTTP API with dynamic batching, and a playground page."""

from lmforge.serve.app import Settings, create_app, create_vectors_app

__all__ = ["Settings", "create_app", "create_vectors_app"]
